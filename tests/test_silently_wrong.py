"""Nothing silently wrong (issue 36): data that changed under a run, a validation split that is the training set,
options an import would drop, a model that is not what its config says. Each is fed through the real command line
and must end in one line (refused) or one warning line (legal, probably not meant)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST, run_cli
from test_own_text import prose
from test_trust import files_of, one_line_error

BASE = [*(a for a in FAST if not a.startswith("data.")), "monitors=none"]  # the fast run, any data
TEXT = [*BASE, "data=text", "trainer.max_steps=6", "trainer.checkpoint_every=3", "trainer.eval_every=3"]


# ---- 5. resume and evaluate on changed data -------------------------------------------------------------------
@pytest.fixture
def text_run(tmp_path) -> tuple[Path, Path, list[str]]:
    """A completed run on a corpus of its own: the corpus, the run directory and the command's arguments."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(prose(60_000), encoding="utf-8")
    args = [*TEXT, f"data.paths=[{corpus}]", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli("llmlab.run", args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return corpus, tmp_path / "run", args


@pytest.mark.slow
def test_a_resume_on_an_edited_corpus_is_one_line_and_allow_data_change_goes_on(text_run, tmp_path):
    corpus, run_dir, args = text_run
    stats = json.loads((run_dir / "dataset_stats.json").read_text())["data_fingerprint"]
    manifest = json.loads((run_dir / "checkpoints" / "step_3" / "manifest.json").read_text())
    windows = json.loads((run_dir / "val_windows.json").read_text())
    assert manifest["data"]["sha256"] == stats["sha256"] == windows["data"]["sha256"]
    assert [s["name"] for s in stats["sources"]] == [corpus.name] or len(stats["sources"]) == 1
    corpus.write_text(prose(60_000, seed=1), encoding="utf-8")  # edited while the run was away
    before = files_of(run_dir)
    resume = [*args, f"trainer.resume={run_dir / 'checkpoints' / 'step_3'}"]
    line = one_line_error(run_cli("llmlab.run", resume, tmp_path), "the data changed since checkpoint")
    assert "changed" in line and "trainer.allow_data_change=true" in line
    assert files_of(run_dir) == before
    done = run_cli("llmlab.run", [*resume, "trainer.allow_data_change=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    now = json.loads((run_dir / "dataset_stats.json").read_text())["data_fingerprint"]
    assert now["sha256"] != stats["sha256"]


@pytest.mark.slow
def test_evaluate_on_changed_data_is_one_line_and_keeps_one_result_per_checkpoint(text_run, tmp_path):
    corpus, run_dir, _ = text_run
    summary = json.loads((run_dir / "metrics.json").read_text())
    for checkpoint in ("best", "step_3"):  # 2. one result per checkpoint, the earlier one kept
        done = run_cli("llmlab.evaluate", [f"run={run_dir}", f"checkpoint={checkpoint}", "device=cpu"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    results = {p.name: json.loads(p.read_text()) for p in (run_dir / "evaluation").glob("*.json")}
    assert sorted(results) == ["best.json", "step_3.json"]
    assert results["best.json"]["val_loss_full"] == pytest.approx(summary["val_loss_full"], rel=1e-5)
    assert results["step_3.json"]["val_loss_full"] != results["best.json"]["val_loss_full"]
    corpus.write_text(prose(60_000, seed=1), encoding="utf-8")
    before = files_of(run_dir)
    one_line_error(run_cli("llmlab.evaluate", [f"run={run_dir}", "device=cpu"], tmp_path),
                   "the validation split is not the one this run scored")
    assert files_of(run_dir) == before
    done = run_cli("llmlab.evaluate", [f"run={run_dir}", "device=cpu", "allow_data_change=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    changed = json.loads(next((run_dir / "evaluation").glob("step_6-data-*.json")).read_text())
    assert "data_changed" in changed and changed["val_loss_full"] != summary["val_loss_full"]
    assert json.loads((run_dir / "evaluation" / "best.json").read_text()) == results["best.json"]  # kept


# ---- 9. a validation split that is the training split -------------------------------------------------------------
@pytest.mark.slow
def test_a_validation_split_that_is_the_training_split_is_one_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": prose(300, seed=i)}) + "\n" for i in range(50)))
    args = [*BASE, "data=hf", f"data.path={rows}", "data.val_split=train", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    one_line_error(run_cli("llmlab.run", args, tmp_path), "data.val_split=train is data.split: the run would "
                                                          "validate on the rows it trains on")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- 10. options an import would drop ---------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_on_an_imported_model_trains_adapters_and_merges(tmp_path):
    import yaml
    from test_hf_import import tiny_model

    from llmlab.data.tokenizers import ByteTokenizer
    from llmlab.interop.hf_tokenizer import save_hf_tokenizer

    qwen = tmp_path / "qwen2"
    tiny_model("qwen2").save_pretrained(qwen)
    save_hf_tokenizer(ByteTokenizer(), qwen)
    args = [*BASE, "stage=sft", "data=tasks", "data.train_tasks=40", "data.val_tasks=8", "data.eval_tasks=2",
            "model=hf", f"model.path={qwen}", "model.context_length=64", "model.lora.rank=4", "trainer.max_steps=2",
            "trainer.eval_every=2", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli("llmlab.run", args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LoRA rank 4 on" in done.stdout
    assert yaml.safe_load((tmp_path / "run" / "config_resolved.yaml").read_text())["model"]["lora"]["rank"] == 4
    merged = run_cli("llmlab.merge_lora", [f"run={tmp_path / 'run'}", f"out={tmp_path / 'merged'}"], tmp_path)
    assert merged.returncode == 0, merged.stderr[-2000:]
    refused = run_cli("llmlab.run", [*args, "model.lora.rank=0", "model.moe.experts=4",
                                     f"hydra.run.dir={tmp_path / 'moe'}"], tmp_path)
    one_line_error(refused, f"model.moe.experts=4 cannot apply to model.path={qwen}: its config.json decides the "
                            "architecture (dense, moe.experts=0)")


# ---- 12. a model that is not what its config says; a finished schedule warmed again ------------------------------
@pytest.mark.slow
def test_moe_every_beyond_the_last_block_is_one_line(tmp_path):
    args = [*FAST, "monitors=none", "model.n_layers=2", "model.moe.experts=4", "model.moe.every=3",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    one_line_error(run_cli("llmlab.run", args, tmp_path), "model.moe.every=3 > model.n_layers=2: no block would be "
                                                          "a mixture of experts")


@pytest.mark.slow
def test_extending_a_finished_wsd_run_warns_that_its_learning_rate_climbs_again(tmp_path):
    args = [*FAST, "monitors=none", "trainer.schedule=wsd", "trainer.max_steps=8", "trainer.checkpoint_every=4",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli("llmlab.run", args, tmp_path).returncode == 0
    done = run_cli("llmlab.run", [*args, "trainer.max_steps=16", "trainer.allow_config_change=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: trainer.max_steps=16")]
    assert len(warned) == 1 and "schedule of the run resumed at step 8" in warned[0], done.stderr[-2000:]
    assert "back towards the peak" in warned[0]


@pytest.mark.slow
def test_a_mixture_source_the_tokenizer_never_saw_is_one_warning_with_its_share(tmp_path):
    greek = "αβγδεζηθικλμνξοπρστυφχψω"
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": prose(300, seed=i)}) + "\n" for i in range(200)))
    rows = [prose(300, seed=1000)] + [" ".join(greek[i % 7:] + greek[:i % 7] for _ in range(12)) for i in range(199)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    args = [*BASE, "data=mix", "data.sources=[{path: a.jsonl, weight: 1.0}, {path: b.jsonl, weight: 0.01}]",
            "data.sample_chars=20000", "data.num_proc=1", "tokenizer=char", "trainer.max_steps=2",
            "trainer.eval_every=2", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli("llmlab.run", args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if "unknown token" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: b.jsonl: ") and "a.jsonl" not in warned[0]
    share = int(warned[0].split(": ")[2].split("%")[0])
    assert 80 <= share <= 100, warned[0]


@pytest.mark.slow
def test_a_model_card_from_a_torn_metrics_json_says_so_and_warns(text_run, tmp_path):
    _, run_dir, _ = text_run
    text = (run_dir / "metrics.json").read_text()
    (run_dir / "metrics.json").write_text(text[: len(text) // 2])  # torn mid-write by something else
    done = run_cli("llmlab.export", [f"run={run_dir}", f"out={tmp_path / 'exported'}", "card=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert warned == [line for line in warned if "metrics.json is not valid JSON" in line] and len(warned) == 1
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "Not available: the run's metrics.json is not valid JSON" in card and "None recorded" not in card


# ---- 11. monitors in a plain training loop ------------------------------------------------------------------------
UNGUARDED = """
import torch
from llmlab.config.schema import ModelConfig
from llmlab.model.transformer import Transformer
from llmlab.monitors import AttentionMonitor, DistributionMonitor

torch.manual_seed(0)
model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=16, vocab_size=50))
{mode}
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
print("training", flush=True)
attention = AttentionMonitor(save_dir="{out}/attn", every=2, images=True)
with attention as attn, DistributionMonitor(save_dir="{out}/dist", every=2, plots=False) as dist:
    for step in range(5):
        ids = torch.randint(0, 50, (2, 16))
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten())
        loss.backward()
        dist.after_backward(model, step)
        optimizer.step()
        optimizer.zero_grad()
        attn.log(model, ids, step, loss=loss.item())
        dist.log(model, ids, step, loss=loss.item())
        print("step", step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["model.train()", "model.eval()"])
def test_monitors_in_a_script_without_a_main_guard_draw_their_figures_or_say_why(tmp_path, mode):
    import os
    import subprocess
    import sys

    from conftest import REPO

    script = tmp_path / "train.py"
    script.write_text(UNGUARDED.format(out=tmp_path, mode=mode))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("step ") == 5  # the loop ran once: no figure process trained the script again
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "attn").glob("step_*")) == ["step_0", "step_2", "step_4"]
    assert list((tmp_path / "attn" / "step_4").glob("*.png")), "the attention maps were drawn"
    assert not (tmp_path / "attn" / "alerts.jsonl").exists() or "monitor_error" not in \
        (tmp_path / "attn" / "alerts.jsonl").read_text()
    record = json.loads((tmp_path / "dist" / "step_2" / "layer_statistics.json").read_text())
    if mode == "model.eval()":  # said in one line, at the first capture
        said = [line for line in done.stderr.splitlines() if "no training-mode forward ran" in line]
        assert len(said) == 1 and "model.train()" in said[0] and not record["activations"]
    else:
        assert record["activations"] and "no training-mode forward" not in done.stderr
