"""Read a sweep directory back from disk: one JobRecord per job, whatever state each job reached.

Everything comes from files the jobs write as they go (`.hydra/overrides.yaml`, `metrics.jsonl`,
`metrics.json`), so a report can be rebuilt while a sweep runs, after it crashed, or long after.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# overrides that say where or how a job ran, not what it studies
SEED = "seed"  # the swept key whose values are grouped over, not compared
NOT_SWEPT = {"cache_dir", "device", "trainer.progress", "trainer.threads", "hydra.run.dir", "hydra.sweep.dir"}


@dataclass
class JobRecord:
    name: str  # the job directory's name (built from its overrides)
    path: Path
    overrides: dict[str, str]
    status: str  # completed | failed | interrupted | incomplete (no metrics.json yet: running or killed)
    summary: dict = field(default_factory=dict)  # metrics.json, when the job wrote one
    curve: list[dict] = field(default_factory=list)  # metrics.jsonl rows

    @property
    def steps(self) -> int:
        return self.summary.get("steps") or (self.curve[-1]["step"] if self.curve else 0)

    def value(self, key: str):
        """A metric from metrics.json, or for an unfinished job what its log reached."""
        if key in self.summary:
            return self.summary[key]
        logged = {"val_loss": "val/loss", "train_loss": "train/loss", "wall_s": "perf/wall_s"}.get(key)
        values = [row[logged] for row in self.curve if row.get(logged) is not None] if logged else []
        if key == "best_val_loss":
            values = [row["val/loss"] for row in self.curve if row.get("val/loss") is not None]
            return min(values) if values else None
        return values[-1] if values else None


def parse_overrides(lines: list[str]) -> dict[str, str]:
    parsed = {}
    for line in lines:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if key not in NOT_SWEPT and not key.startswith("hydra."):
            parsed[key] = value
    return parsed


def read_job(path: Path) -> JobRecord:
    overrides = parse_overrides(yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or [])
    summary_file, curve_file = path / "metrics.json", path / "metrics.jsonl"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    curve = []
    if curve_file.exists():
        for line in curve_file.read_text().splitlines():
            try:
                curve.append(json.loads(line))
            except json.JSONDecodeError:  # a job killed mid-write leaves a torn last line
                break
    return JobRecord(path.name, path, overrides, summary.get("status", "incomplete"), summary, curve)


def find_jobs(sweep_dir: Path) -> list[JobRecord]:
    """Every job under sweep_dir (a job is a directory holding .hydra/overrides.yaml), in launch order."""
    paths = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")), key=job_order)
    return [read_job(p) for p in paths]


def job_order(path: Path) -> tuple:
    hydra_cfg = path / ".hydra" / "hydra.yaml"
    try:
        num = yaml.safe_load(hydra_cfg.read_text())["hydra"]["job"]["num"]
    except Exception:  # an older or partial job: order by name after the numbered ones
        num = math.inf
    return (num, path.name)


SWEEP_SYNTAX = (",", "range(", "choice(", "interval(", "glob(")


def declared_sweep(sweep_dir: Path) -> list[str] | None:
    """The keys the sweep was asked to vary: command-line sweeps and hydra.sweeper.params (experiments)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    hydra_cfg = (yaml.safe_load(path.read_text()) or {}).get("hydra", {})
    keys = []
    for override in hydra_cfg.get("overrides", {}).get("task", []) or []:
        key, _, value = override.partition("=")
        if any(mark in value for mark in SWEEP_SYNTAX):
            keys.append(key.lstrip("+~"))
    keys += [k for k in (hydra_cfg.get("sweeper", {}).get("params") or {}) if k not in keys]
    return [k for k in keys if k not in NOT_SWEPT]


def swept_keys(jobs: list[JobRecord], sweep_dir: Path | None = None) -> list[str]:
    """The swept keys in the order given; without a multirun.yaml, the keys whose value differs between jobs."""
    declared = declared_sweep(sweep_dir) if sweep_dir is not None else None
    if declared is not None:
        return declared
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
