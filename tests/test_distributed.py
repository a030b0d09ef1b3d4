"""Two CPU processes under torchrun (gloo) train exactly what one process does with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, REPO, run_cli
from safetensors.torch import load_file

from llmlab.config.errors import ConfigError
from llmlab.data.dataset import TrainBatches
from llmlab.train.checkpointer import check_same_processes

# global batch 8 = 2 processes x 2 rows x 2 micro-batches = 1 process x 4 rows x 2 micro-batches
# AdamW: FSDP refuses Muon (the Muon test below sets it for DDP)
COMMON = [*FAST, "trainer.grad_accum_steps=2", "trainer.threads=1", "monitors=none", "trainer.optimizer=adamw"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "llmlab.run", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints/step_12/model.safetensors"))


def assert_same_training(run: Path, reference: Path) -> None:
    rows, expected = logged(run), logged(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for key in ("train/loss", "train/grad_norm", "val/loss"):
        got = [r[key] for r in rows if key in r]
        want = [r[key] for r in expected if key in r]
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=key)
    ours, theirs = final_weights(run), final_weights(reference)
    assert ours.keys() == theirs.keys()  # plain parameter names: no DDP "module." or FSDP prefixes
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    result = run_cli("llmlab.run", [*COMMON, "trainer.batch_size=4", f"cache_dir={tmp / 'cache'}",
                                    f"hydra.run.dir={tmp / 'run'}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_with_the_same_global_batch(one_process, tmp_path, strategy):
    args = [*COMMON, "trainer.batch_size=2", f"trainer.strategy={strategy}", f"cache_dir={tmp_path / 'cache'}"]
    result = torchrun(args, tmp_path)  # no hydra.run.dir: both ranks must agree on rank 0's timestamped one
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p.parent for p in tmp_path.glob("outputs/*/*/metrics.jsonl")]
    assert len(runs) == 1, runs
    run = runs[0]
    assert len(list(tmp_path.glob("outputs/*/*"))) == 1  # the other rank left no directory of its own
    assert_same_training(run, one_process)
    assert result.stdout.count("outputs:") == 1  # rank 0 alone reports
    manifest = json.loads((run / "checkpoints/step_12/manifest.json").read_text())
    assert (manifest["processes"], manifest["strategy"]) == (2, strategy)

    if strategy == "fsdp":  # resume: the sharded optimizer state goes back in from the whole one saved
        shutil.rmtree(run / "checkpoints/step_12")
        (run / "checkpoints/latest").write_text("step_6\n")
        resumed = torchrun([*args, f"hydra.run.dir={run}"], tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stdout
        assert_same_training(run, one_process)


@pytest.mark.slow
def test_two_processes_with_muon_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP averages the gradients before Muon orthogonalises them, so each rank's Muon sees the one-process
    gradient and every rank takes the same step. Not to the last bit: Muon's Newton-Schulz runs in bfloat16, where
    the last-bit difference of a gradient summed in another order becomes a rounding of a few elements (~0.4%), and
    orthogonalising lifts the near-null directions of a young model's gradient to full size; measured after 12 steps:
    losses within 1e-5, grad norms within 3e-4, weights 4% apart (ranks that orthogonalised their own half-batch
    gradients would differ by several percent in loss from step 2)."""
    muon = [*COMMON, "trainer.optimizer=muon", "trainer.schedule=wsd", f"cache_dir={tmp_path / 'cache'}"]
    one = run_cli("llmlab.run", [*muon, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun([*muon, "trainer.batch_size=2", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    rows, expected = logged(tmp_path / "two"), logged(tmp_path / "one")
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for key, rtol in (("train/loss", 1e-4), ("val/loss", 1e-4), ("train/grad_norm", 2e-3)):
        got, want = [r[key] for r in rows if key in r], [r[key] for r in expected if key in r]
        np.testing.assert_allclose(got, want, rtol=rtol, err_msg=key)
    ours, theirs = final_weights(tmp_path / "two"), final_weights(tmp_path / "one")
    for name in ours:
        assert (ours[name] - theirs[name]).norm() <= 0.1 * theirs[name].norm(), name


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_one_step_and_the_run_resumes_exactly(one_process, tmp_path):
    args = [*COMMON, "trainer.batch_size=2", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    stopped = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(REPO / "tests/fault_driver.py"), "sigterm_rank1", "3", *args], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    # rank 1 was signalled during step 3; the ranks vote at every step, so both stop after step 4 together
    assert "a signal to another rank at step 4; checkpoint written" in stopped.stdout, stopped.stderr[-3000:]
    assert (tmp_path / "run/checkpoints/step_4/manifest.json").is_file()
    assert not (tmp_path / "run/checkpoints/step_6").exists()
    resumed = torchrun(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert_same_training(tmp_path / "run", one_process)


def test_ranks_draw_distinct_slices_of_one_global_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    whole = TrainBatches(tokens, 6, 16, seed=3)
    ranks = [TrainBatches(tokens, 3, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        inputs, targets = whole.next()
        parts = [r.next() for r in ranks]
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), inputs)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), targets)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\).*torchrun --nproc_per_node=2"):
        check_same_processes({"processes": 2, "strategy": "ddp"}, 1, "ddp", tmp_path)
    with pytest.raises(ConfigError, match="trainer.strategy=fsdp"):
        check_same_processes({"processes": 2, "strategy": "fsdp"}, 2, "ddp", tmp_path)
    check_same_processes({}, 1, "fsdp", tmp_path)  # older checkpoints: one process


@pytest.mark.slow
def test_fsdp_with_monitors_is_a_config_error_naming_the_fix(tmp_path):
    result = torchrun([*FAST, "trainer.strategy=fsdp", "trainer.optimizer=adamw", "monitors=light",
                       f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    assert "use monitors=none, or trainer.strategy=ddp" in result.stderr


def test_a_submitit_slurm_task_finds_its_rank_through_submitit(monkeypatch):
    """hydra/launcher=submitit_slurm starts one task per GPU; each takes the torchrun path with submitit's variables."""
    from llmlab.train.distributed import from_environment

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # recorded, so the values submitit exports are removed after the test
        monkeypatch.delenv(name)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[7-8]"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    place = from_environment()
    assert (place.rank, place.world_size, place.local_rank) == (3, 4, 1)
    assert os.environ["MASTER_ADDR"] == "gpu7"  # the first node hosts the rendezvous


def test_chat_batches_are_sliced_per_rank_and_too_few_samples_name_the_processes():
    from llmlab.data.chat_batches import ChatBatches
    from llmlab.data.chat_template import Encoded

    items = [(Encoded(list(range(2 + i % 5)), [True] * (2 + i % 5)),) for i in range(40)]
    whole = ChatBatches(items, 4, pad_id=0, seed=1)
    ranks = [ChatBatches(items, 2, pad_id=0, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # past an epoch's end
        parts = [r.next().input_ids for r in ranks]
        width = max(p.shape[1] for p in parts)
        joined = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
        torch.testing.assert_close(joined, whole.next().input_ids)
    with pytest.raises(ConfigError, match=r"trainer.batch_size=30 x 2 processes is more than the 40 training"):
        ChatBatches(items, 30, pad_id=0, seed=1, rank=0, world_size=2)
