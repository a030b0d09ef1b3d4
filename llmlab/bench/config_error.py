"""How long a config mistake takes to report: `python -m llmlab.run model.n_layers=-1` beside `import hydra`.

Both are fresh processes, taking turns in every repeat, so a change in the machine's load falls on both alike.
The figures are each command's wall times (median, min, max), the run's exit code (2: a config error) and the
load average around the measurement. The config layer imports no torch, so the first should cost little more
than Python starting Hydra.
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
COMMANDS = {"config_error": [sys.executable, "-m", "llmlab.run", "model.n_layers=-1"],
            "import_hydra": [sys.executable, "-c", "import hydra"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command, interleaved")
    parser.add_argument("--out", default="bench/config_error.json")


def timed(cmd: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr.strip().splitlines()[-1:]


def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    codes, messages = set(), set()
    timed(COMMANDS["config_error"])  # untimed: fills the file system's caches
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            seconds, code, last = timed(cmd)
            times[name].append(round(seconds, 3))
            if name == "config_error":
                codes.add(code)
                messages.update(last)
    result = {"command": "python -m llmlab.run model.n_layers=-1", "exit_codes": sorted(codes),
              "message": sorted(messages), "repeats": args.repeats, "cpus": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              **{name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs_s": t}
                 for name, t in times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
