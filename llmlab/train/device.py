"""Where a process computes, and how much memory it took."""

from __future__ import annotations

import resource

import torch

from llmlab.config.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """device=auto: cuda, else mps, else cpu; any other name as given, if this machine has it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    here = available()
    if name != "cpu" and {"cuda": "cuda:0"}.get(name, name) not in here:
        raise ConfigError(f"device={name}: no such device here; this machine has {', '.join(here)}")
    return torch.device(name)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available() -> list[str]:
    found = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if mps_available():
        found.append("mps")
    return found


def peak_memory_mb(device: torch.device) -> float:
    """The device's peak allocation on CUDA; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
