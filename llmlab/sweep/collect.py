"""Read a sweep directory back from disk: one JobRecord per job, whatever state each job reached.

Everything comes from files the jobs write as they go (`.hydra/overrides.yaml`, `metrics.jsonl`,
`metrics.json`), so a report can be rebuilt while a sweep runs, after it crashed, or long after. A job that
ended is described by its own metrics.json alone; one that has not (running, killed, or resumed by a rerun
since it ended) by what its metrics.jsonl reached. A file that cannot be read makes its row `unreadable`, never
the report fail. Nothing here writes into a job's directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# overrides that say where or how a job ran, not what it studies
SEED = "seed"  # the swept key whose values are grouped over, not compared
NOT_SWEPT = {"cache_dir", "device", "trainer.progress", "trainer.threads", "hydra.run.dir", "hydra.sweep.dir",
             "sweep.reference", "logger"}


STATUSES = {
    "completed": "trained to the end (or stopped early, as the note says)",
    "failed": "stopped by an error; the note has it",
    "interrupted": "stopped by a signal after writing a checkpoint; its command again resumes it",
    "incomplete": "no metrics.json yet, or one older than its metrics.jsonl (resumed since): the job is still "
                  "running, or was killed; the values are what its metrics.jsonl reached. `python -m llmlab.run "
                  "<its overrides> hydra.run.dir=<its dir>` resumes a killed one",
    "unreadable": "its metrics.json or .hydra/overrides.yaml cannot be read (the note says why); the values come "
                  "from whichever of metrics.json and metrics.jsonl can be",
}
# a run writes metrics.json as it ends and closes metrics.jsonl (flushing its last lines) moments later; a log
# this much newer means the job was resumed since (the sweep run again), so that summary no longer describes it
RESUMED_SLACK_S = 10.0


@dataclass
class JobRecord:
    name: str  # the job directory's name (built from its overrides)
    path: Path
    overrides: dict[str, str]
    status: str  # one of STATUSES (or what a newer metrics.json says)
    summary: dict = field(default_factory=dict)  # metrics.json, when the job wrote one that still holds
    curve: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    note: str = ""  # why a job is unreadable or incomplete, else metrics.json's message

    @property
    def steps(self) -> int | None:
        if self.summary:
            return self.summary.get("steps")
        steps = [row["step"] for row in self.curve if isinstance(row.get("step"), int)]
        return steps[-1] if steps else 0

    def value(self, key: str):
        """A metric from metrics.json for a job that ended (nothing else: its own final record), or for an
        unfinished or unreadable job what its log reached."""
        if self.summary:
            return self.summary.get(key)
        logged = {"val_loss": "val/loss", "val_bpb": "val/bpb", "train_loss": "train/loss",
                  "wall_s": "perf/wall_s"}.get(key)
        if key == "best_val_loss":
            values = [row["val/loss"] for row in self.curve if is_number(row.get("val/loss"))]
            return min(values) if values else None
        values = [row[logged] for row in self.curve if is_number(row.get(logged))] if logged else []
        return values[-1] if values else None


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    parsed = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        key = key.lstrip("+~")
        if key not in NOT_SWEPT and not key.startswith("hydra."):
            parsed[key] = value
    return parsed


def read_overrides(path: Path) -> tuple[dict[str, str], str]:
    """The job's overrides, and why they cannot be read ("" when they can)."""
    name = f"{path.parent.name}/{path.name}"
    try:
        lines = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"{name} is missing"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {}, f"{name} is not readable ({type(err).__name__})"
    if lines is None:
        return {}, ""  # a job without overrides: the defaults
    if not isinstance(lines, list):
        return {}, f"{name} is not a list of overrides"
    return parse_overrides(lines), ""


