"""The commands' schemas (generate, chat, evaluate, analyze, export, merge_lora), beside the run's in schema.py;
llmlab.store registers them all."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.config.errors import ConfigError, check_choice, check_finite, check_positive
from llmlab.config.schema import ModelConfig, TasksDataConfig


@dataclass
class SamplingSettings:
    """How text is sampled from a trained run: generate's settings, and the chat page's starting values."""

    max_new_tokens: int = 200
    """tokens generated per sample, at most"""
    temperature: float = 0.8
    """0 = greedy"""
    top_k: int = 50
    """sample among the k likeliest tokens (0 = off)"""
    top_p: float = 0.9
    """nucleus: the fewest likeliest tokens whose probability reaches top_p (1 = off)"""
    repetition_penalty: float = 1.0
    """1 = off; >1 discourages tokens already in the sequence"""
    seed: int = 0
    """the sampling generator's"""

    def __post_init__(self) -> None:
        check_positive("max_new_tokens", self.max_new_tokens)
        check_positive("repetition_penalty", self.repetition_penalty)
        check_finite("temperature", self.temperature)
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerateConfig(SamplingSettings):
    """`python -m llmlab.generate`: samples from a trained run."""

    run: str = "???"
    """a run directory or checkpoint directory"""
    checkpoint: str = "latest"
    """which of the run's checkpoints: latest | best (lowest periodic val/loss) | step_<N>"""
    prompt: str = ""
    """the text to continue (a chat run: the user's message); ignored when prompts is set"""
    prompt_file: str | None = None
    """a file whose text is the prompt (a long one; its one final newline dropped)"""
    prompts: list[str] = field(default_factory=list)
    """several prompts, one left-padded batch"""
    num_samples: int = 1
    """samples per prompt"""
    use_cache: bool = True
    """KV cache (false: each new token re-runs the whole sequence)"""
    stop_at_eos: bool = True
    """stop a sample at the end of its document (a chat run: of its reply)"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("num_samples", self.num_samples)
        if self.prompt_file is not None:
            if self.prompt or self.prompts:
                raise ConfigError("prompt_file: give the prompt as prompt=, prompts= or prompt_file=, one of them")
            self.prompt = read_prompt_file(self.prompt_file)


def read_prompt_file(path: str) -> str:
    """A prompt file's text as written, less the one newline an editor ends a file with."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"prompt_file={path}: expected a readable UTF-8 text file ({err.__class__.__name__})")
    return text[:-1] if text.endswith("\n") else text


@dataclass
class ChatConfig(SamplingSettings):
    """`python -m llmlab.chat`: a page to talk to trained runs; the sampling fields are the controls' starting
    values."""

    run: str | None = None
    """a run directory or checkpoint directory (with sweep=: optional, the job shown first)"""
    compare: Any = None
    """more runs answering the same prompt with the same seed, side by side: a dir or [dir, dir]"""
    sweep: str | None = None
    """a multirun directory: the page picks any of its jobs (the first panel)"""
    system: str = ""
    """chat runs: the system prompt the page starts with ("" = none)"""
    host: str = "127.0.0.1"
    """where the page listens (0.0.0.0: every interface, anyone on the network)"""
    port: int = 7860
    """the page's port (0 = any free one)"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.run is None and self.sweep is None:
            raise ConfigError("give run=<run dir> (or sweep=<multirun dir>): the model to talk to")
        if self.compare is None:
            self.compare = []
        elif isinstance(self.compare, str):
            self.compare = [self.compare]
        if not isinstance(self.compare, list) or not all(isinstance(c, str) and c for c in self.compare):
            raise ConfigError(f"compare: expected a run directory or a list of them, got {self.compare!r:.80}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535 (0 = any free one), got {self.port}")


@dataclass
class EvaluateConfig:
    """`python -m llmlab.evaluate`: a checkpoint scored on the held-out embedded tasks (a chat run) or on the
    whole validation split (a pretraining run)."""

    run: str = "???"
    """a run directory or checkpoint directory"""
    checkpoint: str = "latest"
    """which of the run's checkpoints: latest | best (lowest periodic val/loss) | step_<N>"""
    data: TasksDataConfig = field(default_factory=TasksDataConfig)
    """the held-out embedded tasks scored (data=tasks)"""
    tasks: bool | None = None
    """score those tasks; None = only a run trained on llmlab's embedded language"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""
    k: int = 0
    """> 0: also pass@1 (greedy) and pass@k (of `samples` replies per task at `temperature`), with intervals"""
    samples: int | None = None
    """replies drawn per task for pass@k (null = k); more than k lowers the estimate's variance"""
    temperature: float = 1.0
    """the sampling temperature of pass@k's replies"""
    seed: int = 0
    """the sampling generator's"""
    compare: str | None = None
    """another run or checkpoint scored on the same prompts and draws: paired differences (this run minus it)"""

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ConfigError(f"k must be >= 0 (0 = task accuracy only), got {self.k}")
        if self.samples is not None and self.samples < self.k:
            raise ConfigError(f"k={self.k} is larger than samples={self.samples}, the replies drawn per task: "
                              "draw at least k (samples=null draws k)")
        check_positive("temperature", self.temperature)
        if self.compare is not None and not self.k:
            raise ConfigError("compare needs k > 0: the paired comparison is of pass@1 and pass@k")


