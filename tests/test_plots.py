"""The monitor figures render off the main thread, cheaply, and survive edge-case inputs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from llmlab.monitors import plots
from llmlab.monitors.plots import (
    attention_figure,
    head_grid_figure,
    heatmap_figure,
    histogram_figure,
    layer_comparison_figure,
    render,
)
from llmlab.monitors.stats import downsample_2d, plot_tensor_distribution

RNG = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _probs(*shape: int, rng: np.random.Generator = RNG) -> np.ndarray:
    return _softmax(rng.normal(size=shape))


def _assert_png(path: Path, image: np.ndarray | None = None) -> None:
    assert path.is_file()
    back = mpimg.imread(path)
    assert back.ndim == 3 and back.shape[2] in (3, 4)
    if image is not None:
        assert back.shape[:2] == image.shape[:2]


def test_render_returns_rgb_and_writes_png(tmp_path):
    path = tmp_path / "nested" / "dir" / "fig.png"
    image = render(heatmap_figure(RNG.normal(size=(8, 5)), "h"), path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0  # something was drawn
    _assert_png(path, image)


def test_render_without_path_writes_nothing(tmp_path):
    image = render(attention_figure(_probs(4, 4), "a"))
    assert image.shape[2] == 3
    assert list(tmp_path.iterdir()) == []


def test_module_never_imports_pyplot():
    source = Path(plots.__file__).read_text()
    assert "import matplotlib.pyplot" not in source and "from matplotlib import pyplot" not in source


@pytest.mark.parametrize("stats", [None, {"mean": 0.1, "std": 1.0, "min": -3.0, "max": 3.0, "sparsity": 0.2}])
def test_histogram_figure(stats):
    counts = RNG.integers(0, 100, size=20)
    edges = np.linspace(-1, 1, 21)
    assert render(histogram_figure(counts, edges, "hist", stats)).shape[2] == 3


@pytest.mark.parametrize("symmetric", [True, False])
def test_heatmap_figure(symmetric):
    render(heatmap_figure(RNG.normal(size=(12, 30)), "m", "x", "y", symmetric=symmetric))
    render(heatmap_figure(np.zeros((3, 3)), "zeros", symmetric=symmetric))  # degenerate colour range


@pytest.mark.parametrize(("t", "with_labels"), [(1, True), (5, True), (5, False), (70, True)])  # 70: labels dropped
def test_attention_figure(t, with_labels):
    labels = [f"tok{i}" for i in range(t)] if with_labels else None
    render(attention_figure(_probs(t, t), "attn", labels))


@pytest.mark.parametrize(("h", "t"), [(1, 4), (6, 4), (6, 40)])  # 40: too many labels for a panel, none drawn
def test_head_grid_figure(h, t):
    render(head_grid_figure(_probs(h, t, t), "heads", [str(i) for i in range(t)]))


@pytest.mark.parametrize("n_layers", [1, 3, 8])
def test_layer_comparison_figure(n_layers):
    names = [f"L{i}" for i in range(n_layers)] if n_layers == 3 else None
    render(layer_comparison_figure(_probs(n_layers, 6, 6), "layers", names))


def test_grid_figures_reject_bad_shapes():
    with pytest.raises(ValueError):
        head_grid_figure(_probs(4, 4), "2-D")
    with pytest.raises(ValueError):
        layer_comparison_figure(np.zeros((2, 3, 4)), "not square")


def test_downsample_2d_shapes_and_mean():
    assert downsample_2d(torch.randn(300, 100), 64).shape == (64, 64)
    assert downsample_2d(torch.randn(300, 50), 64).shape == (64, 50)
    small = torch.randn(64, 50)
    out = downsample_2d(small, 64)
    assert out.shape == (64, 50) and torch.equal(out, small) and out.data_ptr() != small.data_ptr()
    assert downsample_2d(torch.arange(10), 4).shape == (1, 4)  # 1-D as a row; ints become float
    const = downsample_2d(torch.full((300, 70), 2.5, dtype=torch.float16), 64)
    assert const.dtype == torch.float32 and torch.allclose(const, torch.full_like(const, 2.5))


def test_plot_tensor_distribution(tmp_path):
    path = plot_tensor_distribution(torch.randn(1000), tmp_path / "normal.png", title="weights")
    assert path == tmp_path / "normal.png"
    _assert_png(path)
    _assert_png(plot_tensor_distribution(torch.full((5, 5), 3.0), str(tmp_path / "const.png")))
    with_nan = torch.tensor([1.0, float("nan"), float("inf"), 2.0], dtype=torch.bfloat16)
    _assert_png(plot_tensor_distribution(with_nan, tmp_path / "mixed.png", bins=8))


def test_plot_tensor_distribution_rejects_no_finite_values(tmp_path):
    with pytest.raises(ValueError, match="no finite values"):
        plot_tensor_distribution(torch.full((4,), float("nan")), tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()


def test_rendering_from_threads(tmp_path):
    """Four figures at once from worker threads: only safe because the module never touches pyplot."""
    def job(i: int) -> Path:
        rng = np.random.default_rng(i)  # a Generator is not thread-safe: one per thread
        make = [lambda: attention_figure(_probs(8, 8, rng=rng), f"a{i}"),
                lambda: head_grid_figure(_probs(4, 8, 8, rng=rng), f"h{i}"),
                lambda: heatmap_figure(rng.normal(size=(6, 6)), f"m{i}"),
                lambda: layer_comparison_figure(_probs(2, 8, 8, rng=rng), f"l{i}")]
        fig = make[i]()
        path = tmp_path / f"t{i}.png"
        render(fig, path)
        return path

    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(job, range(4)))
    assert len(set(paths)) == 4
    for path in paths:
        _assert_png(path)
