"""The circuits monitor: scores on hand-built attention patterns equal their definitions, the copy probe points at
the names the generator copies, the logit lens of the last layer is the model's own loss, a transformers Llama
gives the scores of the same weights in llmlab, and a run writes, plots and announces what formed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llmlab.config.schema import ModelConfig, SyntheticDataConfig, TokenizerConfig
from llmlab.data.copy_probe import CopyEvent, CopyProbe, copy_probe
from llmlab.data.sources import annotated_validation
from llmlab.data.synthetic import Language, sample_annotated_documents, sample_documents
from llmlab.data.tokenizers import CharTokenizer, train_tokenizer
from llmlab.interop.hf import to_hf
from llmlab.model.transformer import Transformer
from llmlab.monitors.circuits import (
    CircuitsMonitor,
    copy_accuracy,
    copy_scores,
    copy_weights,
    forward_with_residuals,
    icl_loss_drop,
    induction_rows,
    induction_scores,
    logit_lens,
    prev_token_scores,
)
from llmlab.monitors.models import view_of
from llmlab.runner import Run


def pattern(T: int, key_of) -> torch.Tensor:
    """(1, 1, T, T) attention where query i attends only to key_of(i)."""
    probs = torch.zeros(1, 1, T, T)
    for i in range(T):
        probs[0, 0, i, key_of(i)] = 1.0
    return probs


def test_a_previous_token_pattern_scores_one_and_no_induction():
    probs = pattern(16, lambda i: max(i - 1, 0))
    assert prev_token_scores(probs).item() == 1.0
    assert induction_scores(probs, length=8).item() == 0.0


def test_an_exact_induction_pattern_scores_one():
    L = 8
    probs = pattern(2 * L, lambda i: i - L + 1 if i >= L else i)
    assert induction_scores(probs, length=L).item() == 1.0
    assert prev_token_scores(probs).item() == 0.0  # i - L + 1 is never i - 1 for L > 2
    uniform = torch.ones(16, 16).tril() / torch.arange(1, 17)[:, None]
    expected = torch.tensor([1 / (i + 1) for i in range(L, 2 * L)]).mean()
    assert torch.isclose(induction_scores(uniform[None, None], length=L), expected)


def test_induction_rows_repeat_their_tokens_and_are_seeded():
    rows, L = induction_rows(vocab_size=50, rows=3, tokens=11, seed=0)
    assert rows.shape == (3, 11) and L == 5
    assert torch.equal(rows[:, :5], rows[:, 5:10])
    assert torch.equal(rows, induction_rows(50, 3, 11, 0)[0]) and not torch.equal(rows, induction_rows(50, 3, 11, 1)[0])


def hand_probe() -> CopyProbe:
    # row 0: tokens 2-3 are a name introduced at 0-1; row 1: tokens 6-7 copy 1-2
    ids = torch.tensor([[5, 6, 9, 5, 6, 9, 9, 9], [9, 7, 8, 9, 9, 9, 7, 8]])
    return CopyProbe(ids, [CopyEvent(0, 3, 5, 0, 2), CopyEvent(1, 6, 8, 1, 3)])


def test_copy_score_is_the_attention_mass_on_the_introduction():
    probe = hand_probe()
    mass, predicting = copy_weights(probe, 8, torch.device("cpu"))
    probs = torch.zeros(2, 2, 8, 8)
    probs[..., 0] = 1.0  # head 1: everything on the first token
    probs[0, 0, 2] = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0])  # head 0: the whole name, from before each copy
    probs[1, 0, 5] = torch.tensor([0, 0.25, 0.25, 0, 0.5, 0, 0, 0])  # half on the name, half elsewhere
    assert torch.allclose(copy_scores(probs, mass), torch.tensor([0.75, 0.5]))


def test_a_model_that_copies_by_hand_has_copy_accuracy_one():
    probe = hand_probe()
    _, predicting = copy_weights(probe, 8, torch.device("cpu"))
    perfect = F.one_hot(torch.roll(probe.ids, -1, dims=1), 10).float()  # position i predicts token i + 1
    assert copy_accuracy(perfect, probe.ids, predicting).item() == 1.0
    wrong = perfect.clone()
    wrong[1, 6] = F.one_hot(torch.tensor(1), 10).float()  # the second name's last token is mispredicted
    assert copy_accuracy(wrong, probe.ids, predicting).item() == 0.5
    wrong_elsewhere = perfect.clone()
    wrong_elsewhere[0, 6] = F.one_hot(torch.tensor(1), 10).float()  # not a name: does not count
    assert copy_accuracy(wrong_elsewhere, probe.ids, predicting).item() == 1.0


def test_in_context_loss_drop_of_a_model_that_remembers_the_first_copy():
    rows, L = induction_rows(vocab_size=20, rows=2, tokens=16, seed=0)
    logits = torch.zeros(2, 16, 20)  # uniform on the first copy ...
    logits[:, L:] = 50 * F.one_hot(torch.roll(rows, -1, dims=1), 20)[:, L:].float()  # ... certain on the second
    assert abs(icl_loss_drop(logits, rows, L).item() - torch.log(torch.tensor(20.0)).item()) < 1e-4


def test_the_generator_returns_where_each_copied_name_came_from():
    docs, _ = sample_documents(Language(), 300, seed=7)
    annotated, _ = sample_annotated_documents(Language(), 300, seed=7)
    assert [text for text, _ in annotated] == docs  # the same text: the same floor
    determined = 0
    for text, copies in annotated:
        first, second = text.split(" went ")[0].split(" and ")
        for c in (c for c in copies if c.kind == "name"):  # the code typed: tests/test_synthetic.py
            assert text[c.start:c.end] == text[c.source_start:c.source_end] in (first, second)
            assert c.source_start in (0, len(first) + 5) and c.start > len(first) + len(second)
            if c.determined:  # the recipient: "... to <name>."
                assert text[c.start - 3:c.start] == "to " and text[c.end] == "."
                determined += 1
            else:  # a subject starts its sentence
                assert text[c.start - 2:c.start] == ". "
    assert determined > 100


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_copy_probe_points_at_the_code_typed_in_tokens(kind):
    data = SyntheticDataConfig(train_docs=200, val_docs=200)
    annotated = annotated_validation(data)
    text = "\n".join(t for t, _ in annotated)
    tokenizer = CharTokenizer.train(text) if kind == "char" else train_tokenizer(TokenizerConfig(kind="bpe",
                                                                                                vocab_size=400), text)
    probe = copy_probe(annotated, tokenizer, rows=16, tokens=128)
    assert probe.ids.shape == (16, 128) and len(probe.events) >= 10
    for e in probe.events:  # the code where it is typed
        row = probe.ids[e.row].tolist()
        code = tokenizer.decode(row[e.start:e.end]).strip(" #.")
        assert code == tokenizer.decode(row[e.source_start:e.source_end]).strip(" #.")
        assert code.isdigit() and len(code) == 6
        assert tokenizer.decode(row[:e.end]).rstrip(".").endswith(f"They typed #{code}")  # bpe may join the "."
        assert e.start > e.source_end
    names = copy_probe(annotated, tokenizer, rows=16, tokens=128, kinds=("name",))  # the recipients
    for e in names.events:
        row = names.ids[e.row].tolist()
        name = tokenizer.decode(row[e.start:e.end]).strip(" .")
        assert name == tokenizer.decode(row[e.source_start:e.source_end]).strip(" .")
        assert name[0].isupper() and len(name) == 4


def tiny_model(vocab: int = 40) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, context_length=32,
                                   vocab_size=vocab)).eval()


def test_the_logit_lens_of_the_last_layer_is_the_models_own_loss():
    model = tiny_model()
    ids = torch.randint(0, 40, (3, 20))
    logits, attention, residuals = forward_with_residuals(model, view_of(model), ids)
    assert len(attention) == len(residuals) == 2
    lens = logit_lens(residuals, ids, model.final_norm, model.lm_head)
    own = F.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.allclose(lens[-1], own, atol=1e-6) and torch.allclose(logits, model(ids), atol=1e-6)


def scores_through_the_door(model, tmp_path, ids, probe) -> dict:
    with CircuitsMonitor(save_dir=tmp_path, every=1, tokens=16, induction_rows=4, copy_probe=probe) as circuits:
        circuits.log(model, ids, 1)
    return json.loads((tmp_path / "step_1/statistics.json").read_text())


def test_a_transformers_llama_gives_the_scores_of_the_same_weights_in_llmlab(tmp_path):
    model = tiny_model()
    hf = to_hf(model).eval()
    ids = torch.randint(0, 40, (2, 16))
    probe = CopyProbe(torch.randint(0, 40, (2, 16)), [CopyEvent(0, 6, 8, 1, 3), CopyEvent(1, 10, 12, 2, 4)])
    ours = scores_through_the_door(model, tmp_path / "ours", ids, probe)
    theirs = scores_through_the_door(hf, tmp_path / "theirs", ids, probe)
    assert hf.config._attn_implementation != "eager"  # eager only for the probe
    assert set(ours["scores"]) == {"induction", "prev_token", "copy"}
    for key in ("induction", "prev_token", "copy"):
        assert torch.allclose(torch.tensor(ours["scores"][key]), torch.tensor(theirs["scores"][key]), atol=1e-5)
    for key in ("logit_lens", "copy_accuracy", "icl_loss_drop"):
        assert torch.allclose(torch.tensor(ours[key]), torch.tensor(theirs[key]), atol=1e-5)


@pytest.mark.slow
def test_a_run_measures_plots_and_announces_circuits_once(tmp_path):
    # context 128: the code is typed about 100 characters into a document (the copy probe's events)
    args = ["monitors.circuits.every=4", "monitors.circuits.threshold=0.05", "model.context_length=128",
            "trainer.batch_size=4"]
    cfg = run_config(tmp_path, args)
    assert Run(cfg).execute().status == "completed"
    out = tmp_path / "run"
    history = [json.loads(line) for line in (out / "monitors/circuits/history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [4, 8, 12]
    assert history[0]["copy_events"] > 0 and 0 <= history[-1]["copy_accuracy"] <= 1
    assert len(history[0]["scores"]["copy"]) == 2 and len(history[0]["scores"]["copy"][0]) == 4
    assert (out / "plots/circuits.png").stat().st_size > 10_000
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    formed = [a for a in alerts if a["kind"] == "circuit_formed"]
    assert formed and all(a["level"] == "info" for a in formed)
    subjects = [a["subject"] for a in formed]
    assert len(subjects) == len(set(subjects))  # each head once
    assert sum(len(row["formed"]) for row in history) == len(formed)
    tags = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    tags.Reload()
    assert {"circuits/layer1/head3/induction", "circuits/layer0/head0/copy", "circuits/logit_lens/layer1",
            "circuits/copy_accuracy", "circuits/icl_loss_drop"} <= set(tags.Tags()["scalars"])

    # continued from its last checkpoint (step 12) to step 16: formation is not announced twice
    cfg = run_config(tmp_path, [*args, "trainer.max_steps=16", "trainer.allow_config_change=true"])
    assert Run(cfg).execute().status == "completed"
    history = [json.loads(line) for line in (out / "monitors/circuits/history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [4, 8, 12, 16]
    again = [a["subject"] for a in map(json.loads, (out / "alerts.jsonl").read_text().splitlines())
             if a["kind"] == "circuit_formed"]
    assert len(again) == len(set(again))
    # the same scores from the saved checkpoint, through analyze
    from llmlab.analyze import analyze
    from llmlab.config.commands import AnalyzeConfig

    analysis = analyze(AnalyzeConfig(run=str(out), circuits=True, no_plots=True, text="Bako and Tilu", device="cpu"))
    saved = json.loads((analysis / "circuits/step_16/statistics.json").read_text())
    for key in ("induction", "prev_token", "copy"):
        assert torch.allclose(torch.tensor(saved["scores"][key]), torch.tensor(history[-1]["scores"][key]), atol=1e-5)
    assert saved["copy_accuracy"] == history[-1]["copy_accuracy"]


@pytest.mark.slow
def test_the_capture_cost_benchmark_writes_its_json(tmp_path):
    import argparse

    from llmlab.bench import circuits as bench

    out = tmp_path / "circuits.json"
    bench.main(argparse.Namespace(model="tiny", rounds=2, warmup=0, batch_size=None, device="cpu", out=str(out),
                                  overrides=["+debug=fast", "data.train_docs=400", "data.val_docs=40",
                                             f"cache_dir={tmp_path / 'cache'}"]))
    saved = json.loads(out.read_text())
    assert saved["step_ms"] > 0 and saved["capture_ms"] > 0 and saved["induction_rows"] == [8, 32]
    assert saved["overhead_at_every_100"] == pytest.approx(saved["capture_ms"] / (100 * saved["step_ms"]))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("threshold", 0.0, "monitors.circuits.threshold must be in \\(0, 1\\], got 0.0"),
    ("threshold", 1.5, "monitors.circuits.threshold must be in \\(0, 1\\], got 1.5"),
    ("tokens", 3, "monitors.circuits.tokens must be >= 4"),
    ("copy_rows", 0, "monitors.circuits.copy_rows"),
    ("every", -1, "monitors.circuits.every must be >= 0"),
])
def test_bad_circuits_settings_are_one_line_naming_the_field(field, value, message):
    from llmlab.config.errors import ConfigError
    from llmlab.config.monitors import CircuitsMonitorConfig

    with pytest.raises(ConfigError, match=message):
        CircuitsMonitorConfig(**{field: value})


def test_the_circuits_figure_marks_formation_only_where_a_head_formed():
    import numpy as np

    from llmlab.monitors.plots import circuits_over_training_figure

    steps, lens = [10, 20, 30], np.zeros((3, 2))
    scores = {"induction": np.zeros((3, 2, 2)), "prev_token": np.zeros((3, 2, 2))}

    def score_axes(fig):
        return [ax for sub in fig.subfigs for ax in sub.axes if "score per head" in ax.get_title()]

    quiet = circuits_over_training_figure(steps, scores, lens, ([], []), [], {})
    assert len(score_axes(quiet)) == 2
    assert not any("star" in ax.get_title() for ax in score_axes(quiet))  # no legend for stars that are not there
    formed = [{"score": "induction", "layer": 1, "head": 0, "step": 20, "value": 0.5}]
    induction, prev = score_axes(circuits_over_training_figure(steps, scores, lens, ([], []), formed, {}))
    assert "red star: formed, step 20" in induction.get_title() and "star" not in prev.get_title()
    stars = [line for line in induction.lines if line.get_marker() == "*"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in stars] == [(1, 2)]  # capture 1, row L1H0
