"""The Checkpointer: one owner for a run's checkpoints/ — which one a run resumes, in what order it goes back
in, and how a (possibly sharded) model and optimizer are saved. The file format is llmlab.train.checkpoint's.

Order on resume: the weights go into the model before it is wrapped, sharded or compiled (so every rank starts
from them and FSDP shards them), then the trainer's state (optimizer, data position, RNGs, step) after the
trainer exists. Saving is collective (FSDP gathers the shards); rank 0 alone writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from llmlab.config.errors import ConfigError
from llmlab.train import checkpoint as ckpt
from llmlab.train import distributed
from llmlab.train.distributed import Distributed

log = logging.getLogger(__name__)


def resume_point(root: Path, resume: str) -> Path | None:
    """The verified checkpoint trainer.resume asks for: auto walks back past corrupt ones and says so."""
    if resume == "never":
        return None
    if resume == "auto":
        found, skipped = ckpt.newest_intact(root)
        for reason in skipped:
            log.warning(f"warning: {reason}; falling back to an earlier checkpoint")
        return found
    found = ckpt.find_checkpoint(Path(resume))
    if found is None:
        raise ConfigError(f"trainer.resume={resume}: no complete checkpoint found there")
    manifest = ckpt.verify_checkpoint(found)  # an explicit choice is never swapped for another: a bad one stops it
    if not ckpt.holds_trainer_state(found, manifest):  # refused before anything in the run directory is touched
        raise ConfigError(f"trainer.resume={resume}: {found} holds the weights alone (no optimizer, data position or "
                          "step), so a run cannot continue from it; resume from a step_<N> checkpoint "
                          "(trainer.resume=auto takes the latest), or start a new run from these weights "
                          "(stage.init_from for a chat stage, python -m llmlab.export to share them)")
    return found


def check_same_processes(manifest: dict, world_size: int, strategy: str, path: Path) -> None:
    """A run resumes with the processes it was written by: they set its global batch and data order."""
    saved_world, saved_strategy = manifest.get("processes", 1), manifest.get("strategy", "ddp")
    if saved_world != world_size or (world_size > 1 and saved_strategy != strategy):
        raise ConfigError(f"checkpoint {path} was written by {saved_world} process(es) with "
                          f"trainer.strategy={saved_strategy}; this run has {world_size} with {strategy}: resume "
                          f"with torchrun --nproc_per_node={saved_world}, or start a new hydra.run.dir")


class NonFiniteWeights(RuntimeError):
    """The weights are not all finite: no checkpoint is written, so the last one stays the newest."""


def all_finite(model: nn.Module, place: Distributed) -> bool:
    """Whether every weight is finite, on every rank (FSDP: each rank checks its shards); one host sync."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
    return distributed.mean_over_ranks(finite, place).item() == 1.0


class Checkpointer:
    def __init__(self, root: Path, place: Distributed, strategy: str, keep: int, meta: dict):
        self.root, self.place, self.keep = root, place, keep
        self.sharded = place.enabled and strategy == "fsdp"
        # what every manifest records besides the step and the files: the model's config, the stage, the base,
        # the processes and strategy (llmlab.load and the resume checks read them)
        self.meta = {**meta, "processes": place.world_size, "strategy": strategy}

    def load_weights(self, path: Path, model: nn.Module) -> None:
        """The checkpoint's weights into the model itself, before it is wrapped or sharded."""
        ckpt.load_weights(path, model)

    def restore(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state from a verified checkpoint whose weights load_weights put in already; the rest
        of the trainer's state (Trainer.load_state_dict takes it)."""
        state = ckpt.load_state(path)
        try:
            optimizer_state = state.pop("optimizer")
            if self.sharded:  # the checkpoint holds the whole optimizer state, keyed by parameter name
                distributed.load_optimizer_state(distributed.unwrap(model), optimizer, optimizer_state)
            else:
                optimizer.load_state_dict(optimizer_state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise ConfigError(f"checkpoint file {path / 'state.pt'} is not a trainer state of this run "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no optimizer'})") from None
        return state

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
        """checkpoints/step_<step> of what trains (wrapped or not) and the trainer's state; every rank takes part
        (FSDP gathers the shards), rank 0 writes."""
        model = distributed.unwrap(model)
        if not all_finite(model, self.place):
            last = ckpt.find_checkpoint(self.root)
            raise NonFiniteWeights(f"the weights are not finite after step {step}, so it was not checkpointed; "
                                   f"the last good checkpoint is {last or 'none (no checkpoint was written)'}")
        if self.sharded:
            weights, optimizer_state = distributed.full_state_dicts(model, optimizer)
            model = distributed.plain_copy(model, weights) if self.place.is_main else None
        else:
            optimizer_state = optimizer.state_dict()
        if self.place.is_main:
            state = {"optimizer": optimizer_state, **state}
            ckpt.save_checkpoint(self.root, step, model, state, self.meta, keep=self.keep)
        distributed.barrier(self.place)
        return self.root / f"step_{step}"

    def save_best(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """checkpoints/best: the weights alone, replaced whole at each new lowest val/loss (collective like save)."""
        model = distributed.unwrap(model)
        if self.sharded:
            weights, _ = distributed.full_state_dicts(model, optimizer)
            model = distributed.plain_copy(model, weights) if self.place.is_main else None
        if self.place.is_main:
            ckpt.save_checkpoint(self.root, step, model, {}, self.meta, name=ckpt.BEST)
        distributed.barrier(self.place)
