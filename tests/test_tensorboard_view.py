"""What TensorBoard opens on: the custom-scalars layout, pinned curves, attention maps in monitors=light, and
attention heatmaps whose pattern and labels can be read."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalars

from llmlab.monitors.plots import attention_figure, head_grid_figure
from llmlab.runner import Run
from llmlab.train.tb_layout import custom_scalars_layout, pinned_keys, pinned_url


def layout_of(events: EventAccumulator) -> layout_pb2.Layout:
    tensor = events.Tensors(custom_scalars.CONFIG_SUMMARY_TAG)[0].tensor_proto
    return layout_pb2.Layout.FromString(tensor.string_val[0])


@pytest.mark.slow
def test_a_default_run_opens_on_training_and_shows_attention_maps(tmp_path):
    run = Run(run_config(tmp_path, ["trainer.max_steps=6", "trainer.eval_every=3", "monitors=light",
                                    "monitors.attention.every=3", "monitors.distribution.every=3",
                                    "monitors.circuits.every=3", "monitors.health.every=3", "trainer.threads=1"]))
    assert run.execute().status == "completed"
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    layout = layout_of(events)
    titles = [c.title for c in layout.category]
    assert titles[0] == "1. training" and [t for t in titles if t.startswith("monitor:")] == [
        "monitor: attention", "monitor: distribution", "monitor: health", "monitor: circuits"]
    first = layout.category[0].chart[0]
    assert first.title.startswith("loss") and list(first.multiline.tag)[:2] == [r"^train/loss$", r"^val/loss$"]
    tags = events.Tags()["scalars"]
    for category in layout.category:  # no chart the run leaves empty
        for chart in category.chart:
            assert any(re.search(p, t) for p in chart.multiline.tag for t in tags), (category.title, chart.title)
    n_layers = run.cfg.model.n_layers
    assert {"attention/layer0_avg", f"attention/layer{n_layers - 1}_avg"} == set(events.Tags()["images"])
    assert (tmp_path / "run" / "monitors" / "attention" / "step_6" / "layer0_avg.png").is_file()


def test_the_layout_follows_the_stage():
    from llmlab.stages import get_stage

    dpo = get_stage("dpo")
    layout = custom_scalars_layout(False, dpo.charts, [], evaluations=True)
    assert list(layout) == ["1. training", "2. objective", "3. evaluation"]
    assert not any("bits per byte" in chart for chart in layout["1. training"])  # DPO's loss is not per token
    assert "reward margin" in layout["2. objective"]
    assert "bits per byte (validation, whole split)" in custom_scalars_layout(True, {}, [], False)["1. training"]
    grpo = get_stage("grpo")
    assert list(custom_scalars_layout(False, grpo.charts, ["router", "attention"], False))[1:] == [
        "2. objective", "monitor: router", "monitor: attention"]
    assert pinned_keys(False, grpo.pinned)[-2:] == ["grpo/reward_mean", "grpo/kl"]


def test_the_pinned_link_pins_the_loss_first():
    url = urlparse(pinned_url(pinned_keys(True), port=6010))
    assert url.netloc == "localhost:6010" and url.fragment == "timeseries"
    cards = json.loads(parse_qs(url.query)["pinnedCards"][0])
    assert [c["tag"] for c in cards] == ["train/loss", "val/loss", "val/bpb", "train/lr", "perf/tokens_per_s"]
    assert all(c["plugin"] == "scalars" for c in cards)


def causal_uniform(t: int) -> np.ndarray:
    """Each query attends evenly to every key it sees: the nearly flat map of an untrained model."""
    return np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]


def test_an_attention_map_is_drawn_on_a_scale_where_its_pattern_shows():
    probs = causal_uniform(128)
    probs[:, 0] += 0.3  # a sink on the first token, the pattern to see
    probs /= probs.sum(1, keepdims=True)
    image = attention_figure(probs, "t").axes[0].images[0]
    # the median visible weight (~1/100) gets a fifth of the colour range, not 1% of it as on a linear 0..1
    visible = probs[np.tril(np.ones_like(probs)) > 0]
    assert image.norm(np.median(visible)) > 0.2
    assert image.norm(visible.max()) == 1.0 and np.ma.is_masked(image.get_array()[0, 1])  # the future: masked
    ax = attention_figure(probs, "t").axes[0]
    assert ax.get_xlabel().startswith("key") and ax.get_ylabel().startswith("query")


def test_62_token_labels_get_room_and_a_legible_size():
    labels = [f"t{i}" for i in range(62)]
    fig = attention_figure(causal_uniform(62), "t", labels)
    assert fig.get_size_inches()[0] * fig.dpi >= 700  # was 400 px
    ticks = fig.axes[0].get_xticklabels()
    assert len(ticks) == 62 and min(t.get_fontsize() for t in ticks) >= 7
    grid = head_grid_figure(np.stack([causal_uniform(62)] * 4), "t", labels)
    assert not any(ax.get_xticklabels() for ax in grid.axes[:4])  # too many for a small panel: none, not a smear
