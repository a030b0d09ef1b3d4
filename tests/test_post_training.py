"""Chat stages: the template's loss mask and markers, padded batches that cannot leak between samples, the
vocabulary growth for the markers, DPO's ln 2 start, and the pretrain -> SFT -> DPO pipeline on the tasks."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config, run_config

from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig
from llmlab.data.chat import Message
from llmlab.data.chat_batches import IGNORE, ChatBatches, collate
from llmlab.data.chat_template import MARKERS, ChatTemplate
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.model.transformer import Transformer
from llmlab.runner import Run
from llmlab.store import to_dataclass
from llmlab.train.objectives import DPOObjective

TEMPLATE = ChatTemplate(ByteTokenizer())
CONVERSATION = (Message("system", "Be brief."), Message("user", "Say <|assistant|> hi"), Message("assistant", "hi"),
                Message("user", "again"), Message("assistant", "hi hi"))


def make_config(tmp_path, overrides: list[str]):
    """A validated RunConfig: the fast settings, less the ones overridden and the text data's keys."""
    given = {o.split("=")[0] for o in overrides}
    fast = [o for o in FAST if not o.startswith("data.") and o.split("=")[0] not in given]
    cfg = compose_config([*fast, f"cache_dir={tmp_path / 'cache'}", *overrides])
    cfg.out_dir = str(tmp_path / "run")
    return to_dataclass(cfg)


def tiny_model(vocab: int, **overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=64, vocab_size=vocab,
                                   **overrides)).eval()


def test_the_loss_mask_covers_exactly_the_assistant_replies_and_their_end():
    encoded = TEMPLATE.encode(CONVERSATION)
    trained = [i for i, m in zip(encoded.ids, encoded.loss_mask, strict=True) if m]
    end = TEMPLATE.end_id
    assert trained == [*b"hi", end, *b"hi hi", end]
    assert TEMPLATE.render(encoded.ids) == ("<|system|>Be brief.<|end|><|user|>Say <|assistant|> hi<|end|>"
                                           "<|assistant|>hi<|end|><|user|>again<|end|><|assistant|>hi hi<|end|>")


def test_typed_markers_are_text_never_marker_ids():
    ids = TEMPLATE.encode([Message("user", "".join(MARKERS)), Message("assistant", "<|end|>")]).ids
    markers = [i for i in ids if i >= TEMPLATE.tokenizer.vocab_size]
    assert markers == [TEMPLATE.role_ids["user"], TEMPLATE.end_id, TEMPLATE.role_ids["assistant"], TEMPLATE.end_id]


def test_padded_samples_cannot_see_each_other():
    model = tiny_model(TEMPLATE.vocab_size)
    a = (TEMPLATE.encode([Message("user", "first"), Message("assistant", "one")]),)
    b = (TEMPLATE.encode([Message("user", "second question"), Message("assistant", "two")]),)
    changed_a = (TEMPLATE.encode([Message("user", "fXrs7"), Message("assistant", "uno")]),)  # same length: same shapes
    with torch.no_grad():
        before, after = (model(collate([x, b], pad_id=0).input_ids) for x in (a, changed_a))
    n = len(b[0].ids) - 1
    assert torch.equal(before[1, :n], after[1, :n])
    batch = collate([a, b], pad_id=0)
    assert (batch.targets[0, len(a[0].ids) - 1:] == IGNORE).all()  # padding is never a target


def test_batches_resume_where_they_left_off():
    items = [(TEMPLATE.encode([Message("user", "q" * n), Message("assistant", "a")]),) for n in range(1, 40)]
    batches = ChatBatches(items, batch_size=4, pad_id=0, seed=3)
    for _ in range(12):  # into the second epoch
        batches.next()
    state, expected = batches.state_dict(), [batches.next().input_ids for _ in range(5)]
    resumed = ChatBatches(items, batch_size=4, pad_id=0, seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(e, resumed.next().input_ids) for e in expected)


