"""Each stage's schema (stage group), beside the other schemas so that composing and validating a config imports no
torch: a wrong key or value is reported before the stage's module (and torch) loads. The stage itself
(llmlab/stages/<name>.py) names its schema as its `config`; conf/stage/<name>.yaml lists base_<name>."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from llmlab.config.errors import ConfigError, check_finite, check_positive
from llmlab.config.schema import StageConfig


@dataclass
class PretrainConfig(StageConfig):
    """stage=pretrain: next-token training of a new or imported model (data=synthetic|induction|text|hf|mix|modular)."""

    DATA_KINDS: ClassVar[tuple[str, ...]] = ("synthetic", "induction", "text", "hf", "mix", "modular")

    name: str = "pretrain"
    """next-token loss on every token, from a new (or imported) model"""


@dataclass
class SFTConfig(StageConfig):
    """stage=sft: supervised fine-tuning on conversations (data=tasks|chat, or hf with data.kind=hf_chat)."""

    DATA_KINDS: ClassVar[tuple[str, ...]] = ("tasks", "chat", "hf_chat")
    STARTS_FROM_MODEL: ClassVar[bool] = True

    name: str = "sft"
    """next-token loss on the assistant's tokens only"""


@dataclass
class DPOConfig(StageConfig):
    """stage=dpo: direct preference optimisation on pairs (data=task_prefs|prefs, or hf with data.kind=hf_prefs)."""

    DATA_KINDS: ClassVar[tuple[str, ...]] = ("task_prefs", "prefs", "hf_prefs")
    STARTS_FROM_MODEL: ClassVar[bool] = True

    name: str = "dpo"
    """preference loss against the frozen starting model (the reference)"""
    beta: float = 0.1
    """how far the policy may move from the reference (larger: less far)"""
    nll_weight: float = 0.0
    """> 0: plus this times the chosen reply's next-token loss per token (iterative RPO), so DPO cannot lower it"""

    def __post_init__(self) -> None:
        check_positive("stage.beta", self.beta)
        if not (self.nll_weight >= 0 and self.nll_weight < float("inf")):
            raise ConfigError(f"stage.nll_weight must be a finite number >= 0, got {self.nll_weight}")


MAX_GROUP_SIZE = 4096  # completions per prompt; a group of more says nothing a smaller one does not
MIN_TEMPERATURE = 1e-3  # below it the logits / temperature overflow float32 and sampling has no distribution


@dataclass
class RewardFunctionConfig:
    """One of the user's reward functions."""

    name: str = "user"
    """logged as grpo/reward/<name>"""
    _target_: str = ""
    """module.function(prompts, completions, records) -> one number per completion"""
    weight: float = 1.0
    """its term in a completion's reward: the sum of weight x value over the functions"""


@dataclass
class GRPOConfig(StageConfig):
    """stage=grpo: group-relative policy optimisation from verifiable rewards (data=tasks|chat)."""

    DATA_KINDS: ClassVar[tuple[str, ...]] = ("tasks", "chat")
    STARTS_FROM_MODEL: ClassVar[bool] = True

    name: str = "grpo"
    """group-relative policy optimisation on sampled completions and their rewards"""
    group_size: int = 8
    """completions sampled per prompt; advantages are relative to the group"""
    temperature: float = 1.0
    """sampling temperature of the completions"""
    max_new_tokens: int = 48
    """a completion stops at <|end|> or after this many tokens"""
    clip_eps: float = 0.2
    """the policy ratio is clipped below at 1 - clip_eps (and above at 1 + clip_eps unless clip_eps_high is set)"""
    clip_eps_high: float | None = None
    """the upper clip, 1 + clip_eps_high (DAPO's clip-higher, e.g. 0.28; null = clip_eps, symmetric)"""
    updates_per_batch: int = 1
    """optimizer steps on each batch of samples (1: plain policy gradient)"""
    beta: float = 0.04
    """weight of the KL penalty (k3 estimator) to the frozen starting model"""
    format_reward: float = 0.1
    """weight of the built-in format reward: 1 for a completion that ends with <|end|>"""
    rewards: list[RewardFunctionConfig] = field(default_factory=list)
    """the user's reward functions, added to the built-ins: [{name: vowels, _target_: my_rewards.vowels}]"""
    dynamic_sampling: bool = False
    """drop groups whose rewards all agree and draw further prompts in their place (DAPO)"""
    max_draws: int = 4
    """dynamic_sampling: prompt batches drawn at most for one micro-batch, then zero-spread groups are kept"""

    def __post_init__(self) -> None:
        if not 2 <= self.group_size <= MAX_GROUP_SIZE:
            raise ConfigError(f"stage.group_size must be in [2, {MAX_GROUP_SIZE}] (advantages compare a group), "
                              f"got {self.group_size}")
        for name in ("max_new_tokens", "clip_eps", "updates_per_batch", "max_draws"):
            check_positive(f"stage.{name}", getattr(self, name))
        check_positive("stage.temperature", self.temperature)
        if self.temperature < MIN_TEMPERATURE:
            raise ConfigError(f"stage.temperature must be >= {MIN_TEMPERATURE} (smaller overflows the logits; GRPO "
                              f"needs completions that differ), got {self.temperature}")
        if self.clip_eps_high is not None:
            check_positive("stage.clip_eps_high", self.clip_eps_high)
        for name in ("beta", "format_reward"):
            check_finite(f"stage.{name}", getattr(self, name))
        if self.beta < 0:
            raise ConfigError(f"stage.beta must be >= 0, got {self.beta}")
        for i, r in enumerate(self.rewards):
            if not r._target_:
                raise ConfigError(f"stage.rewards[{i}]._target_: expected module.function, got nothing")
            check_finite(f"stage.rewards[{i}].weight", r.weight)


# stage=<name> -> its schema, registered in Hydra's ConfigStore as stage/base_<name> (llmlab/store.py); each
# stage in llmlab/stages/ is registered under the same name with the same schema (tests/test_stages.py checks it)
STAGE_SCHEMAS: dict[str, type[StageConfig]] = {
    schema.name: schema for schema in (PretrainConfig, SFTConfig, DPOConfig, GRPOConfig)}
