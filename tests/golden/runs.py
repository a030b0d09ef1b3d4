"""The golden runs: short deterministic CPU runs of every stage, driven through the real CLI.

`python tests/golden/runs.py` records what each run logs (every value of metrics.jsonl except timings, the
samples, a digest of the final weights) as tests/golden/<name>.json; tests/test_golden.py reruns them and
demands bitwise equality. Record again only when a change is meant to change training, and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).resolve().parent
REPO = GOLDEN.parents[1]

# one CPU thread: reductions then run in one order whatever the machine's core count
COMMON = [
    "model.n_layers=2", "model.d_model=32", "model.n_heads=4", "model.context_length=48",
    "trainer.max_steps=8", "trainer.batch_size=8", "trainer.warmup_steps=2", "trainer.log_every=1",
    "trainer.eval_every=4", "trainer.eval_batches=2", "trainer.checkpoint_every=4", "trainer.sample_tokens=12",
    "trainer.progress=false", "trainer.threads=1", "device=cpu",
]
TEXT = ["data.train_docs=400", "data.val_docs=40"]
TASKS = ["data.train_tasks=200", "data.val_tasks=16", "data.eval_tasks=8"]
MONITORED = ["monitors.attention.every=4", "monitors.distribution.every=4"]

# name -> (launcher, overrides, the run it starts from); runs are made in this order
RUNS: dict[str, tuple[str, list[str], str | None]] = {
    "pretrain_llama": ("python", [*TEXT, *MONITORED], None),
    # model.gelu=tanh: the GELU every GPT-2 style run had when it was recorded (exact is the default since)
    "pretrain_gpt2": ("python", [*TEXT, "arch=gpt2", "model.gelu=tanh", "monitors=none"], None),
    "sft": ("python", ["stage=sft", "data=tasks", *TASKS, *MONITORED], "pretrain_llama"),
    "dpo": ("python", ["stage=dpo", "data=task_prefs", *TASKS, "trainer.lr=1e-3", "monitors=none"], "sft"),
    "sft_lora": ("python", ["stage=sft", "data=tasks", *TASKS, "model.lora.rank=4", "trainer.lr=1e-2",
                            "monitors=none"], "pretrain_llama"),
    # global batch 8 = 2 processes x 2 rows x 2 micro-batches
    "ddp": ("torchrun", [*TEXT, "trainer.batch_size=2", "trainer.grad_accum_steps=2", "monitors=none"], None),
    # logged every 3 steps, so a resume at step 5 (RESUMED) lands inside a logging interval
    "grpo": ("python", ["stage=grpo", "data=tasks", *TASKS, "trainer.batch_size=4", "trainer.grad_accum_steps=2",
                        "stage.group_size=4", "stage.max_new_tokens=12", "stage.updates_per_batch=2",
                        "trainer.lr=1e-3", "trainer.log_every=3", "monitors=none"], "sft"),
    "moe": ("python", [*TEXT, "model.moe.experts=4", "model.moe.top_k=2", "model.moe.balance=bias",
                       "trainer.log_every=3", "monitors=none"], None),
}

# runs that are also stopped by SIGTERM during this step and resumed by the same command: every logged value must
# be the uninterrupted run's (the metrics being averaged for the next log are part of the resumed state)
RESUMED = {"grpo": 5, "moe": 5}


def arguments(overrides: list[str]) -> list[str]:
    """COMMON, then a run's own overrides; a key given in both takes the run's value (Hydra refuses a key twice)."""
    own = {o.split("=", 1)[0] for o in overrides}
    return [o for o in COMMON if o.split("=", 1)[0] not in own] + overrides


def launch(name: str, work: Path, directory: str | None = None, stop_at: int | None = None) -> Path:
    """Run one golden run under work/<directory or name>/; its run directory. stop_at: SIGTERM during that step
    (tests/fault_driver.py), then the same command again, which resumes."""
    launcher, overrides, start = RUNS[name]
    run_dir = work / (directory or name)
    args = [*arguments(overrides), f"cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}"]
    if start:
        args.append(f"stage.init_from={work / start}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    if stop_at is not None:
        result = subprocess.run([sys.executable, str(GOLDEN.parent / "fault_driver.py"), "sigterm", str(stop_at),
                                 *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 130:
            raise RuntimeError(f"golden run {name} stopped at {stop_at}: exit {result.returncode}\n"
                               f"{result.stderr[-4000:]}")
    prefix = [sys.executable, "-m", "llmlab.run"]
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  "-m", "llmlab.run"]
    result = subprocess.run([*prefix, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"golden run {name} failed:\n{result.stderr[-4000:]}")
    return run_dir


def made(name: str | None, work: Path) -> None:
    """Make a run under work/<name>/ (and the runs it starts from) unless it is there."""
    if name and not (work / name / "metrics.json").exists():
        made(RUNS[name][2], work)
        launch(name, work)


def weights_digest(checkpoint: Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (not the file: its layout may vary)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(checkpoint / "model.safetensors")).items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def observed(run_dir: Path) -> dict:
    """What a run logged that must not change: every metric but timings, the samples, the final weights."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items() if not k.startswith("perf/") and k != "time"})
    samples = run_dir / "samples.txt"
    final = max((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
    return {"metrics": rows, "samples": samples.read_text() if samples.exists() else None,
            "final_checkpoint": final.name, "final_weights_sha256": weights_digest(final)}


def run_all(work: Path) -> dict[str, dict]:
    return {name: observed(launch(name, work)) for name in RUNS}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, record in run_all(Path(tmp)).items():
            (GOLDEN / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"recorded {name}: {len(record['metrics'])} rows")
