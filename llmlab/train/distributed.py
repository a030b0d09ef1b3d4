"""Training on several processes with PyTorch's own engines: DDP by default, FSDP2 (`fully_shard`) on request.

`torchrun --nproc_per_node=N -m llmlab.run ...` starts N copies of the same run; each reads its rank from
the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). A SLURM job launched by
submitit gets the same variables from `submitit.helpers.TorchDistributedEnvironment`, so both take this
one path. Rank 0 alone writes files; every rank computes.

The global batch is trainer.batch_size x ranks x trainer.grad_accum_steps: each rank takes its own slice
of one global draw of windows (llmlab.data.dataset.TrainBatches), so N processes see exactly the batches
one process with N times the batch would see.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from llmlab.config.schema import TrainerConfig


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Distributed()


def from_environment() -> Distributed:
    """This process's place, from torchrun's variables (or a submitit SLURM job's); one process otherwise."""
    in_submitit_job = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if "RANK" not in os.environ and in_submitit_job and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()  # sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device) -> Distributed:
    """Join the process group once per process (a multirun calls this per job): gloo on CPU, nccl on CUDA."""
    place = from_environment()
    if place.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
        atexit.register(dist.destroy_process_group)
    return place


def local_device(device: torch.device, place: Distributed) -> torch.device:
    """Each rank its own GPU: cuda -> cuda:<local rank>."""
    if device.type == "cuda" and device.index is None and place.enabled:
        return torch.device("cuda", place.local_rank)
    return device


def broadcast_object(value, place: Distributed):
    """Rank 0's value on every rank (e.g. the output directory Hydra resolved from rank 0's clock)."""
    if not place.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(place: Distributed) -> None:
    if place.enabled:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, place: Distributed) -> torch.Tensor:
    """The mean of a tensor over ranks (a copy; every rank gets it)."""
    if not place.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / place.world_size


def sum_over_ranks(value: torch.Tensor, place: Distributed) -> torch.Tensor:
    """The sum of a tensor over ranks (a copy; every rank gets it)."""
    if not place.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def wrap(model: nn.Module, strategy: str, place: Distributed, device: torch.device) -> nn.Module:
    """DDP: a replica per rank, gradients averaged. FSDP2: each block's parameters sharded over ranks."""
    if not place.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)  # the root: embeddings, final norm, head
    from torch.nn.parallel import DistributedDataParallel

    # the only buffers are RoPE tables every rank computes alike: no broadcast of them before each forward
    # (newer torch names the switch forward_sync_buffers)
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{no_sync: False})


def prepare(model: nn.Module, cfg: TrainerConfig, place: Distributed, device: torch.device,
            cache_dir: str | None = None) -> nn.Module:
    """What trains: the model with activation checkpointing, DDP-wrapped or sharded under torchrun, its blocks
    compiled (Transformer.compile_blocks: training forwards only, so evaluation and generation never recompile).
    Checkpoints, samples and monitors use the model itself, so no compile or DDP prefix reaches a checkpoint.
    cache_dir: the run's cache directory; inductor's compiled kernels are kept under it, so the next run with the
    same shapes starts warm."""
    model.activation_checkpointing = cfg.activation_checkpointing
    trained = wrap(model, cfg.strategy, place, device)
    if cfg.compile:
        if cache_dir is not None:  # a user's own TORCHINDUCTOR_CACHE_DIR wins
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).resolve() / "inductor"))
        model.compile_blocks()
    return trained


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under DDP's wrapper (FSDP2 shards in place, and torch.compile wraps the blocks alone:
    nothing to unwrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_gradient_sync(model: nn.Module, last_micro_batch: bool):
    """Gradient accumulation: all-reduce once, on the last micro-batch, not after each of them."""
    if last_micro_batch:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Whole (unsharded) model and optimizer state on CPU, for a checkpoint rank 0 writes. Collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))


def plain_copy(model: nn.Module, weights: dict) -> nn.Module:
    """An unsharded CPU model holding the gathered weights: what a checkpoint (safetensors) is written from."""
    from llmlab.model.transformer import Transformer

    plain = Transformer.uninitialized(model.cfg)
    plain.load_state_dict(weights)
    return plain


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's whole optimizer state into the optimizer of a sharded model (each rank keeps its shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
