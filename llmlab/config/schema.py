"""Typed schemas for every config group.

Each dataclass is what one group's YAML must fit: Hydra rejects an unknown key or a wrong type
at composition, and ``__post_init__`` (run by ``OmegaConf.to_object``) rejects values out of range
with one line naming the field. Library code receives these plain dataclasses, never a DictConfig.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import MISSING

from llmlab.config.errors import ConfigError, check_choice, check_finite, check_positive
from llmlab.config.monitors import MonitorsConfig


@dataclass
class LoRAConfig:
    """Low-rank adapters on the chosen projections (llmlab/model/lora.py); rank 0 = off."""

    rank: int = 0
    """adapter rank r (0 = no adapters: every weight trains)"""
    alpha: float = 16.0
    """the update B @ A is scaled by alpha / rank"""
    dropout: float = 0.0
    """on the adapters' input, training only"""
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """["all"]: every projection"""

    def __post_init__(self) -> None:
        check_finite("model.lora.alpha", self.alpha)
        if self.rank < 0:
            raise ConfigError(f"model.lora.rank must be >= 0 (0 = no LoRA), got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.rank and not self.targets:
            raise ConfigError("model.lora.targets is empty: name projections, e.g. [q_proj,v_proj] or [all]")


MAX_EXPERTS = 1024  # routed experts per block; DeepSeek-V3 has 256


@dataclass
class MoEConfig:
    """Mixture of experts in place of the feed-forward MLP (llmlab/model/moe.py); experts 0 = a dense model.

    Routing is dropless: every token reaches its top_k experts, however unevenly they are loaded."""

    experts: int = 0
    """routed experts in each MoE block (0 = dense: no MoE anywhere)"""
    top_k: int = 2
    """experts each token is sent to"""
    shared_experts: int = 0
    """always-on experts (Qwen2-MoE/DeepSeek): one MLP of shared_experts x d_ff, sigmoid-gated"""
    every: int = 1
    """blocks every, 2*every, ... (counting from 1) are MoE, the others dense; 1 = all blocks"""
    d_ff: int | None = None
    """hidden width of each expert (null = the dense MLP's width, model.d_ff)"""
    norm_topk: bool = True
    """rescale the top_k router probabilities to sum to 1 (Mixtral); false: raw softmax ones"""
    balance: str = "aux_loss"
    """aux_loss (Switch/GShard loss) | bias (DeepSeek-V3, no loss) | none"""
    aux_loss_coef: float = 0.01
    """balance=aux_loss: weight of E * sum_i f_i P_i (1.0 when perfectly balanced)"""
    z_loss_coef: float = 0.001
    """weight of the router z-loss mean(logsumexp(logits)^2), any balance (0 = off)"""
    bias_rate: float = 0.001
    """balance=bias: each training forward moves each expert's bias by this toward balance"""

    def __post_init__(self) -> None:
        if not 0 <= self.experts <= MAX_EXPERTS:  # the bound keeps a forged manifest's model cheap to describe
            raise ConfigError(f"model.moe.experts must be in [0, {MAX_EXPERTS}] (0 = dense), got {self.experts}")
        for name in ("aux_loss_coef", "z_loss_coef", "bias_rate"):
            check_finite(f"model.moe.{name}", getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"model.moe.{name} must be >= 0, got {getattr(self, name)}")
        check_choice("model.moe.balance", self.balance, ("aux_loss", "bias", "none"))
        check_positive("model.moe.every", self.every)
        if self.shared_experts < 0:
            raise ConfigError(f"model.moe.shared_experts must be >= 0, got {self.shared_experts}")
        if self.d_ff is not None:
            check_positive("model.moe.d_ff", self.d_ff)
        if self.experts and not 1 <= self.top_k <= self.experts:
            raise ConfigError(f"model.moe.top_k={self.top_k} must be in [1, model.moe.experts={self.experts}]")

    def is_moe(self, layer: int) -> bool:
        """Whether block `layer` (0-based) is a MoE block."""
        return self.experts > 0 and (layer + 1) % self.every == 0


@dataclass
class ModelConfig:
    """One decoder family; sizes live in conf/model/, architecture presets in conf/arch/."""

    name: str = "tiny"
    """a label: names the run directory (<time>_<stage>_<name>), no effect on the model"""
    n_layers: int = 4
    """transformer blocks"""
    d_model: int = 128
    """width of the residual stream and embeddings"""
    n_heads: int = 4
    """query heads; head dim = d_model / n_heads"""
    n_kv_heads: int | None = None
    """null = n_heads (MHA); 1 = MQA; in between = GQA"""
    d_ff: int | None = None
    """null = 4*d_model (gelu) or the Llama 8/3*d_model rounded (swiglu)"""
    context_length: int | None = 128
    """null only with path: the imported model's own, at most 1024"""
    vocab_size: int | None = None
    """null = taken from the tokenizer"""
    positions: str = "rope"
    """learned | rope"""
    norm: str = "rmsnorm"
    """layernorm | rmsnorm"""
    mlp: str = "swiglu"
    """gelu | swiglu | none (attention-only blocks: no MLP and no norm before it)"""
    gelu: str = "exact"
    """exact | tanh: the GELU of a `gelu` MLP; tanh is GPT-2's approximation (exported as `gelu_new`, exact as
    `gelu`). Checkpoints written before this field existed load as tanh; resuming one needs `model.gelu=tanh`"""
    tie_embeddings: bool = True
    """the output head shares the token embedding matrix"""
    bias: bool = False
    """biases in the attention and MLP projections and LayerNorm (never the head)"""
    dropout: float = 0.0
    """on embeddings, attention probabilities and residual branches; training only"""
    rope_theta: float = 10000.0
    """RoPE base: pair i rotates at theta^(-2i/head_dim) per position"""
    rope_scaling: str = "none"
    """none | llama3 (Llama 3.1+ frequencies; the four rope_* fields below)"""
    rope_factor: float = 1.0
    """llama3: how much the long wavelengths are stretched"""
    rope_low_freq_factor: float = 1.0
    """llama3: wavelengths above rope_original_context / this are stretched"""
    rope_high_freq_factor: float = 4.0
    """llama3: wavelengths below rope_original_context / this are kept"""
    rope_original_context: int = 8192
    """llama3: the context length the model was pretrained at"""
    norm_eps: float = 1e-5
    """epsilon of every RMSNorm / LayerNorm"""
    init_std: float = 0.02
    """std of the normal init (o_proj and down_proj: / sqrt(2 * n_layers))"""
    path: str | None = None
    """with `model=hf`: a local transformers model directory (Llama, Qwen2, Mixtral, Qwen2-MoE or GPT-2 style) whose
    architecture and weights replace the size and arch fields; context_length stays this run's sequence length"""
    local_files_only: bool = True
    """false: path may be a hub id, fetched when online"""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """model.lora.*: adapters for sft/dpo"""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """model.moe.*: mixture of experts (experts 0 = dense)"""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # a checkpoint manifest holds plain dicts
            self.lora = LoRAConfig(**self.lora)
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if self.context_length is None and self.path is None:
            raise ConfigError("model.context_length: null is only for an imported model (model.path); give a length")
        sized = ("context_length",) if self.context_length is not None else ()  # 0 is a length too: refused
        for name in ("n_layers", "d_model", "n_heads", *sized, "rope_theta", "norm_eps"):
            check_positive(f"model.{name}", getattr(self, name))
        check_finite("model.init_std", self.init_std)
        check_choice("model.positions", self.positions, ("learned", "rope"))
        check_choice("model.norm", self.norm, ("layernorm", "rmsnorm"))
        check_choice("model.mlp", self.mlp, ("gelu", "swiglu", "none"))
        check_choice("model.gelu", self.gelu, ("exact", "tanh"))
        check_choice("model.rope_scaling", self.rope_scaling, ("none", "llama3"))
        if self.rope_scaling == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
            raise ConfigError(f"model.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                              f"model.rope_low_freq_factor={self.rope_low_freq_factor}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}"
            )
        kv = self.kv_heads
        if kv < 1 or self.n_heads % kv:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be divisible by model.n_kv_heads={kv} "
                f"(allowed: a divisor of {self.n_heads})"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"model: rope needs an even head dim, got d_model/n_heads={self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.d_ff is not None:
            check_positive("model.d_ff", self.d_ff)
        if self.mlp == "none" and self.moe.experts:
            raise ConfigError(f"model.mlp=none (attention-only blocks) leaves no MLP for model.moe.experts="
                              f"{self.moe.experts} to replace; use model.moe.experts=0 or an MLP")

    @property
    def expert_dim(self) -> int:
        """Hidden width of one expert."""
        return self.moe.d_ff if self.moe.d_ff is not None else self.ffn_dim

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.mlp == "none":
            return 0
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":  # keeps the parameter count of a 4x GELU MLP, rounded to 32
            return 32 * ((8 * self.d_model // 3 + 31) // 32)
        return 4 * self.d_model


# What makes two models the same function of the same weights; name, dropout, init and the run's context do not.
ARCHITECTURE = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "positions", "norm", "mlp", "gelu",
                "tie_embeddings",
                "bias", "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                "rope_original_context", "norm_eps", "moe")
MOE_ARCHITECTURE = ("experts", "top_k", "shared_experts", "every", "d_ff", "norm_topk", "balance")


def _architecture_value(value: Any) -> Any:
    """A field's value as compared: of model.moe only what changes the function (not its loss weights)."""
    if isinstance(value, MoEConfig):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: value.get(k) for k in MOE_ARCHITECTURE}
    return value


def saved_model_section(saved: dict) -> dict:
    """A checkpoint manifest's model section with the fields it predates filled in as that run had them: before
    model.gelu existed every GELU MLP ran the tanh approximation."""
    return saved if "gelu" in saved else {**saved, "gelu": "tanh"}


def architecture_differences(saved: dict, current: ModelConfig) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for each architecture field that differs (fields saved lacks: none;
    model.gelu only where the MLP is a GELU one)."""
    saved = saved_model_section(saved)
    return [(k, saved[k], getattr(current, k)) for k in ARCHITECTURE
            if k in saved and _architecture_value(saved[k]) != _architecture_value(getattr(current, k))
            and (k != "gelu" or current.mlp == "gelu")]


@dataclass
class TokenizerConfig:
    """How text becomes token ids (llmlab/data/tokenizers.py); bpe and unigram are trained once and cached."""

    kind: str = "char"
    """char | byte | bpe | unigram"""
    vocab_size: int = 0
    """bpe/unigram only: the number of pieces to learn"""
    retrain: bool = False
    """ignore the cache and train again"""
    cache_dir: str = "outputs/.cache/tokenizers"
    """trained tokenizers, keyed by content hash"""

    def __post_init__(self) -> None:
        check_choice("tokenizer.kind", self.kind, ("char", "byte", "bpe", "unigram"))
        if self.kind in ("bpe", "unigram") and self.vocab_size < 8:
            raise ConfigError(
                f"tokenizer.vocab_size must be >= 8 for tokenizer={self.kind}, got {self.vocab_size}"
            )


@dataclass
class SyntheticDataConfig:
    """The embedded artificial language (llmlab/data/synthetic.py)."""

    kind: str = "synthetic"
    """fixed: which data schema this is"""
    train_docs: int = 20000
    """documents generated for training"""
    val_docs: int = 1000
    """documents generated for validation, from seed + 1"""
    seed: int = 1234
    """the generator's, not the run's: the same documents whatever the run's seed"""

    def __post_init__(self) -> None:
        check_positive("data.train_docs", self.train_docs)
        check_positive("data.val_docs", self.val_docs)


INDUCTION_SYMBOLS = 62  # digits and ASCII letters: one character per symbol (llmlab/data/induction.py)


@dataclass
class InductionDataConfig:
    """Zipfian random tokens in which a span recurs later in the same document, with the exact entropy floor of the
    repeated part (llmlab/data/induction.py): what only attention to the first occurrence can predict."""

    kind: str = "induction"
    """fixed: which data schema this is"""
    vocab: int = 32
    """symbols (at most 62), each one character for the char tokenizer"""
    zipf: float = 1.0
    """unigram exponent: p(rank k) proportional to k^-zipf (0 = uniform)"""
    length: int = 48
    """tokens per document (an end token follows each)"""
    span: int = 16
    """tokens of the span that recurs; its copy starts at or after the end of the first occurrence"""
    skip: float = 0.0
    """chance that an unrepeated token is the fixed successor of the token two places back (0 = independent
    tokens; > 0 gives a previous-token head a use of its own, as natural text does)"""
    train_docs: int = 20000
    """documents generated for training"""
    val_docs: int = 1000
    """documents generated for validation, from seed + 1"""
    seed: int = 1234
    """the generator's, not the run's: the same documents whatever the run's seed"""

    def __post_init__(self) -> None:
        for name in ("span", "train_docs", "val_docs"):
            check_positive(f"data.{name}", getattr(self, name))
        if not 2 <= self.vocab <= INDUCTION_SYMBOLS:
            raise ConfigError(f"data.vocab must be in [2, {INDUCTION_SYMBOLS}], got {self.vocab}")
        check_finite("data.zipf", self.zipf)
        if self.zipf < 0:
            raise ConfigError(f"data.zipf must be >= 0 (0 = uniform), got {self.zipf}")
        if not 0.0 <= self.skip < 1.0:
            raise ConfigError(f"data.skip must be in [0, 1), got {self.skip}")
        if 2 * self.span > self.length:
            raise ConfigError(f"data.length={self.length} must hold the span twice (data.span={self.span}): "
                              f"use data.length>={2 * self.span}")


MODULAR_OPS = ("add", "sub", "mul", "div")  # a + b, a - b, a x b, a / b (times b's inverse), all mod p


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


@dataclass
class ModularDataConfig:
    """Modular arithmetic `a op b = c` (llmlab/data/modular.py), the grokking task: its own vocabulary of p numbers,
    the operator and '=' (tokenizer settings do not apply); the loss is on the answer c alone."""

    kind: str = "modular"
    """fixed: which data schema this is"""
    p: int = 113
    """the prime modulus: numbers 0..p-1"""
    op: str = "add"
    """add | sub | mul | div (a / b = a x b^-1 mod p; b = 0 is left out)"""
    train_fraction: float = 0.3
    """share of all pairs that train; the rest are held out (validation)"""
    full_batch: bool = True
    """every step trains on all the training pairs (trainer.batch_size is not used)"""
    seed: int = 0
    """the split's, not the run's: the same pairs train whatever the run's seed"""

    def __post_init__(self) -> None:
        if not is_prime(self.p):
            raise ConfigError(f"data.p must be a prime (every b != 0 has an inverse mod p), got {self.p}")
        check_choice("data.op", self.op, MODULAR_OPS)
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"data.train_fraction must be in (0, 1), got {self.train_fraction}")


