"""The commands a user types: run, multirun and generate, each in a subprocess."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    args = ["model.n_layers=2", "model.d_model=32", "model.context_length=32", "data.train_docs=400",
            "data.val_docs=40", "trainer.max_steps=10", "trainer.batch_size=8", "trainer.eval_every=5",
            "trainer.eval_batches=2", "trainer.progress=false", f"cache_dir={root / 'cache'}",
            f"hydra.run.dir={root / 'run'}"]
    result = run_cli("llmlab.run", args, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, result


@pytest.mark.slow
def test_run_prints_where_its_outputs_are(trained_run):
    root, result = trained_run
    assert f"outputs: {root / 'run'}" in result.stdout
    assert json.loads((root / "run" / "metrics.json").read_text())["status"] == "completed"
    assert (root / "run" / ".hydra" / "overrides.yaml").exists()


@pytest.mark.slow
def test_generate_continues_a_prompt_from_a_trained_run(trained_run):
    root, _ = trained_run
    args = [f"run={root / 'run'}", "prompt=Bako and", "max_new_tokens=20", "temperature=0", "num_samples=2"]
    result = run_cli("llmlab.generate", args, cwd=root)
    assert result.returncode == 0, result.stderr
    samples = result.stdout.split("--- sample ")[1:]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("Bako and") for s in samples)
    assert samples[0].split("\n", 1)[1] == samples[1].split("\n", 1)[1]  # greedy: identical


@pytest.mark.slow
def test_generate_on_a_directory_without_checkpoint_is_one_clear_line(tmp_path):
    (tmp_path / "empty_run").mkdir()
    result = run_cli("llmlab.generate", [f"run={tmp_path / 'empty_run'}"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "no complete checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_multirun_names_its_jobs_by_the_swept_keys_and_every_command_takes_them_unquoted(tmp_path):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 400)
    args = ["-m", "model.n_layers=1,2", "data=text", "data.paths=[corpus.txt]", "model.d_model=32",
            "model.context_length=32", "trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_every=4",
            "trainer.eval_batches=1", "trainer.progress=false", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = run_cli("llmlab.run", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name != ".hydra")
    assert jobs == ["model.n_layers=1", "model.n_layers=2"]  # the fixed overrides are the report's header
    for job in jobs:
        summary = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 4
    assert "`data.paths=[corpus.txt]`" in (tmp_path / "sweep" / "sweep_summary.md").read_text()
    job = tmp_path / "sweep" / jobs[1]
    generated = run_cli("llmlab.generate", [f"run={job}", "max_new_tokens=8", "checkpoint=best"], cwd=tmp_path,
                        timeout=120)
    assert generated.returncode == 0 and "sample 1" in generated.stdout, generated.stderr
    # a directory named with = and , (an older sweep's job) is taken as typed too, by a command and by a run
    older = tmp_path / "sweep" / "data.paths=[corpus.txt],model.n_layers=2"
    job.rename(older)
    generated = run_cli("llmlab.generate", [f"run={older}", "max_new_tokens=8"], cwd=tmp_path, timeout=120)
    assert generated.returncode == 0 and "sample 1" in generated.stdout, generated.stderr
    continued = run_cli("llmlab.run", [f"stage.init_from={older}", "stage=sft", "data=tasks", "data.train_tasks=50",
                                       "model.n_layers=2", "model.d_model=32", "model.context_length=32",
                                       "data.val_tasks=8", "data.eval_tasks=2", "trainer.max_steps=1",
                                       "trainer.batch_size=2", "trainer.eval_batches=1",
                                       "monitors=none", "trainer.progress=false", f"cache_dir={tmp_path / 'cache'}",
                                       f"hydra.run.dir={tmp_path / 'sft=1,x'}"], cwd=tmp_path, timeout=300)
    assert continued.returncode == 0, continued.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["llmlab.run", "llmlab.generate"])
def test_help_lists_the_options_a_user_picks_and_no_internal_schema(module, tmp_path):
    result = run_cli(module, ["--help"], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    assert "base_" not in groups
    data_options = ", ".join(sorted(path.stem for path in (REPO / "conf" / "data").glob("*.yaml")))
    assert f"\ndata: {data_options}\n" in groups and "prefs" in data_options
    assert "\nstage: dpo, grpo, pretrain, sft\n" in groups and "\ntokenizer: bpe, byte, char, unigram\n" in groups
    assert "\nexperiment/optimizers: " in groups and "hydra" not in groups
