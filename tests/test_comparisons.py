"""Honest comparisons: the whole-split loss, paired bootstrap intervals, generation quality, the grammar checker,
checkpoints/best, job directory names and path arguments."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from safetensors.torch import load_file

from llmlab.config.argv import quote_overrides
from llmlab.config.errors import ConfigError
from llmlab.config.keys import is_free
from llmlab.config.schema import ModelConfig
from llmlab.data.grammar import GrammarChecker
from llmlab.data.synthetic import Language, sample_documents
from llmlab.load import load_trained
from llmlab.model.transformer import Transformer
from llmlab.sampling import Completion
from llmlab.store import job_dirname
from llmlab.sweep.collect import find_jobs, swept_keys
from llmlab.sweep.intervals import compare, describe
from llmlab.sweep.quality import distinct_n, quality, repeated_ngram_rate
from llmlab.sweep.report import find_reference
from llmlab.train import checkpoint as ckpt
from llmlab.train.split_eval import SplitLoss, read_windows, split_loss, write_windows


def tiny_model(vocab: int = 11, context: int = 8) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, n_layers=1, d_model=16, n_heads=2, context_length=context))


# ---- the whole-split loss --------------------------------------------------------------------------------------
def test_the_whole_split_loss_equals_scoring_every_token_one_window_at_a_time():
    model, seq_len = tiny_model(), 8
    rng = np.random.default_rng(0)
    streams = [rng.integers(0, 11, size=53), rng.integers(0, 11, size=20)]  # neither a multiple of the window
    result = split_loss(model, streams, seq_len, batch_size=3, device=torch.device("cpu"))
    sums, counts = [], []
    with torch.no_grad():
        for stream in streams:
            for start in range(0, len(stream) - 1, seq_len):
                block = torch.as_tensor(stream[start:start + seq_len + 1])
                logits = model(block[None, :-1])[0]
                sums.append(F.cross_entropy(logits, block[1:], reduction="sum").item())
                counts.append(len(block) - 1)
    assert result.counts.tolist() == counts and result.tokens == sum(len(s) - 1 for s in streams)
    np.testing.assert_allclose(result.sums, sums, rtol=1e-5)
    assert result.loss == pytest.approx(sum(sums) / sum(counts), rel=1e-6)
    assert model.training  # its mode is given back


def test_the_window_file_is_verified_against_the_checksum_its_run_recorded(tmp_path):
    result = SplitLoss(np.array([1.5, 2.0]), np.array([8, 4]), "abc")
    sha = write_windows(tmp_path, result, "step_4")
    found, why = read_windows(tmp_path, sha)
    assert why == "" and found.loss == pytest.approx(3.5 / 12)
    (tmp_path / "val_windows.json").write_text((tmp_path / "val_windows.json").read_text().replace("1.5", "0.5"))
    found, why = read_windows(tmp_path, sha)
    assert found is None and "checksum" in why


# ---- paired intervals ------------------------------------------------------------------------------------------
def synthetic_job(base: np.ndarray, offset: float, rng: np.random.Generator, noise: float = 0.05) -> SplitLoss:
    counts = np.full(len(base), 64)
    per_token = base + offset + rng.normal(0, noise, len(base))
    return SplitLoss(per_token * counts, counts, "same")


def test_the_paired_interval_covers_a_known_offset_in_about_95_percent_of_trials():
    rng, true, covered, trials = np.random.default_rng(1), 0.01, 0, 200
    for trial in range(trials):
        base = rng.gamma(4.0, 0.2, size=300)  # windows differ in difficulty far more than the jobs do
        a, b = synthetic_job(base, true, rng), synthetic_job(base, 0.0, rng)
        diff = compare([a], [b], seed=trial, replicates=500)
        covered += diff.low <= true <= diff.high
        assert diff.paired
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def test_pairing_sees_a_difference_that_window_difficulty_would_hide():
    rng = np.random.default_rng(2)
    base = rng.gamma(4.0, 0.2, size=300)
    a, b = synthetic_job(base, 0.01, rng, noise=0.005), synthetic_job(base, 0.0, rng, noise=0.005)
    paired = compare([a], [b])
    unpaired = compare([a], [SplitLoss(b.sums, b.counts, "other")])
    assert paired.verdict == "worse" and not unpaired.paired and unpaired.verdict == "indistinguishable"


def test_an_identical_pair_is_indistinguishable_and_said_so():
    rng = np.random.default_rng(3)
    job = synthetic_job(rng.gamma(4.0, 0.2, size=100), 0.0, rng)
    diff = compare([job], [job])
    assert diff.diff == 0.0 and diff.verdict == "indistinguishable"
    assert describe("model.n_layers=4", diff).startswith("model.n_layers=4: indistinguishable")


def test_seeds_widen_the_interval_by_their_own_spread():
    rng = np.random.default_rng(4)
    base = rng.gamma(4.0, 0.2, size=300)
    ref = [synthetic_job(base, 0.0, rng, noise=0.001) for _ in range(3)]
    close = [synthetic_job(base, offset, rng, noise=0.001) for offset in (-0.02, 0.005, 0.03)]  # seeds disagree
    one_seed = compare(close[1:2], ref[:1])
    assert one_seed.verdict == "worse"
    assert compare(close, ref).verdict == "indistinguishable"


def test_the_reference_is_named_by_a_value_or_by_key_value_pairs():
    settings = {"model.n_layers=2": {"model.n_layers": "2"}, "model.n_layers=4": {"model.n_layers": "4"}}
    labels = list(settings)
    assert find_reference(labels, settings, None) == "model.n_layers=2"
    assert find_reference(labels, settings, "4") == "model.n_layers=4"
    assert find_reference(labels, settings, "model.n_layers=4.0") == "model.n_layers=4"
    with pytest.raises(ConfigError, match=r"sweep.reference=8: no setting .* model.n_layers=2; model.n_layers=4"):
        find_reference(labels, settings, "8")


# ---- generation quality and the grammar ------------------------------------------------------------------------
def test_distinct_n_and_repetition_on_hand_made_texts():
    assert distinct_n(["a b c d"], 1) == 1.0
    assert distinct_n(["a a a a"], 1) == 0.25
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b", "a b"], 2) == 0.5  # across samples too
    assert repeated_ngram_rate(["a b c d a b c d"], 4) == pytest.approx(1 / 5)  # the 5th 4-gram repeats the 1st
    assert repeated_ngram_rate(["a b c d e f"], 4) == 0.0
    assert repeated_ngram_rate(["a b c"], 4) is None


def test_the_grammar_accepts_every_generated_document_and_rejects_corrupted_ones():
    checker = GrammarChecker()
    docs, _ = sample_documents(Language(), 3000, seed=7)
    assert all(checker.check(doc).valid for doc in docs)
    gift = next(d for d in docs if " gave the " in d)
    giver = re.search(r"(\w+) gave the", gift)[1]
    wrong_recipient = re.sub(r"to (\w+)\.", f"to {giver}.", gift, count=1)
    check = checker.check(wrong_recipient)
    assert not check.valid and check.accepted == check.sentences and check.names_copied == check.sentences - 1
    wrong_class = docs[0].replace(" went to the ", " went to the moon ", 1)
    assert not checker.check(wrong_class).introduced
    action = next(d for d in docs if " ate the " in d)
    assert not checker.check(re.sub(r"ate the (\w+) (\w+)\.", r"ate the \1 book.", action, count=1)).valid
    cut = docs[0][:-8]  # a sample cut off mid-sentence: its unfinished sentence is not judged
    assert checker.check(cut).sentences == docs[0].count(".") - 2


def test_the_grammar_checks_the_code_given_and_typed():
    checker = GrammarChecker()
    doc = sample_documents(Language(), 1, seed=3)[0][0]
    code = re.search(r"The code was #([0-9]+)\.", doc)[1]
    other = code[1] + code[0] + code[2:]  # two digits swapped: still a code of the language
    wrong_copy = doc.replace(f"typed #{code}", f"typed #{other}")
    check = checker.check(wrong_copy)  # well-formed, but not the code given
    assert not check.valid and check.accepted == check.sentences and check.names_copied == check.sentences - 1
    assert not checker.check(doc.replace(f"typed #{code}", f"typed #{code[:-1]}")).valid  # a digit short
    repeated = code[0] * 6
    assert not checker.check(doc.replace(f"#{code}", f"#{repeated}")).valid  # a digit twice: no code of the language
    sentences = doc.split(". ")
    not_typed = ". ".join(sentences[:3]) + "."
    assert checker.check(not_typed).accepted == 2 and not checker.check(not_typed).valid  # ended before typing it
    swapped = ". ".join([sentences[0], sentences[2], sentences[1], *sentences[3:]])  # given after a sentence
    assert checker.check(swapped).accepted == checker.check(swapped).sentences - 2
    plain = GrammarChecker(replace(Language(), code_digits=0))  # a language without a code knows none
    assert plain.check(sample_documents(plain.language, 1, seed=3)[0][0]).valid and not plain.check(doc).valid


def test_quality_on_samples_of_the_language():
    docs, _ = sample_documents(Language(), 20, seed=1)
    good = quality([Completion(d, len(d), True) for d in docs], GrammarChecker())
    assert good["grammatical"] == 1.0 and good["names_copied"] == 1.0 and good["valid_documents"] == 1.0
    garbled = quality([Completion("Bako and Bako went to the moon. Tilu ate the golden map.", 50, False)],
                      GrammarChecker())
    assert garbled["grammatical"] == 0.0 and garbled["valid_documents"] == 0.0 and garbled["ended"] == 0.0


# ---- checkpoints/best ------------------------------------------------------------------------------------------
def test_best_survives_rotation_and_every_command_can_choose_it(tmp_path):
    root = tmp_path / "checkpoints"
    model = tiny_model()
    best_weights = None
    for step in range(1, 6):
        with torch.no_grad():
            model.tok_emb.weight.add_(1.0)
        ckpt.save_checkpoint(root, step, model, {}, {"model": asdict(model.cfg)}, keep=1)
        if step == 2:
            ckpt.save_checkpoint(root, step, model, {}, {"model": asdict(model.cfg)}, name=ckpt.BEST)
            best_weights = model.tok_emb.weight.clone()
    assert [c.step for c in ckpt.list_checkpoints(root)] == [5]  # rotated; best is not a step_ checkpoint
    (tmp_path / "tokenizer").mkdir()
    path, manifest, _ = ckpt.select_checkpoint(tmp_path, "best")
    assert path == root / "best" and manifest["step"] == 2
    assert ckpt.select_checkpoint(tmp_path, "latest")[0] == root / "step_5"
    with pytest.raises(ConfigError, match=r"checkpoint=step_3: .* not a complete checkpoint \(this run has: "
                                          r"step_5, best\)"):
        ckpt.select_checkpoint(tmp_path, "step_3")
    with pytest.raises(ConfigError, match="expected latest, best or step_<N>"):
        ckpt.select_checkpoint(tmp_path, "newest")
    saved = load_file(str(root / "best" / "model.safetensors")).values()  # tied embeddings are stored once
    assert any(torch.equal(t, best_weights) for t in saved)
    (root / "best" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match="best/model.safetensors is truncated"):
        load_trained(tmp_path, checkpoint="best")


# ---- names and paths -------------------------------------------------------------------------------------------
def test_a_job_is_named_by_the_swept_keys_of_its_sweep(tmp_path):
    (tmp_path / "multirun.yaml").write_text(json.dumps({"hydra": {
        "overrides": {"task": ["data.paths=[a.txt]", "model.n_layers=1,2", "seed=1,2", "trainer.max_steps=9"]},
        "sweeper": {"params": {"+experiment/moe_vs_dense": "a,b"}}}}))
    overrides = ["data.paths=[a.txt]", "model.n_layers=2", "seed=1", "trainer.max_steps=9",
                 "+experiment/moe_vs_dense=a"]
    assert job_dirname(overrides, str(tmp_path)) == "model.n_layers=2,seed=1,experiment.moe_vs_dense=a"
    # without a multirun.yaml: what the job studies, nothing of where or how it ran
    assert job_dirname(["model.n_layers=2", "cache_dir=/x", "trainer.threads=1"]) == "model.n_layers=2"
    assert job_dirname([]) == "default"
    long = job_dirname(["data.paths=[corpus/one.txt,corpus/two.txt]"])
    assert re.fullmatch(r"data.paths=_corpus_one.txt_corpus_t~[0-9a-f]{8}", long), long
    assert job_dirname(["data.paths=[corpus/one.txt,corpus/two.txt]"]) != job_dirname(["data.paths=[corpus/one.txt]"])


def test_a_key_that_changes_nothing_studied_names_and_tells_jobs_apart_only_when_the_sweep_varies_it(tmp_path):
    (tmp_path / "multirun.yaml").write_text(json.dumps({"hydra": {
        "overrides": {"task": ["monitors=none,light", "trainer.threads=1", "model.n_layers=2"]}}}))
    names = {job_dirname([f"monitors={m}", "trainer.threads=1", "model.n_layers=2"], str(tmp_path))
             for m in ("none", "light")}
    assert names == {"monitors=none", "monitors=light"}  # two jobs, two directories
    for name, monitors in (("a", "none"), ("b", "light")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(json.dumps(
            [f"monitors={monitors}", "trainer.threads=1", "model.n_layers=2", "hydra.run.dir=x"]))
    jobs = find_jobs(tmp_path)
    assert [j.overrides for j in jobs] == [{"monitors": m, "model.n_layers": "2"} for m in ("none", "light")]
    assert swept_keys(jobs, tmp_path) == ["monitors"]
    assert [is_free(k) for k in ("trainer.threads", "monitors.attention.every", "hydra.run.dir", "trainer.lr")] \
        == [True, True, True, False]


def test_path_arguments_that_hydra_would_misread_are_quoted_and_others_left_alone():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg, value in (("run=out/model.n_layers=2,seed=1", "out/model.n_layers=2,seed=1"),
                       ("stage.init_from=/x/data.paths=[a.txt],n=1", "/x/data.paths=[a.txt],n=1"),
                       ("hydra.run.dir=/tmp/it's=1", "/tmp/it's=1")):
        assert parser.parse_override(quote_overrides([arg])[0]).value() == value
    untouched = ["run=outputs/a/b", "stage.init_from=a,b", "model.n_layers=2", "run='x=1'"]
    assert quote_overrides(untouched) == untouched


# ---- a run end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_scores_its_whole_split_and_evaluate_gives_the_same_figure_for_any_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.context_length=32",
            "data.train_docs=300", "data.val_docs=30", "trainer.max_steps=6", "trainer.batch_size=4",
            "trainer.eval_every=3", "trainer.eval_batches=1", "trainer.keep_checkpoints=1",
            "trainer.checkpoint_every=3", "trainer.progress=false", "monitors=none", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run}"]
    assert run_cli("llmlab.run", args, cwd=tmp_path).returncode == 0
    summary = json.loads((run / "metrics.json").read_text())
    windows, why = read_windows(run, summary["val_windows_sha256"])
    assert why == "" and windows.loss == pytest.approx(summary["val_loss_full"], rel=1e-7)  # sums kept to 1e-6
    assert summary["val_tokens_scored"] == windows.tokens and summary["train_flops"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest", "step_6"]
    evaluated = run_cli("llmlab.evaluate", [f"run={run}", "checkpoint=step_6", "data.eval_tasks=1", "device=cpu"],
                        cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(next((run / "evaluation").glob("step_6-*.json")).read_text())
    assert result["val_loss_full"] == pytest.approx(summary["val_loss_full"], rel=1e-5)
    assert result["val_tokens_scored"] == summary["val_tokens_scored"]


def fake_job(sweep, n_layers: int, offset: float) -> None:
    """A finished job as a multirun leaves it: overrides, metrics.json and its verified per-window losses."""
    job = sweep / f"model.n_layers={n_layers}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra/overrides.yaml").write_text(f"- model.n_layers={n_layers}\n")
    base = np.random.default_rng(0).gamma(4.0, 0.2, size=200)
    windows = SplitLoss((base + offset) * 64, np.full(200, 64), "same")
    sha = write_windows(job, windows, "step_10")
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "steps": 10, "val_loss": windows.loss,
                                                  "val_loss_full": windows.loss, "val_windows_sha256": sha}))


def test_the_report_compares_against_the_reference_asked_for_and_names_a_wrong_one(tmp_path, capsys):
    from llmlab.sweep.__main__ import main

    sweep = tmp_path / "sweep"
    for n, offset in ((2, 0.0), (4, 0.05), (6, 0.0)):
        fake_job(sweep, n, offset)
    assert main([str(sweep), "--no-plots", "--no-generations", "--reference", "4"]) == 0
    summary = json.loads((sweep / "sweep_summary.json").read_text())["summary"]
    assert summary.startswith("Against model.n_layers=4 (the reference)")
    assert "model.n_layers=2: better by 0.0500" in summary and "model.n_layers=6: better by 0.0500" in summary
    assert main([str(sweep), "--no-plots", "--no-generations", "--reference", "8"]) == 2
    err = capsys.readouterr().err
    assert "sweep.reference=8: no setting of this sweep matches it" in err and err.count("\n") == 1