@dataclass
class TextDataConfig:
    """UTF-8 text files; the last val_fraction of each file is validation."""

    kind: str = "text"
    """fixed: which data schema this is"""
    paths: list[str] = field(default_factory=list)
    """files or glob patterns"""
    val_fraction: float = 0.1
    """the tail of each file that validates (cut at a nearby line break)"""

    def __post_init__(self) -> None:
        if not self.paths:
            raise ConfigError("data.paths is empty: give one or more text files, e.g. data.paths=[a.txt]")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


HF_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
               ".arrow": "arrow"}  # a data file's suffix -> the `datasets` builder that reads it


@dataclass
class HFSourceConfig:
    """One Hugging Face `datasets` source (llmlab/data/hf.py): a save_to_disk directory, data files of a builder
    (parquet, json, csv, text, arrow) or a hub name (fetched only when online)."""

    path: str = MISSING
    """save_to_disk dir | builder name with files | a data file (its suffix names the builder) | hub"""
    files: Any = field(default_factory=list)
    """data files or globs (a list, or one) for a builder name (parquet, ...)"""
    name: str | None = None
    """the dataset's configuration (subset) name, for hub datasets that have several"""
    text_field: str = "text"
    """pretrain: the column holding each document's text"""
    split: str = "train"
    """the split that trains"""
    val_split: str | None = None
    """a split that validates; null = every round(1/val_fraction)-th training row"""
    val_fraction: float = 0.01
    """without val_split: the share of rows that validate"""

    def __post_init__(self) -> None:
        if not self.path or self.path == MISSING:
            raise ConfigError("data.path is empty: give a save_to_disk directory, a data file, a builder name "
                              "(parquet, json, csv, text, arrow) with data.files, or a hub dataset name")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        self.files = [self.files] if isinstance(self.files, str) else list(self.files)
        if not all(isinstance(f, str) for f in self.files):
            raise ConfigError(f"data.files: expected file names or globs, got {self.files!r}")


