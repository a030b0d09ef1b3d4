"""The commands' schemas (generate, evaluate, analyze, export, merge_lora), beside the run's in schema.py;
llmlab.store registers them all."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.config.errors import ConfigError, check_finite, check_positive
from llmlab.config.schema import ModelConfig, TasksDataConfig


@dataclass
class GenerateConfig:
    run: str = "???"  # a run directory or checkpoint directory
    prompt: str = ""  # the text to continue (a chat run: the user's message); ignored when prompts is set
    prompts: list[str] = field(default_factory=list)  # several prompts, one left-padded batch
    num_samples: int = 1  # samples per prompt
    max_new_tokens: int = 200  # tokens generated per sample, at most
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 50  # sample among the k likeliest tokens (0 = off)
    top_p: float = 0.9  # nucleus: the fewest likeliest tokens whose probability reaches top_p (1 = off)
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the sequence
    use_cache: bool = True  # KV cache (false: each new token re-runs the whole sequence)
    stop_at_eos: bool = True  # stop a sample at the end of its document (a chat run: of its reply)
    seed: int = 0  # the sampling generator's
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        check_positive("max_new_tokens", self.max_new_tokens)
        check_positive("num_samples", self.num_samples)
        check_positive("repetition_penalty", self.repetition_penalty)
        check_finite("temperature", self.temperature)
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class EvaluateConfig:
    run: str = "???"  # a run directory or checkpoint directory
    data: TasksDataConfig = field(default_factory=TasksDataConfig)  # the held-out embedded tasks scored (data=tasks)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps


@dataclass
class AnalyzeConfig:
    run: str | None = None  # a run directory or checkpoint directory ...
    model: ModelConfig | None = None  # ... or model=hf model.path=<transformers model directory>
    text: str = ""  # run through one forward and backward (after a bos token)
    layers: list[int] | None = None  # None = all blocks plus embeddings, final norm and head; negative from the end
    out: str | None = None  # None = <run>/analysis
    no_plots: bool = False  # statistics (JSON) only
    no_heatmaps: bool = False  # histograms without heatmaps of 2-D tensors
    no_gradients: bool = False  # forward only: weights and activations
    circuits: bool = False  # also the circuits monitor: induction, previous-token and copy heads, the logit lens
    heatmap_max_dim: int = 256  # heatmaps are average-pooled to at most this many rows and columns
    bins: int = 64  # histogram bins
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        if (self.run is None) == (self.model is None or self.model.path is None):
            raise ConfigError("give run=<run dir> or model=hf model.path=<transformers model dir> (one of them)")
        check_positive("heatmap_max_dim", self.heatmap_max_dim)
        check_positive("bins", self.bins)
        if self.layers is not None and not self.layers:
            raise ConfigError("layers: empty list; give layer indices or null for all")


@dataclass
class ExportConfig:
    run: str = "???"  # a run directory or one of its checkpoints
    out: str = "???"  # the directory to write
    overwrite: bool = False  # replace `out` if it exists


@dataclass
class MergeConfig:
    run: str = "???"  # a LoRA run directory or one of its checkpoints
    out: str = "???"  # a new directory: the merged run
