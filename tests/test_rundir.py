"""The run directory has one owner (llmlab.rundir), and directories written before it existed still load.

The old layout here is spelled out with literal names, as the code before llmlab.rundir wrote it; the readers
(load_trained, the chat page's run record, the sweep report's job record, export) must find everything in it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_model

from llmlab.config.schema import ModelConfig
from llmlab.data.tokenizers import CharTokenizer
from llmlab.export import run_root
from llmlab.load import load_trained
from llmlab.model.transformer import Transformer
from llmlab.run_info import read_run_info
from llmlab.rundir import RunDir
from llmlab.rundir.summary import COSTS, METRICS, PPL_CAP, RunSummary, logged_key, perplexity
from llmlab.sweep.collect import JobRecord, read_job

REPO = Path(__file__).resolve().parents[1]


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def old_run(root: Path) -> Path:
    """A run directory as written before llmlab.rundir, every name literal; its checkpoint."""
    tokenizer = CharTokenizer.train("abcdefgh \n")
    tokenizer.save(root / "tokenizer")
    (root / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "tiny", "n_layers": 1}, "data": {"kind": "synthetic"}, "stage": {"name": "pretrain"},
         "trainer": {"max_steps": 4}, "seed": 0}))
    (root / ".hydra").mkdir()
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.n_layers=1"]))
    (root / "metrics.jsonl").write_text(json.dumps({"step": 4, "train/loss": 2.0, "val/loss": 2.1}) + "\n")
    (root / "metrics.json").write_text(json.dumps({"status": "completed", "message": None, "steps": 4,
                                                   "val_loss": 2.1, "val_ppl": 8.17, "train_loss": 2.0}))
    model_cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=16, vocab_size=tokenizer.vocab_size)
    checkpoint = root / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    save_model(Transformer(model_cfg), str(checkpoint / "model.safetensors"))
    files = {"model.safetensors": file_record(checkpoint / "model.safetensors")}
    tokenizer_files = {str(p.relative_to(root)): file_record(p) for p in sorted((root / "tokenizer").rglob("*"))
                       if p.is_file()}
    manifest = {"format": 1, "step": 4, "files": files, "tokenizer_files": tokenizer_files,
                "config_sha256": file_record(root / "config_resolved.yaml")["sha256"],
                "model": dataclasses.asdict(model_cfg), "stage": "pretrain", "chat": False}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    (root / "checkpoints" / "latest").write_text("step_4\n")
    return checkpoint


def test_a_run_directory_written_before_rundir_loads_with_every_reader(tmp_path):
    root = tmp_path / "old"
    checkpoint = old_run(root)
    model, tokenizer, chosen = load_trained(root)
    assert chosen == checkpoint and model.cfg.n_layers == 1 and tokenizer.decode(tokenizer.encode("abc")) == "abc"
    assert load_trained(root / "checkpoints")[2] == checkpoint
    info = read_run_info(checkpoint, json.loads((checkpoint / "manifest.json").read_text()))
    assert info.problems == [] and info.config["model"]["n_layers"] == 1 and info.summary["val_loss"] == 2.1
    assert info.command == "python -m llmlab.run model.n_layers=1"
    job = read_job(root)
    assert job.status == "completed" and job.overrides == {"model.n_layers": "1"} and job.curve[0]["step"] == 4
    for path in (root, root / "checkpoints", checkpoint):
        assert run_root(path) == root.resolve() == RunDir.containing(path).root


def test_rundir_names_the_files_the_old_layout_has():
    run = RunDir(Path("r"))
    named = {run.config: "config_resolved.yaml", run.summary: "metrics.json", run.metrics_log: "metrics.jsonl",
             run.tokenizer: "tokenizer", run.checkpoints: "checkpoints", run.samples: "samples.txt",
             run.val_windows: "val_windows.json", run.dataset_stats: "dataset_stats.json", run.tensorboard: "tb",
             run.alerts: "alerts.jsonl", run.monitor_history("attention"): "monitors/attention/history.jsonl",
             run.plot("grokking"): "plots/grokking.png", run.analysis: "analysis",
             run.evaluation("best"): "evaluation/best.json", run.generations: "generations.json",
             run.monitors_log: "monitors.jsonl",
             run.hydra_overrides: ".hydra/overrides.yaml", run.lock: ".lock"}
    for path, name in named.items():
        assert path == Path("r") / name
    assert RunDir.of_checkpoint(Path("r/checkpoints/step_4")).root == Path("r")


def test_the_run_directory_module_loads_without_torch():
    code = "import sys, llmlab.rundir; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


def test_a_metrics_json_written_before_runsummary_reads_and_writes_back_unchanged():
    written = json.loads((REPO / "docs/results/data/default_run_2026-12-07_metrics.json").read_text())
    summary = RunSummary.from_dict(written)
    assert summary.val_loss == written["val_loss"] and summary.extra == {}
    assert list(summary.to_dict().items()) == list(written.items())  # same keys, same order, same values
    newer = RunSummary.from_dict({"status": "completed", "a_newer_key": 1})
    assert newer.to_dict()["a_newer_key"] == 1 and "val_loss_full" not in newer.to_dict()


def test_the_summary_derives_perplexity_and_the_gap_in_one_place():
    summary = RunSummary.of_run("completed", "", 10, 100, 1.5, 1.4, {"entropy_floor": 1.0, "bigram_loss": 2.0},
                                float("inf"), wall_s=2.0)
    assert summary.val_ppl == perplexity(1.5) == math.exp(1.5) and summary.gap_closed == 0.5
    assert summary.best_val_loss is None and perplexity(1e9) == math.exp(PPL_CAP)


def test_every_final_metric_the_log_also_has_is_read_from_an_unfinished_jobs_log():
    job = JobRecord("j", Path("j"), {}, "incomplete", {}, [{"step": 1, "val/loss": 3.0, "perf/wall_s": 1.0},
                                                            {"step": 2, "val/loss": 2.0, "perf/wall_s": 2.0}])
    for metric in (*METRICS, *COSTS):
        if metric.logged in ("val/loss", "perf/wall_s"):
            assert job.value(metric.key) == 2.0
    assert job.value("best_val_loss") == 2.0 and logged_key("val_loss") == "val/loss"
