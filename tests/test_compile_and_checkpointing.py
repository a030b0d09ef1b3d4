"""trainer.compile and trainer.activation_checkpointing change how a step runs, never what it computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from llmlab.load import load_trained
from llmlab.runner import Run

# AdamW: compiled kernels round differently, and Muon's bfloat16 Newton-Schulz would lift that past any tolerance
PLAIN = ["monitors=none", "trainer.optimizer=adamw"]


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eager")
    Run(run_config(tmp, PLAIN)).execute()
    return tmp / "run"


@pytest.mark.slow
def test_compiled_training_matches_eager_and_checkpoints_load_both_ways(eager_run, tmp_path):
    # the compiled run resumes from the eager run's step-6 checkpoint: eager -> compiled
    run_dir = tmp_path / "run"
    shutil.copytree(eager_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints/step_12")
    (run_dir / "checkpoints/latest").write_text("step_6\n")
    result = Run(run_config(tmp_path, [*PLAIN, "trainer.compile=true"])).execute()
    assert result.status == "completed" and result.steps == 12
    np.testing.assert_allclose(losses(run_dir), losses(eager_run), rtol=1e-4)

    compiled, eager = (load_file(str(d / "checkpoints/step_12/model.safetensors")) for d in (run_dir, eager_run))
    assert compiled.keys() == eager.keys()  # no "_orig_mod." prefix
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-4, rtol=1e-3)
    # compiled -> eager: an uncompiled model loads the compiled run's checkpoint and predicts as the eager one does
    model, _, _ = load_trained(run_dir)
    reference, _, _ = load_trained(eager_run)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_activation_checkpointing_trains_bitwise_like_storing_activations(eager_run, tmp_path):
    result = Run(run_config(tmp_path, [*PLAIN, "trainer.activation_checkpointing=true"])).execute()
    assert result.status == "completed"
    assert losses(tmp_path / "run") == losses(eager_run)


def test_activation_checkpointing_keeps_less_for_backward_and_recomputes_each_block():
    from llmlab.config.schema import ModelConfig
    from llmlab.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, n_layers=3, d_model=32, n_heads=4, context_length=16))
    calls = []
    for block in model.blocks:
        forward = block.mlp.forward
        block.mlp.forward = lambda x, forward=forward: calls.append(1) or forward(x)
    ids = torch.randint(0, 40, (2, 16))

    def saved_bytes_and_calls(checkpointing: bool) -> tuple[int, int]:
        model.activation_checkpointing, saved = checkpointing, []
        calls.clear()

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids).sum()
        loss.backward()
        return sum(saved), len(calls)

    stored, stored_calls = saved_bytes_and_calls(False)
    recomputed, recomputed_calls = saved_bytes_and_calls(True)
    assert stored_calls == 3 and recomputed_calls == 6  # each block runs again during backward
    assert recomputed < stored / 2  # what autograd keeps between forward and backward