@pytest.mark.parametrize("tied", [True, False])
def test_resize_vocab_keeps_every_old_logit(tied):
    model = tiny_model(257, tie_embeddings=tied)
    ids = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        before = model(ids)
        assert model.resize_vocab(TEMPLATE.vocab_size) and not model.resize_vocab(TEMPLATE.vocab_size)
        after = model(ids)
    assert after.shape[-1] == 261 and torch.equal(before, after[..., :257])
    assert (model.lm_head.weight is model.tok_emb.weight) == tied and model.cfg.vocab_size == 261


def test_dpo_starts_at_ln2():
    model = tiny_model(TEMPLATE.vocab_size)
    prompt = [Message("user", "Say how many words. the ripe pear")]
    pairs = [(TEMPLATE.reply(prompt, "three"), TEMPLATE.reply(prompt, "two")),
             (TEMPLATE.reply(prompt, "three words"), TEMPLATE.reply(prompt, "four"))]
    record: dict = {}
    loss = DPOObjective(copy.deepcopy(model), beta=0.1).loss(model, collate(pairs, pad_id=0), record)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert record["dpo/reward_margin"][0].item() == 0.0


def test_dpo_with_an_nll_weight_adds_the_chosen_replies_loss_per_token():
    from llmlab.train.objectives import NextTokenObjective

    model = tiny_model(TEMPLATE.vocab_size)
    prompt = [Message("user", "Sum the digits. #12")]
    pairs = [(TEMPLATE.reply(prompt, "3"), TEMPLATE.reply(prompt, "4")),
             (TEMPLATE.reply(prompt, "13"), TEMPLATE.reply(prompt, "2"))]
    batch = collate(pairs, pad_id=0)
    loss = DPOObjective(copy.deepcopy(model), beta=0.1, nll_weight=0.5).loss(model, batch)
    per_row = [NextTokenObjective().loss(model, collate([(chosen,)], pad_id=0)).item() for chosen, _ in pairs]
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * sum(per_row) / 2, rel=1e-5)


def test_chat_stages_need_a_start_and_matching_data(tmp_path):
    with pytest.raises(ConfigError, match="stage=sft starts from a trained model: give stage.init_from"):
        make_config(tmp_path, ["stage=sft", "data=tasks"])
    with pytest.raises(ConfigError, match=r"stage=dpo trains on data=task_prefs\|prefs\|hf_prefs, got data=tasks"):
        make_config(tmp_path, ["stage=dpo", "data=tasks", "stage.init_from=x"])
    with pytest.raises(ConfigError, match="LoRA adapts a trained model"):
        run_config(tmp_path, ["model.lora.rank=4"])


SFT = ["stage=sft", "data=tasks", "stage.init_from=x"]


@pytest.mark.parametrize("overrides,message", [
    ([*SFT, "model.lora.rank=-1"], r"model.lora.rank must be >= 0 \(0 = no LoRA\), got -1"),
    ([*SFT, "model.lora.rank=4", "model.lora.dropout=1.0"], r"model.lora.dropout must be in \[0, 1\), got 1.0"),
    ([*SFT, "model.lora.rank=4", "model.lora.targets=[]"], "model.lora.targets is empty"),
    ([*SFT, "data.families=[copy,sing]"], r"data.families: expected one of copy\|reverse\|count\|recall\|pattern"),
    ([*SFT, "data.eval_tasks=-1"], "data.eval_tasks must be >= 0, got -1"),
    (["stage=sft", "data=chat", "stage.init_from=x", "data.paths=[]"], "data.paths is empty: give one or more .json"),
    (["model.context_length=null"], "model.context_length: null is only for an imported model"),
    (["model.rope_scaling=llama3", "model.rope_low_freq_factor=4.0"], "model.rope_high_freq_factor=4.0 must exceed"),
])
def test_new_config_mistakes_are_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, overrides)


