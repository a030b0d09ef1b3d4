"""The CPU thread default: a thread per usable core with a passive OpenMP wait policy (set before torch loads),
else the usable cores less the machine's load, at least one; trainer.threads and OMP_NUM_THREADS decide where
given; the benchmark that measured it writes each variant beside one thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_config

import llmlab
from llmlab.train import threads
from llmlab.train.threads import default_threads, threads_for, usable_cores


def test_an_idle_machine_gets_every_core_and_a_busy_one_a_single_thread():
    assert threads_for(2, 0.1) == 2 and threads_for(16, 0.3) == 16
    assert threads_for(2, 0.6) == 1 and threads_for(2, 6.5) == 1  # the shared 2-core machine of the issue
    assert threads_for(16, 3.2) == 13 and threads_for(16, 40.0) == 1 and threads_for(1, 0.0) == 1


def test_usable_cores_are_this_processes_affinity_at_most():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_the_policy_is_set_before_torch_loads_and_kept_where_the_user_set_one(tmp_path):
    code = "import os, llmlab, torch; print(os.environ['OMP_WAIT_POLICY'], llmlab.OMP_PASSIVE)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE True"), ("ACTIVE", "ACTIVE False")):
        policy = {"OMP_WAIT_POLICY": given} if given else {}
        done = subprocess.run([sys.executable, "-c", code], env={**env, **policy}, capture_output=True, text=True,
                              cwd=REPO)
        assert done.stdout.split() == expected.split(), done.stderr
    torch_first = "import os, torch, llmlab; print('OMP_WAIT_POLICY' in os.environ, llmlab.OMP_PASSIVE)"
    done = subprocess.run([sys.executable, "-c", torch_first], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.stdout.split() == ["False", "False"], done.stderr  # too late to matter: left unset


def test_the_default_is_every_usable_core_when_threads_wait_passively_else_the_idle_ones(monkeypatch):
    cores = usable_cores()
    described = f"{cores} usable core{'s' * (cores != 1)}"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(llmlab, "OMP_PASSIVE", True)
    assert default_threads() == (cores, f"{described}, OpenMP threads wait passively")
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(llmlab, "OMP_PASSIVE", False)
    assert default_threads() == (1, f"{described}, load average 50.0, OpenMP threads may spin")
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads()[0] == 1  # once per process: a sweep's later jobs keep the first decision
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() is None


def test_a_run_without_trainer_threads_uses_the_default_and_says_so(tmp_path, monkeypatch, capsys):
    from llmlab.runner import Run

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", (1, "2 usable cores, load average 6.0"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cfg = run_config(tmp_path, ["trainer.max_steps=1"])
    cfg.trainer.threads = None
    try:
        run = Run(cfg)
        run.setup()
        run.close()
        assert torch.get_num_threads() == 1
        assert "cpu threads: 1 (2 usable cores, load average 6.0; trainer.threads=<n> to choose)" in \
            capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_the_benchmark_writes_each_variant_beside_one_thread(tmp_path):
    from llmlab.bench.__main__ import main

    out = tmp_path / "threads.json"
    main(["threads", "--steps", "2", "--repeats", "1", "--warmup", "0", "--variants", "one", "llmlab_default",
          "fallback", "--out", str(out), "+debug=fast", "data.train_docs=400", "data.val_docs=40", "monitors=none"])
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"one", "llmlab_default", "fallback"}
    assert result["summary"]["one"]["wall_vs_one_thread"] == 1.0
    assert all(s["wall_s"] > 0 and s["wall_vs_one_thread"] > 0 for s in result["summary"].values())
    chosen = {r["variant"]: r["llmlab_chose"] for r in result["runs"]}
    assert chosen["llmlab_default"].endswith("OpenMP threads wait passively; trainer.threads=<n> to choose)")
    assert "load average" in chosen["fallback"]  # torch was imported first: the policy could not be set
    assert [r["llmlab_chose"] for r in result["runs"] if r["variant"] == "one"] == [None]
