"""A sweep report survives what a sweep directory can hold: a torn, empty or foreign metrics.json, a job killed
mid-run, a job resumed by a rerun, a torn overrides.yaml; a finished job's row comes from its own metrics.json
alone, and building the report never changes a job's files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from llmlab.sweep.report import write_sweep_report
from tests.conftest import run_cli
from tests.test_sweep import SMALL

TASK = ["model.n_layers=1,2,3", "trainer.max_steps=6"]


def curve(steps=(3, 6), val=(3.5, 3.4), wall=(0.1, 0.2)) -> list[dict]:
    """metrics.jsonl rows as a real run logs them."""
    return [{"step": s, "train/loss": v + 0.1, "train/lr": 0.003, "perf/tokens_per_s": 2800.0, "perf/wall_s": w,
             "val/loss": v, "val/ppl": 33.0} for s, v, w in zip(steps, val, wall, strict=True)]


def summary(steps=6, val=3.4, status="completed", **extra) -> dict:
    """metrics.json as a real run writes it."""
    return {"status": status, "message": "", "steps": steps, "tokens_seen": 768, "params": 14656, "val_loss": val,
            "val_ppl": 29.96, "best_val_loss": val, "train_loss": 3.5, "entropy_floor": 0.33, "wall_s": 0.2,
            "total_s": 2.0, "tokens_per_s": 5000.0, "peak_mem_mb": 358.0, "skipped_steps": 0, **extra}


def make_job(sweep: Path, layers: int, metrics: dict | str | bytes | None, rows: list[dict] | None = None,
             torn_tail: str = "") -> Path:
    """A job directory laid out as a multirun writes it: .hydra/, metrics.jsonl, metrics.json (if given)."""
    job = sweep / f"model.n_layers={layers},trainer.max_steps=6"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra/overrides.yaml").write_text(yaml.safe_dump([f"model.n_layers={layers}", "trainer.max_steps=6",
                                                               "cache_dir=/tmp/cache"]))
    (job / ".hydra/hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": layers - 1}}}))
    if rows is not None:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn_tail)
    if isinstance(metrics, dict):
        (job / "metrics.json").write_text(json.dumps(metrics, indent=2))
    elif isinstance(metrics, str):
        (job / "metrics.json").write_text(metrics)
    elif isinstance(metrics, bytes):
        (job / "metrics.json").write_bytes(metrics)
    if rows is not None and metrics is not None:  # as a run leaves them: the log, then its summary
        t = os.stat(job / "metrics.jsonl").st_mtime
        os.utime(job / "metrics.json", (t + 0.5, t + 0.5))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A sweep with one finished job (n_layers=1); the tests add the others."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": TASK}}}))
    make_job(root, 1, summary(), curve())
    return root


def rows_of(sweep: Path, **kwargs) -> dict[str, dict]:
    report = write_sweep_report(sweep, plots=kwargs.pop("plots", False), generations=None)
    return {row["model.n_layers"]: row for row in report["jobs"]}


def snapshot(root: Path) -> dict[str, tuple]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("content", "reason"), [
    ("", "metrics.json is empty"),
    ("\n  \n", "metrics.json is empty"),
    ('{\n  "status": "completed",\n  "message": "",\n  "ste', "metrics.json is not valid JSON (Unterminated string"),
    ("[1, 2]", "metrics.json holds a JSON list, not an object"),
    ('"completed"', "metrics.json holds a JSON str, not an object"),
    ('{"val_loss": 3.4}', "metrics.json has no status"),
    (b"\xff\xfe\x00garbage", "metrics.json is not readable (UnicodeDecodeError)"),
])
def test_a_damaged_metrics_json_is_an_unreadable_row_with_the_reason(sweep, content, reason):
    make_job(sweep, 2, content, curve(val=(3.3, 3.2)))
    rows = rows_of(sweep, plots=True)  # the plots too must take the row
    assert rows["2"]["status"] == "unreadable" and rows["2"]["note"].startswith(reason)
    assert rows["2"]["val_loss"] == 3.2 and rows["2"]["steps"] == 6  # what its metrics.jsonl reached
    assert rows["1"]["status"] == "completed" and rows["1"]["val_loss"] == 3.4  # the others are untouched
    md = (sweep / "sweep_summary.md").read_text()
    assert "| 2 | unreadable |" in md and "- `unreadable`: its metrics.json" in md
    saved = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["status"] for r in saved] == ["completed", "unreadable"] and saved[1]["note"].startswith(reason)


def test_values_of_the_wrong_type_in_metrics_json_are_shown_as_missing(sweep):
    make_job(sweep, 2, summary(val="3.4", params=[1], steps="six", entropy_floor=None), curve())
    row = rows_of(sweep, plots=True)["2"]
    assert row["status"] == "completed"
    assert (row["val_loss"], row["val_ppl"], row["gap_to_floor"], row["params"], row["steps"]) == (None,) * 5


def test_a_job_killed_mid_run_is_an_incomplete_row_with_what_it_reached(sweep):
    make_job(sweep, 2, None, curve(), torn_tail='{"step": 9, "train/lo')  # killed mid-line
    make_job(sweep, 3, None)  # killed before its first log line: .hydra/ only
    rows = rows_of(sweep)
    assert rows["2"]["status"] == "incomplete" and rows["2"]["steps"] == 6 and rows["2"]["val_loss"] == 3.4
    assert rows["2"]["best_val_loss"] == 3.4 and rows["2"]["wall_s"] == 0.2
    assert rows["2"]["note"] == "no metrics.json yet: still running, or killed"
    assert rows["3"]["status"] == "incomplete" and rows["3"]["steps"] == 0 and rows["3"]["val_loss"] is None
    md = (sweep / "sweep_summary.md").read_text()
    assert "3 jobs, swept: model.n_layers; 1 completed." in md
    assert "- `incomplete`: no metrics.json yet, or one older than its metrics.jsonl" in md


def test_a_job_resumed_since_it_ended_is_incomplete_not_its_old_status(sweep):
    ended = summary(steps=3, val=3.5, status="interrupted", message="SIGTERM at step 3; checkpoint written")
    job = make_job(sweep, 2, ended, curve(steps=(3,), val=(3.5,), wall=(0.1,)))
    t = os.stat(job / "metrics.json").st_mtime
    os.utime(job / "metrics.jsonl", (t + 2, t + 2))  # the log's last lines, flushed as the run closed it
    assert rows_of(sweep)["2"]["status"] == "interrupted"
    assert rows_of(sweep)["2"]["note"] == "SIGTERM at step 3; checkpoint written"
    # the sweep command again: the job resumes and logs past where metrics.json says it ended, then is killed
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve(val=(3.5, 3.1))))
    ended = os.stat(job / "metrics.json").st_mtime
    os.utime(job / "metrics.jsonl", (ended + 60, ended + 60))
    row = rows_of(sweep)["2"]
    assert row["status"] == "incomplete" and row["steps"] == 6 and row["val_loss"] == 3.1
    assert row["note"] == "resumed after it ended interrupted at step 3: still running, or killed"


def test_a_finished_jobs_row_comes_from_its_metrics_json_alone(sweep):
    # a log that disagrees with the summary (rewritten, or from another attempt) does not leak into the row
    make_job(sweep, 2, {k: v for k, v in summary(val=3.4).items() if k not in ("best_val_loss", "wall_s")},
             curve(val=(1.0, 2.0), wall=(5.0, 9.0)))
    row = rows_of(sweep)["2"]
    assert (row["status"], row["val_loss"], row["steps"]) == ("completed", 3.4, 6)
    assert row["best_val_loss"] is None and row["wall_s"] is None  # not the log's 1.0 and 9.0


def test_building_the_report_changes_no_file_of_any_job(sweep):
    make_job(sweep, 2, "{torn", curve())
    make_job(sweep, 3, None, curve())
    jobs = {p: snapshot(p) for p in sweep.iterdir() if p.is_dir()}
    first = write_sweep_report(sweep, plots=True, generations=None)
    again = write_sweep_report(sweep, plots=True, generations=None)
    assert first["jobs"] == again["jobs"]
    assert {p: snapshot(p) for p in sweep.iterdir() if p.is_dir()} == jobs


def test_torn_overrides_and_a_torn_multirun_yaml_do_not_fail_the_report(sweep):
    job = make_job(sweep, 2, summary(val=3.2), curve())
    make_job(sweep, 3, summary(val=3.1), curve())
    (job / ".hydra/overrides.yaml").write_text("- model.n_layers=2\n- [unclosed")
    (sweep / "multirun.yaml").write_text("hydra: {overrides: [")
    report = write_sweep_report(sweep, plots=True, generations=None)
    rows = {row["dir"]: row for row in report["jobs"]}
    bad = rows[job.name]
    assert bad["status"] == "unreadable" and bad["note"] == ".hydra/overrides.yaml is not readable (ParserError)"
    assert bad["val_loss"] == 3.2 and bad["job"] == job.name  # its values, named by its directory
    assert report["swept"] == ["model.n_layers"]  # from the jobs' overrides when multirun.yaml is unreadable


@pytest.mark.slow
def test_the_sweep_command_reports_damaged_and_killed_jobs_and_exits_0(sweep):
    make_job(sweep, 2, "", curve())
    make_job(sweep, 3, None, curve(), torn_tail='{"st')
    result = run_cli("llmlab.sweep", [str(sweep), "--no-generations"], cwd=sweep.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["3 jobs (1 completed), swept: model.n_layers",
                                              "not completed: 1 unreadable, 1 incomplete"]
    assert [r["status"] for r in csv.DictReader((sweep / "sweep_summary.csv").open())] == \
        ["completed", "unreadable", "incomplete"]


@pytest.mark.slow
def test_a_real_sweep_run_again_keeps_its_finished_rows_and_files(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model.n_layers=1,2", *SMALL, f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    first = run_cli("llmlab.run", args, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    # what a job wrote itself (Hydra rewrites .hydra/ and the run lock on every launch, and run.log gains the
    # launch's console lines)
    def written(job: Path) -> dict:
        return {k: v[0] for k, v in snapshot(job).items() if not k.startswith(".hydra/") and k not in (".lock",
                                                                                                       "run.log")}

    kept = {p: written(p) for p in jobs}
    logs = {p: (p / "run.log").read_text() for p in jobs}
    run_cli("llmlab.run", args, cwd=tmp_path, timeout=600)  # the same command again, into the same sweep
    assert {p: written(p) for p in jobs} == kept
    assert all((p / "run.log").read_text().startswith(logs[p]) for p in jobs)  # appended to, never cut
    assert list(csv.DictReader((sweep / "sweep_summary.csv").open())) == rows

    # a job killed since (its metrics.json gone) and a torn generations cache: the rebuild still reports all
    (jobs[1] / "metrics.json").unlink()
    (jobs[0] / "generations.json").write_text('{"key": ')
    rebuilt = run_cli("llmlab.sweep", [str(sweep), "--no-plots"], cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    now = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["status"] for r in now] == ["completed", "incomplete"]
    assert now[0] == rows[0] and now[1]["steps"] == "6" and now[1]["val_loss"] == rows[1]["val_loss"]
    assert json.loads((jobs[0] / "generations.json").read_text())["completions"]
    assert len(list(csv.DictReader((sweep / "generation_comparison.csv").open()))) == 2 * 8  # 8 samples per job
