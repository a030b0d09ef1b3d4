"""CPU threads on a shared machine: a short default run with torch's default threads, with one thread and with
llmlab's default, side by side.

Each variant is the same command (`python -m llmlab.run trainer.max_steps=<steps>`, the default model and data)
in its own process, so each gets a fresh OpenMP runtime; the variants take turns in every repeat, so a change in
the machine's load falls on all of them alike. llmlab sets a passive OpenMP wait policy when it is imported,
before torch; OpenMP reads it once, when torch loads. So `torch_default` (torch's thread count and wait policy,
as before llmlab chose) and `fallback` (llmlab's default where the policy could not be set) import torch before
llmlab, and `passive_after_import` sets the policy after importing torch, to show whether that has any effect.
The figures are each variant's median training time (metrics.json `wall_s`: the steps, evaluations and
checkpoints) and whole run (`total_s`), their ratio to one thread, and the load average around each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmlab.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
# python -m llmlab.run, with torch imported first (and then the policy set, for passive_after_import)
TORCH_FIRST = ("import os, runpy, sys, torch; {set}sys.argv = ['llmlab.run', *sys.argv[1:]]; "
               "runpy.run_module('llmlab.run', run_name='__main__')")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=15, help="training steps per run (the issue's: 15)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved")
    parser.add_argument("--variants", nargs="+", default=["torch_default", "one", "llmlab_default", "fallback"],
                        help="of torch_default, one, llmlab_default, fallback, passive_after_import")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (they fill the data caches)")
    parser.add_argument("--out", default="bench/threads.json")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. model=small")


def torch_default_threads() -> int:
    """The thread count torch picks in a fresh process here (OMP_NUM_THREADS as this process has it)."""
    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout)


def command(variant: str, torch_threads: int) -> tuple[list[str], dict[str, str]]:
    """(argv before the overrides, environment changes) of one variant."""
    run = [sys.executable, "-m", "llmlab.run"]
    torch_first = [sys.executable, "-c", TORCH_FIRST.format(set="")]
    after = [sys.executable, "-c", TORCH_FIRST.format(set="os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'; ")]
    return {"torch_default": (torch_first + [f"trainer.threads={torch_threads}"], {}),
            "one": (run + ["trainer.threads=1"], {}),
            "llmlab_default": (run, {}),
            "fallback": (torch_first, {}),
            "passive_after_import": (after + [f"trainer.threads={torch_threads}"], {}),
            }[variant]


def one_run(variant: str, torch_threads: int, common: list[str], work: Path, n: int) -> dict:
    argv, extra = command(variant, torch_threads)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(REPO), **extra)
    run_dir = work / f"{variant}_{n}"
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([*argv, *common, f"hydra.run.dir={run_dir}"], cwd=work, env=env, capture_output=True,
                          text=True)
    process_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(RunDir(run_dir).summary.read_text())
    chosen = next((line for line in done.stdout.splitlines() if line.startswith("cpu threads: ")), None)
    return {"variant": variant, "repeat": n, "wall_s": summary["wall_s"], "total_s": summary["total_s"],
            "process_s": round(process_s, 3), "load_before": load_before, "load_after": os.getloadavg()[0],
            "llmlab_chose": chosen}


def main(args: argparse.Namespace) -> dict:
    torch_threads = torch_default_threads()
    with tempfile.TemporaryDirectory(prefix="llmlab-bench-threads-") as tmp:
        work = Path(tmp)
        common = [f"trainer.max_steps={args.steps}", "trainer.progress=false", f"cache_dir={work / 'cache'}",
                  *args.overrides]
        for n in range(args.warmup):  # untimed: the data and tokenizer caches are filled
            one_run("one", torch_threads, common, work, -1 - n)
        runs = []
        for n in range(args.repeats):
            order = args.variants[n % len(args.variants):] + args.variants[:n % len(args.variants)]
            for variant in order:
                runs.append(one_run(variant, torch_threads, common, work, n))
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {key: statistics.median(r[key] for r in mine) for key in ("wall_s", "total_s")}
    for variant in args.variants:
        summary[variant]["wall_vs_one_thread"] = summary[variant]["wall_s"] / summary["one"]["wall_s"] \
            if "one" in summary else None
    result = {"benchmark": "threads", "command": f"python -m llmlab.run trainer.max_steps={args.steps} "
                                                  f"trainer.progress=false {' '.join(args.overrides)}".strip(),
              "torch_default_threads": torch_threads, "usable_cores": len(os.sched_getaffinity(0)),
              "cpu_count": os.cpu_count(), "repeats": args.repeats, "summary": summary, "runs": runs,
              "load_avg_range": [min(r["load_before"] for r in runs), max(r["load_after"] for r in runs)]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return result
