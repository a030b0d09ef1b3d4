"""Time to quality on real text: how few steps, and how little wall-clock time, llmlab's recipe needs to reach the
loss nanoGPT's shakespeare-char CPU recipe reaches in 2,000 steps.

Data: the Python language reference that ships inside Python (`pydoc_data.topics`), the char tokenizer, the last
10% validating, scored on the whole validation split in non-overlapping windows (metrics.json `val_loss_full`).
Size and batch of nanoGPT's CPU recipe: 4 layers, 4 heads, width 128, context 64, batch 12, no dropout.
Reference: nanoGPT's optimizer and schedule (AdamW 1e-3, betas 0.9/0.99, decay 0.1, 100 warmup steps, cosine to
1e-4, clip 1.0, 2,000 steps) on a GPT-2-style model, checkpointed every `--ref-every` steps so its whole-split loss
can be drawn against time. Contenders: llmlab's default recipe (Llama style, its own optimizer and schedule) plus
any overrides, in runs of N steps, each a complete schedule. Every run is its own `python -m llmlab.run` process with
one thread; `--jobs` of them run at once, the reference runs first so each runs beside contender runs, under the
same load. Time is each run's `wall_s`: its training steps alone (no startup, evaluation or saving).

The answer, per contender: the smallest N whose mean whole-split loss over the seeds is at most the reference's
mean (L_ref), its loss with a t-interval over seeds, its paired difference from the first contender (same seeds),
and the ratio of its mean wall-clock to the reference's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHAPE = ["model.n_layers=4", "model.n_heads=4", "model.d_model=128", "model.context_length=64", "model.dropout=0",
         "trainer.batch_size=12"]
REFERENCE = ["arch=gpt2", "trainer.optimizer=adamw", "trainer.schedule=cosine", "trainer.lr=1e-3", "trainer.beta1=0.9",
             "trainer.beta2=0.99", "trainer.weight_decay=0.1", "trainer.warmup_steps=100", "trainer.min_lr=1e-4",
             "trainer.grad_clip=1.0"]
QUIET = ["monitors=none", "trainer.threads=1", "trainer.progress=false", "trainer.sample_tokens=1",
         "trainer.checkpoint_every=1000000"]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, nargs="+", default=[150, 200, 250], help="contender run lengths N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="contender seeds")
    parser.add_argument("--ref-seeds", type=int, nargs="+", default=[0, 1, 2], help="reference seeds")
    parser.add_argument("--ref-steps", type=int, default=2000, help="the reference's run length (nanoGPT's: 2000)")
    parser.add_argument("--ref-every", type=int, default=250, help="reference checkpoints scored for the curve")
    parser.add_argument("--contender", action="append", default=None, metavar="NAME[@N,N]=OVERRIDE,OVERRIDE",
                        help="a named contender: llmlab's default plus these overrides, at its own run lengths "
                             "when @N,N is given, else at --steps (repeatable; the first is the one the others are "
                             "paired against where both have an N); default: default= (the default recipe)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each one thread)")
    parser.add_argument("--corpus", default=None, help="a text file instead of pydoc_data.topics")
    parser.add_argument("--work", default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--out", default="bench/time_to_loss.json")


def build_corpus(path: Path) -> dict:
    """The Python language reference of this Python, topics in sorted order (experiments/optimizers' corpus)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    path.write_text(text, encoding="utf-8")
    return {"source": "pydoc_data.topics", "python": sys.version.split()[0], "characters": len(text)}


def parse_contenders(specs: list[str] | None, steps: list[int]) -> dict[str, dict]:
    """{name: {"overrides": [...], "steps": [...]}} from NAME[@N,N]=OVERRIDE,OVERRIDE specs."""
    contenders = {}
    for spec in specs or ["default="]:
        head, _, overrides = spec.partition("=")
        name, at, lengths = head.partition("@")
        try:
            own = [int(n) for n in lengths.split(",")] if at else list(steps)
        except ValueError:
            own = []
        if not name or not own or min(own) < 1:
            raise SystemExit(f"--contender {spec!r}: expected NAME[@N,N]=OVERRIDE,OVERRIDE (overrides may be empty)")
        contenders[name] = {"overrides": [o for o in overrides.split(",") if o], "steps": sorted(own)}
    return contenders


def train(name: str, argv: list[str], run_dir: Path, work: Path) -> dict:
    """One `python -m llmlab.run` process; its metrics.json figures, the load around it, the command."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmlab.run", *argv, f"hydra.run.dir={run_dir}"], cwd=work, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / "metrics.json").read_text())
    record = {"run": name, "loss": summary["val_loss_full"], "wall_s": summary["wall_s"],
              "total_s": summary["total_s"], "process_s": round(time.perf_counter() - start, 2),
              "load_before": load_before, "load_after": os.getloadavg()[0]}
    print(json.dumps(record), flush=True)
    return record


def reference_curve(run_dir: Path, every: int, steps: int) -> list[dict]:
    """(step, training wall_s so far, whole-split loss) at each kept checkpoint of a reference run."""
    import torch

    from llmlab.evaluate import run_config, split_of
    from llmlab.load import load_trained

    walls = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "perf/wall_s" in row:
            walls[row["step"]] = row["perf/wall_s"]
    curve = []
    for step in range(every, steps + 1, every):
        model, tokenizer, checkpoint = load_trained(str(run_dir), torch.device("cpu"), f"step_{step}")
        scored = split_of(model.eval(), tokenizer, run_config(checkpoint), torch.device("cpu"))
        curve.append({"step": step, "wall_s": walls[step], "loss": scored["val_loss_full"]})
    return curve


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over seeds (a single value: no interval)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarise(runs: list[dict], contenders: dict[str, dict], seeds: list[int]) -> dict:
    refs = [r for r in runs if r["kind"] == "reference"]
    l_ref = statistics.fmean(r["loss"] for r in refs)
    ref_wall = statistics.fmean(r["wall_s"] for r in refs)
    first = next(iter(contenders))
    table = {}
    for name, contender in contenders.items():
        rows = []
        for n in contender["steps"]:
            mine = {r["seed"]: r for r in runs if r["kind"] == name and r["steps"] == n}
            mean, low, high = interval([mine[s]["loss"] for s in seeds])
            row = {"steps": n, "loss_mean": mean, "loss_ci95": [low, high],
                   "losses": [mine[s]["loss"] for s in seeds],
                   "wall_s_mean": statistics.fmean(mine[s]["wall_s"] for s in seeds)}
            row["wall_ratio"] = row["wall_s_mean"] / ref_wall
            row["reaches_ref"] = mean <= l_ref
            if name != first and n in contenders[first]["steps"]:
                base = {r["seed"]: r for r in runs if r["kind"] == first and r["steps"] == n}
                diff, dlow, dhigh = interval([mine[s]["loss"] - base[s]["loss"] for s in seeds])
                row["paired_diff_vs_" + first] = {"mean": diff, "ci95": [dlow, dhigh]}
            rows.append(row)
        reached = [row for row in rows if row["reaches_ref"]]
        best = reached[0] if reached else None
        table[name] = {"overrides": contender["overrides"], "by_steps": rows,
                       "smallest_n": best["steps"] if best else None,
                       "loss_at_n": best["loss_mean"] if best else None,
                       "wall_ratio_at_n": best["wall_ratio"] if best else None}
    return {"l_ref": l_ref, "l_ref_seeds": [r["loss"] for r in refs], "ref_wall_s_mean": ref_wall,
            "contenders": table,
            "targets": {"n_at_most": 250, "wall_ratio_at_most": 1 / 6}}


def main(args: argparse.Namespace) -> dict:
    contenders = parse_contenders(args.contender, args.steps)
    with tempfile.TemporaryDirectory(prefix="llmlab-bench-ttl-") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        corpus = Path(args.corpus).resolve() if args.corpus else work / "pyref.txt"
        data = build_corpus(corpus) if not args.corpus else {"source": str(corpus)}
        common = [*SHAPE, "data=text", f"data.paths=[{corpus}]", *QUIET, f"cache_dir={work / 'cache'}"]
        jobs = []  # (record fields, argv, run dir): the references first, so each runs beside contenders
        for seed in args.ref_seeds:
            argv = [*common, *REFERENCE, f"trainer.max_steps={args.ref_steps}", f"trainer.eval_every={args.ref_every}",
                    f"trainer.checkpoint_every={args.ref_every}", "trainer.keep_checkpoints=0", f"seed={seed}"]
            jobs.append(({"kind": "reference", "steps": args.ref_steps, "seed": seed}, argv,
                         work / f"reference_s{seed}"))
        for seed in args.seeds:
            for name, contender in contenders.items():
                for n in contender["steps"]:
                    argv = [*common, f"trainer.max_steps={n}", f"trainer.eval_every={n}", *contender["overrides"],
                            f"seed={seed}"]
                    jobs.append(({"kind": name, "steps": n, "seed": seed}, argv, work / f"{name}_n{n}_s{seed}"))

        def one(job):
            fields, argv, run_dir = job
            return {**fields, **train(run_dir.name, argv, run_dir, work)}

        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(one, jobs))
        curves = {f"seed_{s}": reference_curve(work / f"reference_s{s}", args.ref_every, args.ref_steps)
                  for s in args.ref_seeds}
    import torch

    result = {"benchmark": "time-to-loss", "data": data, "shape": SHAPE, "reference": REFERENCE,
              "contender_base": "llmlab's defaults (conf/config.yaml) at the shape above", "common": QUIET,
              "torch": torch.__version__, "usable_cores": len(os.sched_getaffinity(0)), "jobs": args.jobs,
              "summary": summarise(runs, contenders, args.seeds), "reference_curves": curves,
              "runs": runs, "load_avg_range": [min(r["load_before"] for r in runs), max(r["load_after"] for r in runs)],
              "command": "python -m llmlab.bench time-to-loss " + " ".join(sys.argv[2:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return result
