"""The time-to-loss benchmark's arithmetic: the reference's mean loss is the bar, the smallest N whose mean over
seeds clears it is the answer, paired differences are by seed, and the wall-clock ratio is against the reference."""

from __future__ import annotations

import math

import pytest

from llmlab.bench.time_to_loss import interval, parse_contenders, summarise


def run(kind, steps, seed, loss, wall):
    return {"kind": kind, "steps": steps, "seed": seed, "loss": loss, "wall_s": wall}


def test_smallest_n_at_or_below_the_reference_mean_and_the_ratio_of_its_wall_clock():
    runs = [run("reference", 2000, 0, 1.50, 600.0), run("reference", 2000, 1, 1.52, 620.0)]
    for seed, shift in ((0, 0.0), (1, 0.02)):
        runs += [run("default", 100, seed, 1.60 + shift, 50.0), run("default", 200, seed, 1.50 + shift, 100.0),
                 run("fast", 100, seed, 1.55 + shift, 40.0), run("fast", 200, seed, 1.49 + shift, 80.0)]
    contenders = parse_contenders(["default=", "fast=trainer.muon.lr=0.02"], [100, 200])
    summary = summarise(runs, contenders, [0, 1])
    assert summary["l_ref"] == pytest.approx(1.51)
    default, fast = summary["contenders"]["default"], summary["contenders"]["fast"]
    assert default["smallest_n"] == 200 and default["loss_at_n"] == pytest.approx(1.51)  # at the bar counts
    assert default["wall_ratio_at_n"] == pytest.approx(100.0 / 610.0)
    assert fast["smallest_n"] == 200
    paired = fast["by_steps"][0]["paired_diff_vs_default"]
    assert paired["mean"] == pytest.approx(-0.05) and paired["ci95"][0] == pytest.approx(-0.05)  # same shift


def test_a_contender_that_never_reaches_the_reference_says_so():
    runs = [run("reference", 2000, 0, 1.4, 600.0), run("default", 100, 0, 1.6, 50.0)]
    summary = summarise(runs, parse_contenders(None, [100]), [0])
    assert summary["contenders"]["default"]["smallest_n"] is None
    assert math.isnan(summary["contenders"]["default"]["by_steps"][0]["loss_ci95"][0])  # one seed: no interval


def test_interval_and_contender_specs():
    mean, low, high = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert parse_contenders(None, [250]) == {"default": {"overrides": [], "steps": [250]}}
    assert parse_contenders(["ve@400,250=model.value_embeddings=true,trainer.muon.lr=0.02"], [100]) == {
        "ve": {"overrides": ["model.value_embeddings=true", "trainer.muon.lr=0.02"], "steps": [250, 400]}}
    for bad in ("=x", "a@=x", "a@x=y", "a@0=y"):
        with pytest.raises(SystemExit, match="NAME"):
            parse_contenders([bad], [100])
