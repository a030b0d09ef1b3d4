"""Statistics of a tensor, computed where the tensor lives and copied to the host as one small result.

Everything is reduced on the device (one stacked result, one ``.cpu()``), so a capture costs a
few kernels per tensor rather than a device-to-host copy of the tensor itself. Percentiles come
from an evenly strided sample of about ``SAMPLE`` values (exact below that): a sort of that size is cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
SAMPLE = 1 << 14
NEAR_ZERO = 1e-6  # |x| below this counts toward sparsity
STAT_NAMES = ("mean", "std", "min", "max", "abs_max", "l2_norm", "rms", "kurtosis", "sparsity", "nonfinite",
              *(f"p{q}" for q in PERCENTILES))


def _stats_row(x: torch.Tensor) -> torch.Tensor:
    """(len(STAT_NAMES),) float32 on x's device, for a flat float tensor whose values are all finite.

    About ten passes over x, with fused kernels (var_mean, aminmax, dot) where torch has them.
    """
    if x.numel() == 0:
        return torch.zeros(len(STAT_NAMES), device=x.device)
    n = x.numel()
    var, mean = torch.var_mean(x, correction=0)
    lo, hi = torch.aminmax(x)
    sq_sum = torch.dot(x, x)
    centred_sq = (x - mean).square()
    # excess kurtosis: 0 for a normal distribution, large for heavy tails (outlier features)
    kurtosis = torch.dot(centred_sq, centred_sq) / n / var.clamp_min(1e-30).square() - 3.0
    # an odd stride walks through every feature of a (..., 2^k) tensor instead of the same few
    sample = x[:: max(1, n // SAMPLE) | 1]
    quantiles = torch.quantile(sample, torch.tensor([p / 100 for p in PERCENTILES], device=x.device))
    return torch.stack([
        mean, var.sqrt(), lo, hi, torch.maximum(hi, -lo), sq_sum.sqrt(), (sq_sum / n).sqrt(), kurtosis,
        (x.abs() < NEAR_ZERO).sum() / n, torch.zeros((), device=x.device), *quantiles,
    ])


def _stats_row_nonfinite(x: torch.Tensor) -> torch.Tensor:
    """_stats_row of the finite values of x (every statistic skips the others), with the others counted."""
    finite = torch.isfinite(x)
    row = _stats_row(x[finite])
    row[STAT_NAMES.index("nonfinite")] = (x.numel() - finite.sum()).float()
    return row


@torch.no_grad()
def tensor_stats(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{name: {stat: value}} for several tensors, with two device-to-host copies in all.

    The first asks which tensors hold a non-finite value (then their sum is not finite: one pass each);
    only those take the slower path that masks them out.
    """
    if not tensors:
        return {}
    flat = [t.detach().reshape(-1).float() for t in tensors.values()]
    finite = torch.isfinite(torch.stack([x.sum() for x in flat])).tolist()
    rows = torch.stack([_stats_row(x) if ok else _stats_row_nonfinite(x)
                        for x, ok in zip(flat, finite, strict=True)]).cpu().tolist()
    return {name: dict(zip(STAT_NAMES, row, strict=True)) for name, row in zip(tensors, rows, strict=True)}


def _histogram_row(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins + 2,) = [min, max, counts...] of the finite values, without a host sync (histc needs one)."""
    x = x.detach().reshape(-1).float()
    finite = torch.isfinite(x)
    lo = torch.where(finite, x, torch.inf).min()
    hi = torch.where(finite, x, -torch.inf).max()
    width = (hi - lo).clamp_min(1e-12)
    index = ((x - lo) / width * bins).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(bins, device=x.device).index_add_(0, index[finite], torch.ones_like(x[finite]))
    return torch.cat([torch.stack([lo, hi]), counts])


@torch.no_grad()
def tensor_histograms(tensors: dict[str, torch.Tensor], bins: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (counts (bins,), edges (bins + 1,))} of the finite values, one device-to-host copy."""
    if not tensors:
        return {}
    rows = torch.stack([_histogram_row(t, bins) for t in tensors.values()]).cpu().double().numpy()
    result = {}
    for name, row in zip(tensors, rows, strict=True):
        lo, hi = row[0], row[1]
        if not np.isfinite(lo):  # nothing finite: an empty histogram on [0, 1]
            lo, hi = 0.0, 1.0
        counts = row[2:]
        if hi <= lo:  # a constant tensor: one bar in the middle of a unit-wide range
            lo, hi = lo - 0.5, hi + 0.5
            counts = np.zeros(bins)
            counts[bins // 2] = row[2:].sum()
        result[name] = (counts, np.linspace(lo, hi, bins + 1))
    return result


def downsample_2d(matrix: torch.Tensor, max_dim: int) -> torch.Tensor:
    """Average-pool a 2-D (or 1-D, as (1, n)) tensor on its own device so neither side exceeds max_dim."""
    m = matrix.detach().float()
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.dim() != 2:
        raise ValueError(f"downsample_2d: expected a 1-D or 2-D tensor, got shape {tuple(matrix.shape)}")
    h, w = m.shape
    if h <= max_dim and w <= max_dim:
        # Small by definition, so the copy is cheap; it keeps a live tensor from being shared with a worker thread.
        return m.clone()
    return F.adaptive_avg_pool2d(m[None, None], (min(h, max_dim), min(w, max_dim)))[0, 0]


def plot_tensor_distribution(tensor: torch.Tensor, path: Path | str, title: str = "", bins: int = 64) -> Path:
    """Histogram of a tensor's finite values, with a stats box, written as PNG to path. Returns the path."""
    flat = tensor.detach().float().flatten()
    finite = flat[torch.isfinite(flat)]
    if finite.numel() == 0:
        raise ValueError("plot_tensor_distribution: tensor has no finite values")
    # One device-to-host transfer for all the statistics, not one per .item().
    lo, hi, mean, std = torch.stack([finite.min(), finite.max(), finite.mean(), finite.std(correction=0)]).tolist()
    stats = {"mean": mean, "std": std, "min": lo, "max": hi}
    if lo == hi:
        pad = max(0.5, abs(lo) * 1e-3)  # 0.5, unless that would vanish in float32 rounding of a huge value
        lo, hi = lo - pad, hi + pad
    counts = torch.histc(finite, bins=bins, min=lo, max=hi).cpu().numpy()
    dropped = flat.numel() - finite.numel()
    title = title or f"tensor {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
    if dropped:
        title += f" ({dropped} non-finite dropped)"
    path = Path(path)
    from llmlab.monitors import plots  # matplotlib only once something draws (a run imports this module anyway)

    plots.render(plots.histogram_figure(counts, np.linspace(lo, hi, bins + 1), title, stats), path)
    return path