def read_summary(path: Path) -> tuple[dict | None, str]:
    """metrics.json as a dict, or None and why not ("" when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as err:
        return None, f"metrics.json is not readable ({getattr(err, 'strerror', None) or type(err).__name__})"
    if not text.strip():
        return None, "metrics.json is empty"
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"metrics.json is not valid JSON ({err.msg}: line {err.lineno} column {err.colno})"
    if not isinstance(summary, dict):
        return None, f"metrics.json holds a JSON {type(summary).__name__}, not an object"
    if not isinstance(summary.get("status"), str) or not summary["status"]:
        return None, "metrics.json has no status"
    return summary, ""


def read_curve(path: Path) -> list[dict]:
    curve = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return curve
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a job killed mid-write leaves a torn last line
            break
        if not isinstance(row, dict):
            break
        curve.append(row)
    return curve


def modified(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_job(path: Path) -> JobRecord:
    """What one job directory says about its job; never raises: an unreadable file is the row's status."""
    overrides, overrides_problem = read_overrides(path / ".hydra" / "overrides.yaml")
    summary_file, curve_file = path / "metrics.json", path / "metrics.jsonl"
    summary, summary_problem = read_summary(summary_file)
    curve = read_curve(curve_file)
    problems = [p for p in (summary_problem, overrides_problem) if p]
    if problems:  # a readable metrics.json still gives the values; the row cannot say which setting they are for
        return JobRecord(path.name, path, overrides, "unreadable", summary or {}, curve, "; ".join(problems))
    if summary is None:
        return JobRecord(path.name, path, overrides, "incomplete", {}, curve,
                         "no metrics.json yet: still running, or killed")
    logged, ended = modified(curve_file), modified(summary_file)
    if logged is not None and ended is not None and logged > ended + RESUMED_SLACK_S:
        return JobRecord(path.name, path, overrides, "incomplete", {}, curve,
                         f"resumed after it ended {summary['status']} at step {summary.get('steps')}: "
                         "still running, or killed")
    message = summary.get("message")
    return JobRecord(path.name, path, overrides, summary["status"], summary, curve,
                     message if isinstance(message, str) else "")


def find_jobs(sweep_dir: Path) -> list[JobRecord]:
    """Every job under sweep_dir, in launch order. A job is a directory holding .hydra/ (Hydra writes it before the
    job starts), whatever state the job reached."""
    paths = sorted((p.parent for p in sweep_dir.glob("*/.hydra") if p.is_dir()), key=job_order)
    return [read_job(p) for p in paths]


def job_order(path: Path) -> tuple:
    hydra_cfg = path / ".hydra" / "hydra.yaml"
    try:
        num = yaml.safe_load(hydra_cfg.read_text())["hydra"]["job"]["num"]
    except Exception:  # an older or partial job: order by name after the numbered ones
        num = math.inf
    if not is_number(num):
        num = math.inf
    return (num, path.name)


SWEEP_SYNTAX = (",", "range(", "choice(", "interval(", "glob(")


def declared_sweep(sweep_dir: Path) -> list[str] | None:
    """The keys the sweep was asked to vary: command-line sweeps and hydra.sweeper.params (experiments)."""
    path = sweep_dir / "multirun.yaml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        hydra_cfg = loaded.get("hydra", {}) if isinstance(loaded, dict) else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        hydra_cfg = None
    if not isinstance(hydra_cfg, dict):  # missing or unreadable: the keys are the ones that differ
        return None
    overrides, sweeper = hydra_cfg.get("overrides"), hydra_cfg.get("sweeper")
    task = overrides.get("task") if isinstance(overrides, dict) else None
    params = sweeper.get("params") if isinstance(sweeper, dict) else None
    keys = []
    for override in task if isinstance(task, list) else []:
        key, _, value = str(override).partition("=")
        if any(mark in value for mark in SWEEP_SYNTAX):
            keys.append(key.lstrip("+~"))
    # a swept config group added with + (`+experiment/moe_vs_dense: a,b`) is named without it, as in the overrides
    for key in (str(k).lstrip("+~") for k in (params if isinstance(params, dict) else {})):
        if key not in keys:
            keys.append(key)
    return [k for k in keys if k not in NOT_SWEPT]


def declared_reference(sweep_dir: Path) -> str | None:
    """sweep.reference as the sweep was launched with it (its multirun.yaml), None when unset or unreadable."""
    try:
        loaded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text(encoding="utf-8"))
        reference = loaded["sweep"]["reference"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return None
    return str(reference) if reference is not None else None


def swept_keys(jobs: list[JobRecord], sweep_dir: Path | None = None) -> list[str]:
    """The swept keys in the order given; without a multirun.yaml, the keys whose value differs between jobs."""
    declared = declared_sweep(sweep_dir) if sweep_dir is not None else None
    if declared is not None:
        return declared
    jobs = [job for job in jobs if job.overrides] or jobs  # a job whose overrides cannot be read says nothing
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