@dataclass
class SampleTasksConfig:
    """`python -m llmlab.sample_tasks`: a run's own replies to train-split tasks, verified, written for on-policy
    post-training (data.samples=<out>: rejection sampling with data=tasks, preference pairs with data=task_prefs)."""

    run: str = "???"
    """a run directory or checkpoint directory"""
    out: str = "???"
    """the JSONL file written"""
    checkpoint: str = "latest"
    """which of the run's checkpoints: latest | best | step_<N>"""
    data: TasksDataConfig = field(default_factory=TasksDataConfig)
    """which tasks: data.train_tasks of the train split, data.families, data.levels"""
    samples: int = 8
    """replies drawn per prompt (sampled completions = data.train_tasks x samples)"""
    temperature: float = 1.0
    """the sampling temperature"""
    seed: int = 0
    """the sampling generator's"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""

    def __post_init__(self) -> None:
        check_positive("samples", self.samples)
        check_positive("temperature", self.temperature)


@dataclass
class AnalyzeConfig:
    """`python -m llmlab.analyze`: the distribution and attention monitors (and optionally the circuits
    monitor) over one forward and backward of `text` through a checkpoint or an imported model."""

    run: str | None = None
    """a run directory or checkpoint directory ..."""
    model: ModelConfig | None = None
    """... or model=hf model.path=<transformers model directory>"""
    text: str = ""
    """run through one forward and backward (after a bos token)"""
    layers: list[int] | None = None
    """null = all blocks plus embeddings, final norm and head; negative from the end"""
    out: str | None = None
    """null = <run>/analysis"""
    no_plots: bool = False
    """statistics (JSON) only"""
    no_heatmaps: bool = False
    """histograms without heatmaps of 2-D tensors"""
    no_gradients: bool = False
    """forward only: weights and activations"""
    circuits: bool = False
    """also the circuits monitor: induction, previous-token and copy heads, the logit lens"""
    heatmap_max_dim: int = 256
    """heatmaps are average-pooled to at most this many rows and columns"""
    bins: int = 64
    """histogram bins"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""
    ablate: list[str] | None = None
    """heads to switch off, each L<layer>H<head> (or "<layer>.<head>"), ablated together; [each]: every head alone.
    Instead of the text's statistics: the in-context score and repeated-token loss with and without them"""
    ablation: str = "zero"
    """zero | mean: a head's output replaced by zeros, or by its mean over the probe"""

    def __post_init__(self) -> None:
        if (self.run is None) == (self.model is None or self.model.path is None):
            raise ConfigError("give run=<run dir> or model=hf model.path=<transformers model dir> (one of them)")
        check_choice("ablation", self.ablation, ("zero", "mean"))
        if self.ablate is not None:
            self.ablate = [str(a) for a in self.ablate]
            if not self.ablate or not all(a == "each" or parse_head(a) for a in self.ablate):
                raise ConfigError(f"ablate: expected heads as L<layer>H<head> (e.g. [L1H2,L1H3]) or [each], "
                                  f"got {self.ablate}")
        check_positive("heatmap_max_dim", self.heatmap_max_dim)
        check_positive("bins", self.bins)
        if self.layers is not None and not self.layers:
            raise ConfigError("layers: empty list; give layer indices or null for all")


def parse_head(name: str) -> tuple[int, int] | None:
    """(layer, head) of "L1H2" or "1.2"; None when it is neither."""
    match = re.fullmatch(r"[Ll](\d+)[Hh](\d+)|(\d+)\.(\d+)", name.strip())
    if match is None:
        return None
    layer, head = (match[1], match[2]) if match[1] is not None else (match[3], match[4])
    return int(layer), int(head)


@dataclass
class ExportConfig:
    """`python -m llmlab.export`: a run as a Hugging Face `transformers` directory, optionally with a model card
    and an upload to the Hub."""

    run: str = "???"
    """a run directory or one of its checkpoints"""
    checkpoint: str = "latest"
    """which of the run's checkpoints: latest | best (lowest periodic val/loss) | step_<N>"""
    out: str = "???"
    """the directory to write"""
    overwrite: bool = False
    """replace `out` if it exists"""
    card: bool = False
    """also write README.md: a model card (Hub metadata, metrics, the training command and config)"""
    prompt: str = ""
    """the card's example prompt ("" = the run's trainer.sample_prompt)"""
    max_new_tokens: int = 40
    """the card's example: tokens generated (greedy, as generate with temperature=0)"""
    license: str = "other"
    """the card's license: a Hub license id (apache-2.0, mit, ...); other = say it in the card"""
    base_model: str | None = None
    """the card's base_model: the Hub id of the model a stage run started from"""
    datasets: list[str] = field(default_factory=list)
    """the card's datasets (Hub ids); empty = named from the run"""
    push: str | None = None
    """upload the export to this Hub model repo (<user>/<name>), created if missing"""

    def __post_init__(self) -> None:
        check_positive("max_new_tokens", self.max_new_tokens)
        if self.push is not None and (self.push.count("/") != 1 or not all(self.push.split("/"))):
            raise ConfigError(f"push={self.push}: expected a Hub repo id <user or org>/<name>")


@dataclass
class MergeConfig:
    """`python -m llmlab.merge_lora`: a LoRA run's adapters folded into plain weights, written as a new run."""

    run: str = "???"
    """a LoRA run directory or one of its checkpoints"""
    out: str = "???"
    """a new directory: the merged run"""
