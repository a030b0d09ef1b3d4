"""How long a config mistake takes to report: `python -m llmlab.run model.n_layers=-1` beside `import hydra`.

Each is a fresh process, and the commands take turns in every repeat, so a change in the machine's load falls on
all alike. `--baseline <checkout>` times the same command in another checkout too (`git worktree add` or
`git archive <commit>` of the code before a change), for a before/after figure under the same load. The figures
are each command's wall times (median, min, max), the run's exit codes (2: a config error) and the load average
around the measurement. The config layer imports no torch, so a mistake should cost little more than Python
starting Hydra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG_ERROR = [sys.executable, "-m", "llmlab.run", "model.n_layers=-1"]
IMPORT_HYDRA = [sys.executable, "-c", "import hydra"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command, interleaved")
    parser.add_argument("--baseline", help="another checkout whose config error is timed too (`before`)")
    parser.add_argument("--out", default="bench/config_error.json")


def timed(cmd: list[str], repo: Path) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr.strip().splitlines()[-1:]


def main(args: argparse.Namespace) -> None:
    commands = {"config_error": (CONFIG_ERROR, REPO), "import_hydra": (IMPORT_HYDRA, REPO)}
    if args.baseline:
        commands["config_error_baseline"] = (CONFIG_ERROR, Path(args.baseline).resolve())
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in commands}
    codes, messages = {name: set() for name in commands}, set()
    for cmd, repo in commands.values():
        timed(cmd, repo)  # untimed: fills the file system's caches
    for _ in range(args.repeats):
        for name, (cmd, repo) in commands.items():
            seconds, code, last = timed(cmd, repo)
            times[name].append(round(seconds, 3))
            codes[name].add(code)
            if name == "config_error":
                messages.update(last)
    result = {"command": "python -m llmlab.run model.n_layers=-1", "baseline": args.baseline,
              "exit_codes": {name: sorted(c) for name, c in codes.items()},
              "message": sorted(messages), "repeats": args.repeats, "cpus": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              **{name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t}
                 for name, t in times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
