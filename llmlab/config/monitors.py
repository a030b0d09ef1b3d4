"""Schemas of the monitors group: one node per monitor, each with its own schedule.

`conf/monitors/{none,light,full}.yaml` are presets of these fields: light keeps statistics
(scalars and JSON), full adds histograms, heatmaps, attention maps and PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmlab.config.errors import ConfigError, check_positive


def _check_schedule(prefix: str, every: int, steps: list[int], epochs: list[float]) -> None:
    if every < 0:
        raise ConfigError(f"{prefix}.every must be >= 0 (0 = only the listed steps/epochs), got {every}")
    if any(s < 1 for s in steps):
        raise ConfigError(f"{prefix}.steps must be steps >= 1, got {steps}")
    if any(e <= 0 for e in epochs):
        raise ConfigError(f"{prefix}.epochs must be > 0, got {epochs}")


@dataclass
class ProbeConfig:
    """The fixed probe every monitor that looks inside a forward uses (attention maps, dead units): a slice of one
    validation batch, the same at every capture."""

    batch_idx: int = 0
    """which validation batch"""
    sequences: int = 4
    """its first rows, which the statistics average over"""
    tokens: int | None = None
    """truncate the rows (null = the full context)"""

    def __post_init__(self) -> None:
        check_positive("monitors.probe.sequences", self.sequences)
        if self.tokens is not None:
            check_positive("monitors.probe.tokens", self.tokens)
        if self.batch_idx < 0:
            raise ConfigError(f"monitors.probe.batch_idx must be >= 0, got {self.batch_idx}")


@dataclass
class AttentionMonitorConfig:
    """Attention probabilities on the fixed probe: per layer and head statistics, heatmaps in `full`."""

    enabled: bool = False
    """run this monitor (monitors=light and full: true)"""
    every: int = 100
    """capture every N optimizer steps (0 = only `steps`/`epochs`)"""
    steps: list[int] = field(default_factory=list)
    """extra capture steps"""
    epochs: list[float] = field(default_factory=list)
    """extra captures at these (fractional) epochs"""
    layers: list[int] | None = None
    """null = all; negative counts from the last layer"""
    heads: Any = "average"
    """average | all | [head indices]: what the per-layer heatmaps show"""
    images: bool = False
    """heatmaps, head grids, layer comparison (PNG + TensorBoard images)"""
    maps: bool = False
    """just the head-averaged maps of the first and last chosen layer (PNG + TensorBoard images): a few figures per
    capture, drawn in the background (monitors=light: true; images=true draws these and all the others)"""
    label_max_tokens: int = 48
    """put token labels on the axes when the probe is at most this long"""
    save_raw: bool = False
    """also write the probabilities as attention.npz"""

    def __post_init__(self) -> None:
        _check_schedule("monitors.attention", self.every, self.steps, self.epochs)
        ok = self.heads in ("average", "all") or (
            isinstance(self.heads, list | tuple) and self.heads and all(isinstance(h, int) for h in self.heads))
        if not ok:
            raise ConfigError(f"monitors.attention.heads: expected average, all or a list of head indices, "
                              f"got {self.heads!r}")


@dataclass
class DistributionMonitorConfig:
    """Weights, gradients and activations: per-tensor statistics, histograms and heatmaps in `full`."""

    enabled: bool = False
    """run this monitor (monitors=light and full: true)"""
    every: int = 100
    """capture every N optimizer steps (0 = only `steps`/`epochs`)"""
    steps: list[int] = field(default_factory=list)
    """extra capture steps"""
    epochs: list[float] = field(default_factory=list)
    """extra captures at these (fractional) epochs"""
    layers: list[int] | None = None
    """null = all blocks plus embeddings, final norm and head"""
    modules: list[str] | None = None
    """fnmatch patterns on names, e.g. ['*mlp*']; null = all"""
    weights: bool = True
    """weight statistics after the step, with the update-to-weight ratio"""
    activations: bool = True
    """outputs of each block's attn, mlp and the block (residual stream)"""
    gradients: bool = True
    """gradient statistics after backward, before clipping and the step"""
    histograms: bool = False
    """TensorBoard histograms (counts computed on the device)"""
    plots: bool = False
    """a histogram PNG per tensor"""
    heatmaps: bool = False
    """a downsampled heatmap PNG per 2-D tensor (needs plots)"""
    heatmap_max_dim: int = 256
    """heatmaps are average-pooled to at most this many rows and columns"""
    bins: int = 64
    """histogram bins"""

    def __post_init__(self) -> None:
        _check_schedule("monitors.distribution", self.every, self.steps, self.epochs)
        check_positive("monitors.distribution.heatmap_max_dim", self.heatmap_max_dim)
        check_positive("monitors.distribution.bins", self.bins)


@dataclass
class RouterMonitorConfig:
    """Mixture-of-experts routing: each expert's load, the router's entropy and losses, per MoE layer."""

    enabled: bool = False
    """run this monitor (monitors=light and full: true; it needs model.moe.experts > 0)"""
    every: int = 100
    """capture every N optimizer steps (0 = only `steps`/`epochs`)"""
    steps: list[int] = field(default_factory=list)
    """extra capture steps"""
    epochs: list[float] = field(default_factory=list)
    """extra captures at these (fractional) epochs"""
    plots: bool = True
    """plots/router_load.png at the end of training: layer x expert load over steps"""

    def __post_init__(self) -> None:
        _check_schedule("monitors.router", self.every, self.steps, self.epochs)