@dataclass
class HFDataConfig(HFSourceConfig):
    """A Hugging Face dataset (`data=hf`); kind hf_chat / hf_prefs read conversations or preference pairs."""

    kind: str = "hf"
    """hf: documents (pretrain) | hf_chat: conversations (sft) | hf_prefs: preference pairs (dpo)"""
    shard_docs: int = 100_000
    """pretrain: documents per token shard (the unit of parallel work and of resuming)"""
    num_proc: int | None = None
    """processes that tokenize; null = every core"""
    sample_chars: int = 20_000_000
    """the tokenizer learns from the first this many characters of training text"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("data.kind", self.kind, ("hf", "hf_chat", "hf_prefs"))
        check_sharding(self.shard_docs, self.num_proc, self.sample_chars)


def check_sharding(shard_docs: int, num_proc: int | None, sample_chars: int) -> None:
    check_positive("data.shard_docs", shard_docs)
    check_positive("data.sample_chars", sample_chars)
    if num_proc is not None:
        check_positive("data.num_proc", num_proc)


@dataclass
class MixSourceConfig(HFSourceConfig):
    """One source of a mixture: any `data=hf` source, with the share of training windows drawn from it."""

    weight: float = 1.0
    """relative: windows come from this source with probability weight / sum of weights"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("data.sources[].weight", self.weight)


