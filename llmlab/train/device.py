"""Where a process computes, and how much memory it took."""

from __future__ import annotations

import resource

import torch


def pick_device(name: str) -> torch.device:
    """device=auto: cuda, else mps, else cpu; any other name as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_memory_mb(device: torch.device) -> float:
    """The device's peak allocation on CUDA; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