@dataclass
class HealthMonitorConfig:
    """Alerts: non-finite values, loss and gradient-norm spikes, attention entropy collapse, dead units."""

    enabled: bool = False
    """run this monitor (monitors=light and full: true)"""
    window: int = 50
    """steps in the moving window for loss and gradient-norm z-scores"""
    z_threshold: float = 6.0
    """a spike is a value this many standard deviations above the window"""
    every: int = 100
    """how often to probe attention entropy and dead MLP units"""
    entropy_collapse: float = 0.05
    """alert when a layer's mean attention entropy (nats) falls below this"""
    dead_fraction: float = 0.25
    """alert when more than this fraction of a layer's MLP units never fire"""
    policy_entropy_collapse: float = 0.02
    """alert when a logged policy entropy (`*/entropy`, nats per token, e.g. `grpo/entropy`) falls below this"""
    dead_expert_captures: int = 3
    """MoE: alert when an expert gets < 1% of its fair share this many captures running"""
    router_collapse: float = 0.5
    """MoE: alert when a layer's load is effectively on fewer than this share of experts"""

    def __post_init__(self) -> None:
        check_positive("monitors.health.window", self.window)
        check_positive("monitors.health.z_threshold", self.z_threshold)
        if self.every < 0:
            raise ConfigError(f"monitors.health.every must be >= 0, got {self.every}")
        check_positive("monitors.health.dead_expert_captures", self.dead_expert_captures)
        if not 0.0 <= self.router_collapse <= 1.0:
            raise ConfigError(f"monitors.health.router_collapse must be in [0, 1], got {self.router_collapse}")


@dataclass
class CircuitsMonitorConfig:
    """Previous-token, induction and copy scores per head, copy accuracy, in-context loss drop, logit lens."""

    enabled: bool = False
    """run this monitor (monitors=light and full: true)"""
    every: int = 100
    """capture every N optimizer steps (0 = only `steps`/`epochs`)"""
    steps: list[int] = field(default_factory=list)
    """extra capture steps"""
    epochs: list[float] = field(default_factory=list)
    """extra captures at these (fractional) epochs"""
    threshold: float = 0.4
    """a head whose induction or copy score first exceeds this forms a circuit (an info alert)"""
    tokens: int = 128
    """length of the probe rows (at most the context); the induction probe repeats tokens/2"""
    induction_rows: int = 8
    """rows of random tokens repeated twice (the induction probe)"""
    copy_rows: int = 32
    """validation documents in the copy probe (the embedded language only)"""
    seed: int = 0
    """draws the induction probe's tokens (its own generator: training's random state is untouched)"""
    images: bool = False
    """a layer x head heatmap of each score per capture (PNG + TensorBoard image)"""

    def __post_init__(self) -> None:
        _check_schedule("monitors.circuits", self.every, self.steps, self.epochs)
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"monitors.circuits.threshold must be in (0, 1], got {self.threshold}")
        if self.tokens < 4:
            raise ConfigError(f"monitors.circuits.tokens must be >= 4 (two copies of at least 2 tokens), "
                              f"got {self.tokens}")
        check_positive("monitors.circuits.induction_rows", self.induction_rows)
        check_positive("monitors.circuits.copy_rows", self.copy_rows)


@dataclass
class ProgressMonitorConfig:
    """The progress measures of grokking (llmlab/monitors/progress.py): weight norm; with data=modular also the
    embedding's Fourier sparsity and the restricted and excluded losses."""

    enabled: bool = False
    """run this monitor (off in every preset: the grokking experiment turns it on)"""
    every: int = 100
    """capture every N optimizer steps (0 = only `steps`/`epochs`)"""
    steps: list[int] = field(default_factory=list)
    """extra capture steps"""
    epochs: list[float] = field(default_factory=list)
    """extra captures at these (fractional) epochs"""
    frequencies: int = 5
    """k: the top-k Fourier frequencies of fourier_share, and the key frequencies of the restricted and excluded
    losses (Nanda et al. found 5 for p = 113)"""

    def __post_init__(self) -> None:
        _check_schedule("monitors.progress", self.every, self.steps, self.epochs)
        check_positive("monitors.progress.frequencies", self.frequencies)


@dataclass
class MonitorsConfig:
    """What watches a run from inside while it trains (llmlab/monitors/); monitors never change training."""

    name: str = "none"
    """the preset (none | light | full): a label; the enabled fields decide what runs"""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """monitors.probe.*: the batch they look through"""
    attention: AttentionMonitorConfig = field(default_factory=AttentionMonitorConfig)
    """attention maps and statistics"""
    distribution: DistributionMonitorConfig = field(default_factory=DistributionMonitorConfig)
    """weight/grad/act stats"""
    health: HealthMonitorConfig = field(default_factory=HealthMonitorConfig)
    """alerts: spikes, non-finite, collapse"""
    circuits: CircuitsMonitorConfig = field(default_factory=CircuitsMonitorConfig)
    """induction, copy, logit lens"""
    router: RouterMonitorConfig = field(default_factory=RouterMonitorConfig)
    """MoE routing: load, entropy, losses"""
    progress: ProgressMonitorConfig = field(default_factory=ProgressMonitorConfig)
    """grokking's progress measures"""
    max_workers: int = 2
    """background threads for files, plots and TensorBoard images (0 = inline)"""
    max_pending: int = 64
    """queued jobs beyond this drop the oldest (counted and reported)"""

    def __post_init__(self) -> None:
        if self.max_workers < 0:
            raise ConfigError(f"monitors.max_workers must be >= 0, got {self.max_workers}")
        check_positive("monitors.max_pending", self.max_pending)