@dataclass
class MixDataConfig:
    """Several sources, each tokenized into its own shards; training windows come from each by its weight."""

    kind: str = "mix"
    """fixed: which data schema this is"""
    sources: list[MixSourceConfig] = field(default_factory=list)
    """[{path: a.txt, weight: 0.7}, ...]"""
    shard_docs: int = 100_000
    """documents per token shard, in every source"""
    num_proc: int | None = None
    """processes that tokenize; null = every core"""
    sample_chars: int = 20_000_000
    """the tokenizer learns from this many characters, shared by weight"""

    def __post_init__(self) -> None:
        self.sources = [MixSourceConfig(**s) if isinstance(s, dict) else s for s in self.sources]
        if not self.sources:
            raise ConfigError("data.sources is empty: give e.g. "
                              "'[{path: a.txt, weight: 0.7}, {path: b.parquet, weight: 0.3}]'")
        check_sharding(self.shard_docs, self.num_proc, self.sample_chars)


TASK_FAMILIES = ("copy", "reverse", "count", "recall", "pattern", "sum", "sort")  # llmlab/data/tasks.py makes each


@dataclass
class TasksDataConfig:
    """Embedded instruction tasks with verifiable answers (llmlab/data/tasks.py): conversations for SFT
    (kind tasks) or preference pairs, chosen = the answer and rejected = a plausible wrong one (task_prefs)."""

    kind: str = "tasks"
    """tasks: conversations (sft) | task_prefs: preference pairs (dpo)"""
    train_tasks: int = 4000
    """generated from the train split"""
    val_tasks: int = 200
    """held out: the validation loss"""
    eval_tasks: int = 100
    """held out: eval/task_accuracy, greedy replies scored by exact match"""
    seed: int = 0
    """the task generator's, not the run's"""
    families: list[str] | None = None
    """null = copy, reverse, count, recall, pattern; the graded digit families sum and sort are asked by name"""
    levels: list[int] | None = None
    """digits per prompt of the graded families (their difficulty), taken in turn; null = 2, 3, 4, 5"""
    samples: str | None = None
    """a file of a run's own replies to train tasks (python -m llmlab.sample_tasks) to train on instead of the
    generated tasks: tasks = its right replies (rejection sampling), task_prefs = right over wrong (on-policy)"""
    pass_k: int = 0
    """> 0: also eval/pass@1 (greedy) and eval/pass@<k> (k replies per eval task at temperature 1); 0 = off"""

    def __post_init__(self) -> None:
        check_choice("data.kind", self.kind, ("tasks", "task_prefs"))
        for family in self.families or ():
            check_choice("data.families", family, TASK_FAMILIES)
        for level in self.levels or ():
            if not 2 <= level <= 10:
                raise ConfigError(f"data.levels: each is a number of distinct digits from 2 to 10, got {level}")
        if self.pass_k < 0:
            raise ConfigError(f"data.pass_k must be >= 0 (0 = off), got {self.pass_k}")
        if self.levels is not None and not self.levels:
            raise ConfigError("data.levels is empty: give e.g. [2,3] or null for 2 to 5")
        for name in ("train_tasks", "val_tasks"):
            check_positive(f"data.{name}", getattr(self, name))
        if self.eval_tasks < 0:
            raise ConfigError(f"data.eval_tasks must be >= 0, got {self.eval_tasks}")


