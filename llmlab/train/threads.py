"""How many CPU threads torch computes with when trainer.threads is not given.

torch's own default is one thread per core of the machine, and its OpenMP threads spin while they wait for
work. On a shared machine (a lab server, a laptop with a browser) the spinning threads burn the cores other
processes need, and each operation waits at a barrier for a descheduled thread: on 2 busy cores a default run
was 5 times slower than with one thread (`python -m llmlab.bench threads`). llmlab sets a passive OpenMP wait
policy before torch loads (llmlab/__init__.py), under which the threads sleep instead, and a thread per usable
core (this process's CPU affinity, capped by a cgroup CPU quota) was then as fast as one thread on the busy
machine or faster. Where that policy could not be set (torch imported before llmlab, or OMP_WAIT_POLICY set to
something else), the default falls back to the usable cores less the machine's 1-minute load average, at least
one. It is decided once per process, before the first run starts. `trainer.threads=<n>` chooses it outright;
OMP_NUM_THREADS in the environment leaves torch's choice alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import llmlab

_chosen: tuple[int, str] | None = None  # this process's decision, once made


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a container's)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def threads_for(cores: int, load: float) -> int:
    """Threads for `cores` usable cores on a machine whose 1-minute load average is `load`: the cores nobody
    else keeps busy (rounded), at least one."""
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def default_threads() -> tuple[int, str] | None:
    """(threads, why) for a run that does not set trainer.threads; None where OMP_NUM_THREADS decides."""
    global _chosen
    if "OMP_NUM_THREADS" in os.environ:
        return None
    if _chosen is None:
        cores = usable_cores()
        described = f"{cores} usable core{'s' * (cores != 1)}"
        if llmlab.OMP_PASSIVE:
            _chosen = (cores, f"{described}, OpenMP threads wait passively")
        else:
            try:
                load = os.getloadavg()[0]
            except OSError:  # no load average here (Windows): assume an idle machine
                load = 0.0
            _chosen = (threads_for(cores, load), f"{described}, load average {load:.1f}, OpenMP threads may spin")
    return _chosen