@pytest.mark.slow
def test_pretrain_sft_dpo_pipeline_on_the_embedded_tasks(tmp_path):
    """SFT lifts task accuracy above the pretrained model's; DPO lifts reward accuracy above 0.5.
    Counting is the family a small model learns first (about 10 s per stage here)."""
    from llmlab.evaluate import EvaluateConfig, evaluate

    wider = ["model.d_model=64", "trainer.batch_size=16", "trainer.eval_batches=1", "trainer.warmup_steps=5"]
    tasks = ["data.families=[count]", "data.eval_tasks=40", "data.val_tasks=32"]
    base = make_config(tmp_path / "base", [*wider, "data.train_docs=2000", "data.val_docs=40", "trainer.max_steps=150"])
    Run(base).execute()
    sft = make_config(tmp_path / "sft", [*wider, *tasks, "stage=sft", "data=tasks", f"stage.init_from={base.out_dir}",
                                         "trainer.max_steps=150", "trainer.eval_every=150", "trainer.lr=3e-3"])
    with pytest.raises(ConfigError, match=r"has another architecture \(model.n_layers: 2 there vs 3 here\)"):
        Run(make_config(tmp_path / "other", [*wider, *tasks, "stage=sft", "data=tasks", "model.n_layers=3",
                                             f"stage.init_from={base.out_dir}"])).setup()
    assert Run(sft).execute().status == "completed"
    pretrained = evaluate(EvaluateConfig(run=base.out_dir, data=sft.data))["task_accuracy"]["all"]
    after_sft = json.loads(Path(sft.out_dir, "metrics.jsonl").read_text().splitlines()[-1])["eval/task_accuracy"]
    assert after_sft > pretrained
    dpo = make_config(tmp_path / "dpo", [*wider, *tasks, "stage=dpo", "data=task_prefs",
                                         f"stage.init_from={sft.out_dir}", "trainer.max_steps=40",
                                         "trainer.eval_every=40"])
    Run(dpo).execute()
    last = json.loads(Path(dpo.out_dir, "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val/dpo/reward_accuracy"] > 0.5


@pytest.mark.slow
def test_lora_sft_on_chat_files_saves_only_adapters_and_merges_to_the_same_logits(tmp_path, capsys):
    from safetensors import safe_open

    from llmlab.export import ExportConfig, export_run
    from llmlab.load import load_trained
    from llmlab.merge_lora import MergeConfig, merge_run

    Run(run_config(tmp_path / "base")).execute()
    chat = tmp_path / "alpaca.jsonl"
    records = [{"instruction": f"Name {w}.", "input": "", "output": w} for w in ("the lake", "a pear", "the map")]
    chat.write_text("\n".join(json.dumps(r) for r in records * 12))
    lora = make_config(tmp_path / "lora", ["stage=sft", "data=chat", f"data.paths=[{chat}]", "data.val_fraction=0.2",
                                           f"stage.init_from={tmp_path / 'base' / 'run'}", "model.lora.rank=4",
                                           "model.lora.targets=[all]", "trainer.max_steps=6", "trainer.eval_every=6",
                                           "trainer.checkpoint_every=6", "trainer.eval_batches=1",
                                           "trainer.batch_size=8", "trainer.debug_first_batch=true"])
    Run(lora).execute()
    shown = capsys.readouterr().out
    # 2 blocks x 7 projections; rank 4 x (in + out): q, k, v, o 32+32; gate, up 32+96; down 96+32 (d_ff 96)
    assert f"LoRA rank 4 on 14 layers: {2 * 4 * (4 * 64 + 3 * 128):,} trainable of" in shown
    assert "row 0 loss mask: " in shown and "<|assistant|>" in shown
    run = tmp_path / "lora" / "run"
    with safe_open(run / "checkpoints" / "step_6" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)  # the base is named, not copied
    with pytest.raises(ConfigError, match="holds LoRA adapters: merge them first"):
        export_run(ExportConfig(run=str(run), out=str(tmp_path / "hf")))
    with pytest.raises(ConfigError, match="no LoRA adapters to merge"):
        merge_run(MergeConfig(run=str(tmp_path / "base" / "run"), out=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="has LoRA adapters: merge them first"):
        Run(make_config(tmp_path / "on_lora", ["stage=sft", "data=tasks", f"stage.init_from={run}"])).setup()
    merged = merge_run(MergeConfig(run=str(run), out=str(tmp_path / "merged")))
    adapted, _, _ = load_trained(run)
    plain, _, _ = load_trained(merged)
    assert not any(n.endswith("lora_A") for n, _ in plain.named_parameters())
    base, _, _ = load_trained(tmp_path / "base" / "run")
    ids = torch.randint(0, base.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        assert (adapted(ids) - plain(ids)).abs().max().item() < 1e-4
        vocab = base.cfg.vocab_size
        assert (adapted(ids)[..., :vocab] - base(ids)).abs().max().item() > 1e-3  # the adapters did change it
    (tmp_path / "base").rename(tmp_path / "moved")  # the adapters' base is gone
    with pytest.raises(ConfigError, match=r"adapts .*base/run/checkpoints/step_12, which cannot be loaded"):
        load_trained(run)


@pytest.mark.slow
def test_chat_data_that_cannot_train_is_one_line(tmp_path):
    Run(run_config(tmp_path / "base")).execute()
    start = f"stage.init_from={tmp_path / 'base' / 'run'}"
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"instruction": "Name the lake.", "output": "the lake"}))
    with pytest.raises(ConfigError, match="1 records cannot be split into train and validation"):
        Run(make_config(tmp_path / "a", ["stage=sft", "data=chat", f"data.paths=[{one}]", start])).setup()
    long = tmp_path / "long.jsonl"  # every reply starts after the 32-token context
    long.write_text("\n".join(json.dumps({"instruction": "a" * 40, "output": "b"}) for _ in range(20)))
    with pytest.raises(ConfigError, match="no training or validation sample has a reply within"):
        Run(make_config(tmp_path / "b", ["stage=sft", "data=chat", f"data.paths=[{long}]", start])).setup()
    with pytest.raises(ConfigError, match="trainer.batch_size=8 is more than the 2 training samples"):
        short = tmp_path / "short.jsonl"
        short.write_text("\n".join(json.dumps({"instruction": "Name it.", "output": "it"}) for _ in range(3)))
        Run(make_config(tmp_path / "c", ["stage=sft", "data=chat", f"data.paths=[{short}]", start,
                                         "data.val_fraction=0.3"])).setup()


@pytest.mark.slow
def test_a_resumed_sft_run_ends_where_an_uninterrupted_one_does(tmp_path, capsys):
    from safetensors.torch import load_file

    Run(run_config(tmp_path / "base")).execute()
    common = ["stage=sft", "data=tasks", f"stage.init_from={tmp_path / 'base' / 'run'}", "data.eval_tasks=4",
              "data.val_tasks=8", "trainer.eval_batches=1", "trainer.batch_size=8", "trainer.warmup_steps=20",
              "trainer.eval_every=4", "trainer.checkpoint_every=4"]  # warmup past the end: the same lr either way
    Run(make_config(tmp_path / "whole", [*common, "trainer.max_steps=8"])).execute()
    Run(make_config(tmp_path / "parts", [*common, "trainer.max_steps=4"])).execute()
    resumed = Run(make_config(tmp_path / "parts", [*common, "trainer.max_steps=8", "trainer.allow_config_change=true"]))
    resumed.execute()
    assert "checkpoints/step_4 (step 4)" in capsys.readouterr().out  # it resumed, it did not start over
    whole, parts = (load_file(tmp_path / d / "run/checkpoints/step_8/model.safetensors") for d in ("whole", "parts"))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