@dataclass
class ChatDataConfig:
    """Your conversations (kind chat: Alpaca, ShareGPT or messages records) or preference pairs (kind prefs:
    prompt, chosen, rejected) as JSON or JSONL (llmlab/data/chat.py); the last val_fraction validates."""

    kind: str = "chat"
    """chat: conversations (sft) | prefs: preference pairs (dpo)"""
    paths: list[str] = field(default_factory=list)
    """.json or .jsonl files or glob patterns"""
    val_fraction: float = 0.05
    """the last records of all files together that validate (at least one)"""

    def __post_init__(self) -> None:
        check_choice("data.kind", self.kind, ("chat", "prefs"))
        if not self.paths:
            raise ConfigError("data.paths is empty: give one or more .json/.jsonl files, e.g. data.paths=[a.jsonl]")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class StageConfig:
    """What every stage's node has. Each stage (llmlab/stages/) subclasses it with its own fields and says, in
    class attributes, what it needs, so the run's cross-field rules hold for any stage without naming one."""

    DATA_KINDS: ClassVar[tuple[str, ...]] = ()  # the data kinds (data.kind) it trains on
    STARTS_FROM_MODEL: ClassVar[bool] = False  # needs a trained model: stage.init_from or model.path

    name: str = MISSING
    """the stage's registered name (conf/stage/<name>.yaml)"""
    init_from: str | None = None
    """a run directory or checkpoint directory to start from"""


