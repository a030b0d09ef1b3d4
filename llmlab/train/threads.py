"""How many CPU threads torch computes with when trainer.threads is not given.

torch's own default is one thread per core of the machine. Each operation then waits at a barrier for all its
threads, so when other processes hold the cores (a shared lab server, a laptop with a browser) one descheduled
thread stalls the rest: on 2 busy cores a default run was 4-5 times slower than with one thread (`python -m
llmlab.bench threads` measures it). So the default takes the cores this process may use (its CPU affinity,
capped by a cgroup CPU quota) less the load the machine already carries (its 1-minute load average), and at least
one: every core on an idle machine, one thread on a busy one. It is decided once per process, before the first
run starts (a sweep's later jobs would otherwise count the earlier ones' load as someone else's).
`trainer.threads=<n>` chooses it outright; OMP_NUM_THREADS in the environment leaves torch's choice alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average here (Windows): assume an idle machine
            load = 0.0
        _chosen = (threads_for(cores, load), f"{cores} usable core{'s' * (cores != 1)}, load average {load:.1f}")
    return _chosen
