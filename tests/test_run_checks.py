"""The runtime gate (llmlab.run_checks): what only the device, the processes or the built parts can rule out is
checked in one place, every problem at once, on one line, before the run records anything."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import run_config

from llmlab import run_checks
from llmlab.config.errors import ConfigError
from llmlab.runner import Run
from llmlab.stages import get_stage
from llmlab.train.distributed import Distributed


def test_before_build_collects_every_problem_of_the_device_and_the_processes(tmp_path):
    cfg = run_config(tmp_path, ["trainer.precision=fp16", "trainer.strategy=fsdp", "trainer.optimizer=adamw",
                               "monitors=light"])
    two = Distributed(rank=0, world_size=2)
    with pytest.raises(ConfigError) as err:
        run_checks.before_build(cfg, torch.device("cpu"), two, get_stage("pretrain")(cfg.stage))
    message = str(err.value)
    assert "trainer.precision=fp16 needs CUDA and this run is on cpu" in message
    assert "use monitors=none, or trainer.strategy=ddp" in message and "\n" not in message
    grpo = SimpleNamespace(fsdp_problem=get_stage("grpo").fsdp_problem)
    with pytest.raises(ConfigError, match="stage=grpo samples a different number of tokens"):
        sharded = run_config(tmp_path, ["trainer.strategy=fsdp", "trainer.optimizer=adamw", "monitors=none"])
        run_checks.before_build(sharded, torch.device("cpu"), two, grpo)
    run_checks.before_build(cfg, torch.device("cuda"), Distributed(), grpo)  # one process: FSDP shards nothing


def test_after_build_checks_the_monitors_against_the_model_and_its_data_before_the_run_records_anything(tmp_path):
    cfg = run_config(tmp_path, ["monitors.attention.layers=[7]", "monitors.probe.batch_idx=99"])
    run = Run(cfg)
    with pytest.raises(ConfigError) as err:
        run.setup()
    message = str(err.value)
    assert "monitors.attention.layers: layer 7 out of range" in message
    assert "monitors.probe.batch_idx=99: only" in message and "\n" not in message
    assert not run.run_dir.config.exists() and not run.run_dir.metrics_log.exists()
