"""Extremes of legal-looking input, signals in the final scoring and in `prepare`, a full disk while preparing data,
many shards under a low limit of open files: each fed through the real command line, each one line or handled."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, REPO, run_cli
from test_faults import driver
from test_trust import SHORT, one_line_error


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed run's directory."""
    root = tmp_path_factory.mktemp("finished")
    result = run_cli("llmlab.run", [*SHORT, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"], root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


# ---- numbers at the edge: one line, or what they mean -------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_temperature_samples_as_greedy_instead_of_a_torch_error(finished, tmp_path):
    args = [f"run={finished}", "prompt=a", "max_new_tokens=12", "device=cpu"]
    greedy = run_cli("llmlab.generate", [*args, "temperature=0"], tmp_path)
    tiny = run_cli("llmlab.generate", [*args, "temperature=1e-50"], tmp_path)  # 0 in fp32: logits / it were inf
    assert tiny.returncode == 0, tiny.stderr[-2000:]
    assert tiny.stdout == greedy.stdout and "--- sample 1" in tiny.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", ["llmlab.run", "llmlab.generate"])
def test_a_seed_beyond_64_bits_is_one_line(finished, tmp_path, module):
    args = [*SHORT, f"cache_dir={tmp_path}"] if module == "llmlab.run" else [f"run={finished}", "max_new_tokens=4"]
    result = run_cli(module, [*args, f"seed={2**70}"], tmp_path)
    one_line_error(result, f"seed must be an integer in [0, 4294967295], got {2**70}")


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["trainer.threads=-1"], "trainer.threads must be >= 1 (null = one per usable core), got -1"),
    (["trainer.threads=0"], "trainer.threads must be >= 1"),
    (["data=mix", "data.sources=[{path: a.txt, weight: 1e308}, {path: b.txt, weight: 1e308}]"],
     "data.sources[].weight: the weights sum to inf; give relative weights whose sum is a finite number"),
])
def test_threads_below_one_and_weights_that_sum_to_inf_are_one_line(tmp_path, args, expected):
    short = [a for a in SHORT if not a.startswith("data.")] if "data=mix" in args else SHORT
    one_line_error(run_cli("llmlab.run", [*short, f"cache_dir={tmp_path}", *args], tmp_path), expected)


@pytest.mark.slow
def test_a_multirun_with_a_failing_job_ends_in_one_line_not_a_traceback(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
            "monitors=none", "trainer.lr=0.003,1e30", "trainer.on_nonfinite=stop", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}"]
    result = run_cli("llmlab.run", args, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "JobFailed" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith("error: a job of the multirun failed (run failed: non-finite loss")
    assert last.endswith(f"the sweep report lists every job: {sweep / 'sweep_summary.md'}")
    assert "| failed |" in (sweep / "sweep_summary.md").read_text()


# ---- bounded: open files -------------------------------------------------------------------------------------
def write_docs(path: Path, n: int) -> Path:
    words = "the cat sat on a mat and then ran far away from home to see the big sea".split()
    path.write_text("".join(json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(24))}) + "\n"
                            for i in range(n)))
    return path