@dataclass
class EarlyStoppingConfig:
    """Ends a run whose validation loss stopped improving; it ends completed, with a checkpoint."""

    patience: int = 0
    """evaluations without improvement before the run stops (0 = never stop early)"""
    min_delta: float = 0.0
    """an improvement must lower the best val loss by more than this"""

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ConfigError(f"trainer.early_stopping.patience must be >= 0, got {self.patience}")
        check_finite("trainer.early_stopping.min_delta", self.min_delta)
        if self.min_delta < 0:
            raise ConfigError(f"trainer.early_stopping.min_delta must be >= 0, got {self.min_delta}")


@dataclass
class MuonConfig:
    """trainer.optimizer=muon: torch.optim.Muon for the blocks' weight matrices (see llmlab/train/optim.py)."""

    lr: float = 0.01
    """Muon's peak learning rate; the schedule scales it as it scales trainer.lr"""
    momentum: float = 0.95
    """decay of the gradient's running mean that Muon orthogonalises"""
    nesterov: bool = True
    """orthogonalise the Nesterov look-ahead (gradient mixed with the mean), not the mean"""
    weight_decay: float = 0.0
    """decoupled: each step multiplies the matrices by 1 - lr * weight_decay"""
    ns_steps: int = 5
    """Newton-Schulz iterations that orthogonalise the update"""
    adjust_lr: str = "original"
    """original (lr x sqrt(max(1, rows/cols))) | match_rms_adamw (lr x 0.2 sqrt(max dim))"""

    def __post_init__(self) -> None:
        check_positive("trainer.muon.lr", self.lr)
        check_positive("trainer.muon.ns_steps", self.ns_steps)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"trainer.muon.momentum must be in [0, 1), got {self.momentum}")
        check_finite("trainer.muon.weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ConfigError(f"trainer.muon.weight_decay must be >= 0, got {self.weight_decay}")
        check_choice("trainer.muon.adjust_lr", self.adjust_lr, ("original", "match_rms_adamw"))


MIN_LR_RATIO = 0.1  # trainer.min_lr_ratio's default (older runs recorded it, so it stays a number)


@dataclass
class TrainerConfig:
    """The one training loop of every stage (llmlab/train/trainer.py): optimizer, schedule, precision,
    evaluation, checkpoints, resume."""

    max_steps: int = 600
    """optimizer steps; the schedule ends here"""
    batch_size: int = 32
    """sequences per micro-batch per process"""
    grad_accum_steps: int = 1
    """micro-batches per optimizer step (global batch = batch_size x processes x this)"""
    lr: float = 3e-3
    """peak learning rate (AdamW's), reached at the end of warmup"""
    schedule: str = "wsd"
    """cosine | wsd (warmup, stable, decay) | linear: how lr falls to its floor after warmup"""
    decay_fraction: float = 0.2
    """wsd: the last decay_fraction x max_steps steps fall linearly to the floor"""
    min_lr_ratio: float = 0.1
    """the floor as a fraction of lr (trainer.min_lr, when set, replaces it)"""
    min_lr: float | None = None
    """the floor as an absolute lr (AdamW's; Muon's floor is the same fraction of its lr)"""
    warmup_steps: int = 50
    """linear warmup from lr / warmup_steps to lr (0 = none)"""
    optimizer: str = "muon"
    """adamw | muon (Muon for the blocks' matrices, AdamW for the rest: trainer.muon.*)"""
    muon: MuonConfig = field(default_factory=MuonConfig)
    """trainer.muon.*: Muon's settings (optimizer=muon)"""
    weight_decay: float = 0.1
    """AdamW decay of matrices only (biases, norm gains and other vectors: 0)"""
    beta1: float = 0.9
    """AdamW's decay of the gradient mean"""
    beta2: float = 0.95
    """AdamW's decay of the squared-gradient mean"""
    grad_clip: float = 1.0
    """0 disables clipping"""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (fp16 uses a grad scaler, CUDA only)"""
    log_every: int = 10
    """steps between train/ and perf/ scalar rows (the last step logs too)"""
    eval_every: int = 100
    """steps between evaluations: val loss, samples, early stopping (and the last step)"""
    eval_batches: int = 8
    """validation batches per evaluation, the same ones each time"""
    checkpoint_every: int = 200
    """steps between checkpoints (also the last step, a signal, early stopping)"""
    keep_checkpoints: int = 3
    """the newest N stay (a corrupt newest one falls back to the one before); 0 = all"""
    keep_best: bool = True
    """also checkpoints/best: the weights at the lowest periodic val/loss, never rotated away"""
    sample_tokens: int = 120
    """length of the sample generated at each eval"""
    sample_prompt: str = ""
    """pretrain: the text each sample continues ("" = a document's start)"""
    resume: str = "auto"
    """auto | never | <checkpoint or run dir>"""
    allow_config_change: bool = False
    """resume a run directory whose config differs (changed keys are listed)"""
    peak_flops: float = 1e12
    """per device, for MFU; set it to your hardware's figure"""
    progress: bool = True
    """a tqdm progress bar (main process only)"""
    threads: int | None = None
    """torch CPU threads; null = one per usable core, waiting passively (train/threads.py)"""
    on_nonfinite: str = "skip"
    """skip | stop: what a step with non-finite loss or gradients does"""
    max_nonfinite_skips: int = 3
    """skip mode: this many consecutive bad steps end the run"""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """trainer.early_stopping.*"""
    debug_first_batch: bool = False
    """print the first batch: text, token ids, loss mask and shapes"""
    strategy: str = "ddp"
    """ddp | fsdp: how torchrun's processes share the work (one process: ignored)"""
    compile: bool = False
    """torch.compile each block (regional), for training forwards only: evaluation and sampling run eager and never
    recompile; kernels are cached under `cache_dir/inductor`, so a second run starts warm. Checkpoints keep plain
    parameter names"""
    activation_checkpointing: bool = False
    """recompute block activations in backward: less memory, ~1/3 more compute"""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every", "eval_every",
                     "eval_batches", "checkpoint_every"):
            check_positive(f"trainer.{name}", getattr(self, name))
        check_positive("trainer.lr", self.lr)
        check_positive("trainer.peak_flops", self.peak_flops)
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"trainer.{name} must be in [0, 1), got {getattr(self, name)}")
        check_finite("trainer.weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ConfigError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        check_finite("trainer.grad_clip", self.grad_clip)
        check_choice("trainer.precision", self.precision, ("fp32", "bf16", "fp16"))
        check_choice("trainer.on_nonfinite", self.on_nonfinite, ("skip", "stop"))
        check_choice("trainer.strategy", self.strategy, ("ddp", "fsdp"))
        if self.keep_checkpoints < 0:
            raise ConfigError(f"trainer.keep_checkpoints must be >= 0 (0 = keep all), got {self.keep_checkpoints}")
        if self.max_nonfinite_skips < 0:
            raise ConfigError(f"trainer.max_nonfinite_skips must be >= 0, got {self.max_nonfinite_skips}")
        if self.warmup_steps < 0:
            raise ConfigError(f"trainer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.grad_clip < 0:
            raise ConfigError(f"trainer.grad_clip must be >= 0, got {self.grad_clip}")
        check_choice("trainer.optimizer", self.optimizer, ("adamw", "muon"))
        check_choice("trainer.schedule", self.schedule, ("cosine", "wsd", "linear"))
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise ConfigError("trainer.optimizer=muon does not work with trainer.strategy=fsdp: Muon orthogonalises "
                              "whole matrices and FSDP shards them; use trainer.strategy=ddp or optimizer=adamw")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"trainer.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"trainer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.min_lr is not None and not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"trainer.min_lr must be in [0, trainer.lr={self.lr}], got {self.min_lr}")
        # a ratio changed from its default and a min_lr that disagrees: which did the user mean?
        if (self.min_lr is not None and self.min_lr_ratio != MIN_LR_RATIO
                and not math.isclose(self.min_lr, self.lr * self.min_lr_ratio, rel_tol=1e-9, abs_tol=1e-15)):
            raise ConfigError(f"trainer.min_lr={self.min_lr} and trainer.min_lr_ratio={self.min_lr_ratio} disagree "
                              f"(lr x ratio = {self.lr * self.min_lr_ratio:g}): set one of them")

    @property
    def floor_ratio(self) -> float:
        """The schedule's floor as a fraction of the peak: min_lr's when set, else min_lr_ratio."""
        return self.min_lr_ratio if self.min_lr is None else self.min_lr / self.lr


def wsd_decay_steps(cfg: TrainerConfig) -> int:
    """Steps of the wsd schedule's decay: decay_fraction of max_steps, at least one, and never into the warmup
    (a decay_fraction near 1 then means: warm up, then decay at once)."""
    return max(1, min(round(cfg.decay_fraction * cfg.max_steps), cfg.max_steps - cfg.warmup_steps))


@dataclass
class SweepConfig:
    """How a multirun's report compares its jobs (read by the report, not by training)."""

    reference: str | None = None
    """the setting the others are compared against: a value of the one swept key (`sweep.reference=4`), or
    `"key=value,key=value"` (quoted); seeds are grouped, never named; null = the first job's"""


@dataclass
class RunConfig:
    """The whole run: one node per group plus run-level fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """model group: conf/model/ sizes, conf/arch/ presets"""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """tokenizer group"""
    data: Any = MISSING
    """data group: each option names its own schema (SyntheticDataConfig, InductionDataConfig, TextDataConfig,
    TasksDataConfig, ChatDataConfig, HFDataConfig, MixDataConfig)"""
    stage: Any = MISSING
    """MixDataConfig | ModularDataConfig (data group) a StageConfig subclass: the stage group's option names its
    schema"""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """trainer group: the training loop"""
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)
    """monitors group (llmlab/config/monitors.py)"""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """the sweep report's comparison (multirun only)"""
    seed: int = 0
    """weight init, dropout, batch order, samples (data generators have their own data.seed)"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""
    out_dir: str = "."
    """filled from Hydra's run directory"""
    cache_dir: str = "outputs/.cache"
    """tokenizers, token streams and shards, shared across runs"""

    def __post_init__(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device: expected one of auto|cpu|cuda|cuda:N|mps, got {self.device!r}")
        stage, kind = self.stage, self.data.kind
        if kind not in stage.DATA_KINDS:
            raise ConfigError(f"stage={stage.name} trains on data={'|'.join(stage.DATA_KINDS)}, got data={kind}")
        if stage.STARTS_FROM_MODEL and not stage.init_from and not self.model.path:
            raise ConfigError(f"stage={stage.name} starts from a trained model: give stage.init_from=<run dir> "
                              "(or model=hf model.path=<transformers model dir>)")
        if self.model.lora.rank and not stage.STARTS_FROM_MODEL:
            raise ConfigError(f"model.lora.rank: LoRA adapts a trained model, and stage={stage.name} trains one "
                              "from scratch; use it with a stage that starts from stage.init_from")
        context = self.model.context_length
        if isinstance(self.data, InductionDataConfig) and context is not None and self.data.length + 1 > context:
            raise ConfigError(f"data.length={self.data.length} tokens after an end token must fit model.context_length="
                              f"{context}: use data.length<={context - 1} or a longer context")
        moe = self.model.moe
        if moe.experts and moe.balance == "bias" and self.trainer.activation_checkpointing:
            raise ConfigError("model.moe.balance=bias moves the router bias in each training forward, which "
                              "trainer.activation_checkpointing would recompute with another bias; use "
                              "balance=aux_loss")
        if self.model.lora.rank and self.trainer.strategy == "fsdp":
            raise ConfigError("model.lora.rank: LoRA trains too few weights to shard; use trainer.strategy=ddp")
        if self.model.lora.rank and self.trainer.optimizer == "muon":  # llmlab/train/optim.py says why
            raise ConfigError("trainer.optimizer=muon: LoRA adapters train with AdamW, leaving Muon nothing to "
                              "train; use trainer.optimizer=adamw with model.lora.rank")

    def surprises(self) -> list[str]:
        """Settings that are legal but probably not what was meant: each a warning line, before training."""
        said, trainer = [], self.trainer
        if trainer.warmup_steps > trainer.max_steps:  # llmlab.train.schedule: linear warmup to lr
            peak = trainer.lr * trainer.max_steps / trainer.warmup_steps
            said.append(f"trainer.warmup_steps={trainer.warmup_steps} > trainer.max_steps={trainer.max_steps}: the "
                        f"learning rate never reaches trainer.lr={trainer.lr:g} (it peaks at {peak:.3g})")
        return said
