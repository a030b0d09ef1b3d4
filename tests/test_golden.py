"""Refactors change nothing: short runs of every stage log bitwise the values recorded in tests/golden/.

A failure here means training changed. If that was the point of the change, record again with
`python tests/golden/runs.py` and say in the commit why the figures moved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from runs import GOLDEN, RESUMED, RUNS, launch, made, observed  # noqa: E402


@pytest.fixture(scope="module")
def golden_work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("golden")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))  # in order: later runs start from earlier ones
def test_a_golden_run_logs_bitwise_what_was_recorded(golden_work, name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    got = observed(launch(name, golden_work))
    assert [r["step"] for r in got["metrics"]] == [r["step"] for r in expected["metrics"]]
    for ours, theirs in zip(got["metrics"], expected["metrics"], strict=True):
        assert ours == theirs, f"{name} step {theirs['step']}: " + ", ".join(
            f"{k}: {ours.get(k)!r} now, {theirs.get(k)!r} recorded" for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k))
    assert got["samples"] == expected["samples"]
    assert got["final_checkpoint"] == expected["final_checkpoint"]
    assert got["final_weights_sha256"] == expected["final_weights_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RESUMED))
def test_a_stopped_and_resumed_golden_run_logs_every_value_the_uninterrupted_one_did(golden_work, name):
    """GRPO (rewards, KL, zero-spread groups) and MoE with balance=bias (objective and auxiliary losses that sum to
    train/loss): stopped mid-interval and resumed, every logged value, the samples and the weights are bitwise
    the uninterrupted run's."""
    made(RUNS[name][2], golden_work)  # the run it starts from (the golden runs above make it when run first)
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    got = observed(launch(name, golden_work, f"{name}_resumed", stop_at=RESUMED[name]))
    assert got == expected
    if name == "moe":
        for row in got["metrics"]:
            if "train/aux_loss" in row:
                assert abs(row["train/objective_loss"] + row["train/aux_loss"] - row["train/loss"]) < 1e-5