def run_with_open_files(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`python -m llmlab.run ARGS` under `ulimit -n limit`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "llmlab.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))


@pytest.mark.slow
def test_more_shards_than_open_files_allowed_train(tmp_path):
    # 240 shards under a limit of 128 descriptors: one memory map (one descriptor) per shard failed with EMFILE
    docs = write_docs(tmp_path / "docs.jsonl", 240)
    args = [*(a for a in SHORT if not a.startswith("data.")), "trainer.max_steps=2", "data=hf", f"data.path={docs}",
            "data.shard_docs=1", "data.num_proc=1", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_with_open_files(args, tmp_path, 128)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "cache/shards").glob("*/train-*.train.bin"))) == 240
    summary = json.loads((tmp_path / "run/metrics.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2


# ---- signals ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_signal_during_the_final_scoring_stops_within_a_batch_and_the_next_start_scores(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SHORT, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    result = driver("sigterm_split", 0, args, tmp_path)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "split batches after the signal: 0" in result.stderr  # of 100 times the split
    assert "SIGTERM while scoring the whole validation split after step 8" in result.stdout
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and "val_loss_full" not in summary
    assert not (run_dir / "val_windows.json").exists()
    rows = (run_dir / "metrics.jsonl").read_text()

    again = run_cli("llmlab.run", args, tmp_path)  # the same command: nothing to train, the split to score
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["val_loss_full"] > 0
    assert json.loads((run_dir / "val_windows.json").read_text())["checkpoint"] == "step_8"
    assert (run_dir / "metrics.jsonl").read_text() == rows  # no step trained or logged twice
    assert summary["train_loss"] == [json.loads(r) for r in rows.splitlines()][-1]["train/loss"]


def prepare_args(docs: Path, cache: Path, shard_docs: int, num_proc: int) -> list[str]:
    return ["+debug=fast", "data=hf", f"data.path={docs}", f"data.shard_docs={shard_docs}", f"data.num_proc={num_proc}",
            f"cache_dir={cache}"]


def temporaries(cache: Path) -> list[Path]:
    return [p for p in (cache / "shards").rglob(".*") if ".tmp" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("name,to_group", [("SIGINT", True), ("SIGTERM", False)])
def test_prepare_stopped_by_a_signal_says_one_line_removes_its_temporaries_and_resumes(tmp_path, name, to_group):
    # Ctrl-C reaches the whole process group (the tokenizing processes too); a scheduler's SIGTERM the command
    docs = write_docs(tmp_path / "docs.jsonl", 6000)
    args = prepare_args(docs, tmp_path / "cache", 150, 2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab.prepare", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen = ""
    while "parts written" not in seen and proc.poll() is None:  # some parts written, others being written
        seen += proc.stderr.readline()
    sig = getattr(signal, name)
    os.killpg(proc.pid, sig) if to_group else proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "leaked" not in err and "BrokenPipeError" not in err, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: stopped by {name}; every part written so far is kept, none half-written: run the same command "
        "again to continue"]
    assert temporaries(tmp_path / "cache") == []
    [shards] = [d for d in (tmp_path / "cache/shards").iterdir() if not d.name.startswith("tokenizer")]
    kept = len(list(shards.glob("train-*.json")))
    assert 0 < kept < 40 and not (shards / "manifest.json").exists()

    again = run_cli("llmlab.prepare", args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{40 - kept} of 40 parts to write ({kept} already written)" in again.stderr
    assert (shards / "manifest.json").exists() and temporaries(tmp_path / "cache") == []


@pytest.mark.slow
def test_a_disk_that_fills_while_preparing_is_one_line_naming_the_shards_and_resumes(tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", 400)
    args = prepare_args(docs, tmp_path / "cache", 50, 1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    full = subprocess.run([sys.executable, str(REPO / "tests/full_disk_driver.py"), "shards", "llmlab.prepare", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    line = one_line_error(full, "No space left on device; free some space and run the same command again to "
                                "continue (every part written so far is kept, none half-written)", code=1)
    [shards] = [d for d in (tmp_path / "cache/shards").iterdir() if not d.name.startswith("tokenizer")]
    assert line.startswith(f"error: {shards}: ")  # the directory being written, not the input file
    assert temporaries(tmp_path / "cache") == [] and len(list(shards.glob("train-*.json"))) == 2
    again = run_cli("llmlab.prepare", args, tmp_path)
    assert again.returncode == 0 and "(2 already written)" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["llmlab.prepare", "llmlab.run"])
def test_a_full_cache_dir_while_datasets_converts_the_file_blames_the_disk(tmp_path, module):
    docs = write_docs(tmp_path / "docs.jsonl", 50)
    args = [*prepare_args(docs, tmp_path / "cache", 50, 1), *(["trainer.threads=1", f"hydra.run.dir={tmp_path / 'run'}"]
                                                               if module == "llmlab.run" else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, str(REPO / "tests/full_disk_driver.py"), "datasets", module, *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    line = one_line_error(result, f"{tmp_path / 'cache' / 'datasets'}: No space left on device; free some space", 1)
    assert "docs.jsonl" not in line and "checkpoint" not in line


# ---- bounded: chat data ----------------------------------------------------------------------------------------
def write_chat(path: Path, mb: float) -> Path:
    """Short conversations (they fit the fast preset's context) until the file holds mb x 10^6 bytes."""
    words = "the cat sat on a mat and then ran far away from home to see the big sea".split()
    lines, size, i = [], 0, 0
    while size < mb * 1e6:
        turns = [{"role": role, "content": f"{words[(i * 3 + k) % len(words)]} {words[(i * 5 + k) % len(words)]}"}
                 for k, role in enumerate(("user", "assistant"))]
        lines.append(json.dumps({"conversations": turns}) + "\n")
        size, i = size + len(lines[-1]), i + 1
    path.write_text("".join(lines))
    return path


def peak_memory_mb(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """`python -m llmlab.run ARGS` and its own peak resident memory (the kernel's figure for that process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    with (cwd / "out.txt").open("w+") as out, (cwd / "err.txt").open("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llmlab.run", *args], cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return usage.ru_maxrss / 1024, subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


@pytest.mark.slow
def test_chat_data_is_streamed_so_memory_stays_flat_in_the_file_size(finished, tmp_path):
    # read whole into Python objects, 7 MB more of these short conversations took 40 MB more memory
    peaks = {}
    for mb in (1, 8):
        chat = write_chat(tmp_path / f"chat_{mb}.jsonl", mb)
        args = [*(a for a in SHORT if not a.startswith("data.")), "trainer.max_steps=2", "stage=sft", "data=chat",
                f"data.paths=[{chat}]", f"stage.init_from={finished}", f"cache_dir={tmp_path / 'cache'}",
                f"hydra.run.dir={tmp_path / f'run_{mb}'}"]
        peaks[mb], result = peak_memory_mb(args, tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        stats = json.loads((tmp_path / f"run_{mb}/dataset_stats.json").read_text())
        records = len(chat.read_text().splitlines())
        assert stats["train_samples"] + stats["val_samples"] == records
        assert stats["val_samples"] == round(records * 0.05)
    assert peaks[8] - peaks[1] < 20, peaks  # MB; measured: 5 now, 40 when the records were held as Python objects


@pytest.mark.parametrize("kind", ["chat", "prefs"])
def test_the_store_gives_the_items_that_lists_of_records_gave(tmp_path, kind):
    from llmlab.config.schema import ChatDataConfig
    from llmlab.data.chat import load_conversations, load_preferences
    from llmlab.data.chat_batches import ChatBatches, fixed_batches
    from llmlab.data.chat_template import ChatTemplate
    from llmlab.data.post_training import encode_files, encode_items
    from llmlab.data.tokenizers import CharTokenizer

    path = tmp_path / "data.jsonl"
    rows = []
    for i in range(60):  # some long enough to be cut at 24 tokens, some whose reply is then cut away entirely
        prompt, reply = "ab " * (1 + i % 9), "cd" * (1 + i % 5)
        rows.append({"prompt": prompt, "chosen": reply, "rejected": reply[::-1] + "e"} if kind == "prefs" else
                    {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = ChatTemplate(CharTokenizer.train("abcde "))
    train, val, cut = encode_files(ChatDataConfig(kind=kind, paths=[str(path)], val_fraction=0.1), template, 24,
                                   tmp_path)
    records = (load_preferences if kind == "prefs" else load_conversations)([path])
    lists = [encode_items(template, part, 24) for part in (records[:-6], records[-6:])]
    assert cut == lists[0][1] + lists[1][1] > 0 and len(train) + len(val) < 60  # some cut, some dropped
    assert list(train[:]) == lists[0][0] and list(val[:]) == lists[1][0]
    assert [train[i] for i in range(len(train))] == lists[0][0]
    assert train.lengths.tolist() == [max(len(e.ids) for e in item) for item in lists[0][0]]
    order = [ChatBatches(items, 4, 0, seed=3)._epoch_order(1) for items in (train, lists[0][0])]
    assert order[0] == order[1]
    assert all(a.input_ids.equal(b.input_ids) and a.targets.equal(b.targets) for a, b in
               zip(fixed_batches(val, 2, 0, 3), fixed_batches(lists[1][0], 2, 0, 3), strict=True))
