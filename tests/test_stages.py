"""The stage registry: every stage registered, with its YAML, builds its parts on tiny data; none is named
outside its own module."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config

from llmlab.config.schema import ModelConfig
from llmlab.config.stages import STAGE_SCHEMAS
from llmlab.data.batch import Batch
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.model.transformer import Transformer
from llmlab.stages import StageContext, all_stages, get_stage
from llmlab.store import to_dataclass
from llmlab.train import checkpoint as ckpt
from llmlab.train.distributed import SINGLE

SMALL_DATA = {"synthetic": ["data.train_docs=200", "data.val_docs=20"],
              "tasks": ["data.train_tasks=40", "data.val_tasks=8", "data.eval_tasks=2"],
              "task_prefs": ["data.train_tasks=40", "data.val_tasks=8", "data.eval_tasks=2"]}


def test_every_stage_has_its_yaml_and_the_stages_of_this_version_are_registered():
    stages = all_stages()
    assert {"pretrain", "sft", "dpo"} <= set(stages)
    for name, stage in stages.items():
        assert (REPO / "conf" / "stage" / f"{name}.yaml").is_file(), name
        assert stage.config().name == name
    # the schemas the config layer registers (without importing a stage) are the stages' own, under their names
    assert STAGE_SCHEMAS == {name: stage.config for name, stage in stages.items()}


def test_an_unknown_stage_name_is_one_line_listing_the_stages():
    with pytest.raises(ValueError, match=r"stage.name: expected one of .*pretrain.*got 'rlhf'"):
        get_stage("rlhf")


def a_trained_model(tmp_path: Path) -> Path:
    """A checkpoint and tokenizer as a pretrain run leaves them (untrained weights: only the shapes matter)."""
    tokenizer = ByteTokenizer()  # the fast preset's model (conf/debug/fast.yaml), long enough for the tasks
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=96,
                                    vocab_size=tokenizer.vocab_size))
    ckpt.save_checkpoint(tmp_path / "base" / "checkpoints", 1, model, {}, {"model": dataclasses.asdict(model.cfg)})
    tokenizer.save(tmp_path / "base" / "tokenizer")
    return tmp_path / "base"


def compose_with(out: Path, overrides: list[str]):
    cfg = compose_config(["+debug=fast", "device=cpu", *overrides])
    cfg.out_dir = str(out)
    return cfg


@pytest.mark.parametrize("name", sorted(all_stages()))
def test_each_registered_stage_builds_parts_that_train(tmp_path, name):
    stage_cls = all_stages()[name]
    kind = next(k for k in stage_cls.config.DATA_KINDS if k in SMALL_DATA)
    overrides = [f"stage={name}", f"data={kind}", *SMALL_DATA[kind], f"cache_dir={tmp_path / 'cache'}"]
    if stage_cls.config.STARTS_FROM_MODEL:
        overrides.append(f"stage.init_from={a_trained_model(tmp_path)}")
    cfg = to_dataclass(compose_with(tmp_path / "run", overrides))
    (tmp_path / "run").mkdir()
    parts = get_stage(name)(cfg.stage).build(StageContext(cfg, torch.device("cpu"), SINGLE, tmp_path / "run", None))

    batch = parts.train_batches.next()  # a Batch, or what the stage's objective takes (GRPO: a RolloutBatch)
    assert isinstance(batch, Batch) and batch.input_ids.shape == batch.targets.shape or hasattr(batch, "to")
    assert parts.val_batches and all(isinstance(b, Batch) for b in parts.val_batches)
    loss = parts.objective.loss(parts.model, batch)
    assert torch.isfinite(loss) and loss.requires_grad
    assert parts.steps_per_epoch > 0 and isinstance(parts.stats, dict)
    assert "first batch" in parts.describe_batch(batch)
    assert isinstance(parts.sample(1), str)
    assert (tmp_path / "run" / "tokenizer").is_dir()  # what generate, evaluate and export read
    state = parts.train_batches.state_dict()
    following = parts.train_batches.next()
    parts.train_batches.load_state_dict(state)
    assert torch.equal(parts.train_batches.next()[0], following[0])  # the position resumes (the ids come first)


def test_no_stage_is_named_outside_the_stages_package():
    names = "|".join(all_stages())
    literal = re.compile(rf"[\"']({names})[\"']")
    outside = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
               for path in sorted((REPO / "llmlab").rglob("*.py"))
               if "stages" not in path.parts and path != REPO / "llmlab" / "config" / "stages.py"  # their schemas
               for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not outside, "\n".join(outside)
