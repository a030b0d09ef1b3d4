"""What a run tells while and after it trains: metrics.jsonl row by row, a closing summary, queued monitor jobs."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from conftest import run_config

from llmlab.monitors.base import AlertLog, MonitorContext, MonitorSet
from llmlab.monitors.worker import BackgroundWorker
from llmlab.runner import Run
from llmlab.sinks import JsonlSink
from llmlab.train import trainer as trainer_module
from llmlab.train.summary import run_report


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_a_logged_row_is_in_metrics_jsonl_before_any_flush(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log_scalars(1, {"train/loss": 2.5})
    sink.log_scalars(2, {"train/loss": 2.25, "val/loss": float("nan")})
    assert [json.loads(line) for line in lines(tmp_path / "metrics.jsonl")] == [
        {"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.25, "val/loss": None}]
    sink.close()


@pytest.mark.slow
def test_a_run_without_a_bar_has_every_row_on_disk_as_it_trains(tmp_path, monkeypatch):
    cfg = run_config(tmp_path, ["trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=3",
                                "trainer.checkpoint_every=100", "monitors=none", "trainer.threads=1"])
    seen = []  # lines in metrics.jsonl after each step, before any checkpoint flushed the sinks
    original = trainer_module.Trainer.after_step

    def after_step(self, info, stop):
        out = original(self, info, stop)
        seen.append(len(lines(tmp_path / "run" / "metrics.jsonl")))
        return out

    monkeypatch.setattr(trainer_module.Trainer, "after_step", after_step)
    run = Run(cfg)
    assert run.execute().status == "completed"
    assert seen[:5] == [1, 2, 3, 4, 5]  # step 6 checkpoints, which flushed anyway
    text = run_report(run.summary, tmp_path / "run", chat=False)
    assert f"val loss {run.summary['val_loss']:.4f}" in text
    assert f"whole validation split {run.summary['val_loss_full']:.4f}" in text
    assert "training_curves.png" in text and str(tmp_path / "run" / "tb") in text


def test_the_closing_summary_says_how_it_went_and_what_to_run_next(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "training_curves.png").write_bytes(b"")
    summary = {"steps": 2000, "wall_s": 118.04, "total_s": 131.5, "tokens_per_s": 25310.2, "val_loss": 1.2345,
               "val_bpb": 1.7811, "val_loss_full": 1.2401, "val_tokens_scored": 51200, "val_bpb_full": 1.789,
               "bigram_loss": 1.8, "unigram_loss": 2.9, "entropy_floor": 1.1, "gap_closed": 0.8214}
    text = run_report(summary, tmp_path, chat=False)
    assert text.splitlines()[0] == ("finished: 2000 steps in 118.0 s of training (25310 tokens/s; 131.5 s in all)")
    assert ("val loss 1.2345 (1.7811 bits/byte); whole validation split 1.2401 over 51,200 tokens "
            "(1.7890 bits/byte)") in text
    assert "baselines: bigram 1.8000, unigram 2.9000, entropy floor 1.1000; 82.1% of the bigram-to-floor gap" in text
    assert f"plots: {tmp_path / 'plots'}/ (training_curves.png)" in text
    for command in (f"python -m llmlab.generate run={tmp_path} prompt=The", f"python -m llmlab.chat run={tmp_path}",
                    f"tensorboard --logdir {tmp_path}"):
        assert command in text
    # a stage without baselines (DPO) says nothing of them; a directory with a space is quoted for the shell
    spaced = tmp_path / "a run"
    text = run_report({"steps": 4, "wall_s": 1.0, "total_s": 2.0, "tokens_per_s": 10.0, "val_loss": 0.69},
                      spaced, chat=True)
    assert "baselines" not in text and "bits/byte" not in text
    assert f"python -m llmlab.chat run='{spaced}'" in text


def test_jobs_queued_when_training_ends_are_announced_and_drained(tmp_path, capsys):
    release = threading.Event()
    worker = BackgroundWorker(max_workers=1, max_pending=16)
    done = []
    for i in range(5):
        worker.submit("test", lambda i=i: (release.wait(5), time.sleep(0.01), done.append(i)))
    ctx = MonitorContext(model=torch.nn.Linear(1, 1), out_dir=tmp_path / "monitors", sinks=None, worker=worker,
                         alerts=AlertLog(tmp_path / "alerts.jsonl"))
    threading.Timer(0.2, release.set).start()
    MonitorSet([], ctx).close(progress=True)
    assert done == [0, 1, 2, 3, 4]
    captured = capsys.readouterr()
    assert "monitors: writing 5 queued jobs" in captured.out and str(tmp_path / "monitors") in captured.out
    assert "5/5" in captured.err  # the bar counted them down
