"""What a stage is: a component that turns the run's config into the parts the one training loop trains.

A stage module subclasses `Stage` (which registers it by name); its schema, a `StageConfig` subclass with the data
kinds it takes, lives in llmlab/config/stages.py, so a config is validated before torch loads; and it ships
`conf/stage/<name>.yaml`. Nothing else names it: the run asks the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from llmlab.config.schema import RunConfig, StageConfig
from llmlab.data.batch import Batch, BatchSource
from llmlab.data.copy_probe import CopyProbe
from llmlab.data.modular import ModularTask
from llmlab.model.transformer import Transformer
from llmlab.train.distributed import Distributed
from llmlab.train.evaluators import Evaluator
from llmlab.train.objectives import Objective


@dataclass(frozen=True)
class StageContext:
    """What a stage builds from."""

    cfg: RunConfig
    device: torch.device
    place: Distributed
    out_dir: Path
    resume_from: Path | None  # the verified checkpoint this run resumes: its weights go in after build()


@dataclass
class StageParts:
    """What a stage trains on and with; the rest of a run (sinks, monitors, checkpoints, the loop) is shared."""

    model: Transformer  # on the context's device, not yet wrapped or compiled (build() saves its tokenizer)
    objective: Objective
    train_batches: BatchSource  # GRPO's yields RolloutBatches: whatever its objective takes
    val_batches: list[Batch]  # the same every evaluation
    steps_per_epoch: float  # optimizer steps per pass over the training data
    stats: dict  # dataset_stats.json
    sample: Callable[[int], str] | None  # text generated at each evaluation (samples.txt)
    describe_batch: Callable[[Batch], str]  # what trainer.debug_first_batch prints of the first batch
    decode: Callable[[list[int]], str]  # ids to text, for the monitors' token labels
    evaluators: list[Evaluator] = field(default_factory=list)  # more metrics at each evaluation
    manifest: dict = field(default_factory=dict)  # what each checkpoint records for later tools (base, chat)
    # (rows, tokens) -> validation rows with the names that must be copied (the circuits monitor); None: no such data
    copy_probe: Callable[[int, int], CopyProbe | None] | None = None
    # the whole validation split as token streams, scored once at the end (llmlab.train.split_eval); None: the
    # stage's validation batches are all it has
    val_split: list[np.ndarray] | None = None
    # ids -> UTF-8 bytes of the text they decode to (markers count none), for losses in bits per byte; None: the
    # stage's loss is not per token (DPO, GRPO)
    text_bytes: Callable[[list[int]], int] | None = None
    modular_task: ModularTask | None = None  # data=modular: the task and its split, for the progress monitor
    # the data's sources and checksums (llmlab.data.fingerprint); None: the stage reports none, and is not checked
    data_fingerprint: dict | None = None
    # the loss of the validation batches when it is not the training objective's (GRPO trains on rollouts and
    # validates on the held-out replies' next-token loss); None: the objective's own
    val_objective: Objective | None = None


class Stage(ABC):
    name: ClassVar[str]  # stage=<name>
    config: ClassVar[type[StageConfig]]  # its schema, registered as stage/base_<name>
    chat: ClassVar[bool] = False  # its model answers in the chat template (generate and evaluate prompt it so)
    # what TensorBoard shows of its objective besides the loss (llmlab.train.tb_layout): Custom Scalars charts
    # (title -> ["Multiline", [tag regexes]]) and the tags pinned first in the Time Series tab
    charts: ClassVar[dict[str, list]] = {}
    pinned: ClassVar[list[str]] = []
    # why its objective cannot train under trainer.strategy=fsdp with several processes (None: it can); the runtime
    # gate (llmlab.run_checks) says so before anything is built
    fsdp_problem: ClassVar[str | None] = None

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    @abstractmethod
    def build(self, ctx: StageContext) -> StageParts:
        """The parts to train; a resumed run builds the same parts and then loads its checkpoint over them."""

    def check_resume(self, manifest: dict, ctx: StageContext) -> None:
        """ConfigError if the checkpoint at ctx.resume_from cannot continue under this config."""


REGISTRY: dict[str, type[Stage]] = {}
