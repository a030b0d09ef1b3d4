"""save_hf_tokenizer: AutoTokenizer loads the export with no custom code and gives llmlab's ids and text back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer as Backend
from transformers import AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from llmlab.config.schema import TokenizerConfig
from llmlab.data.chat import Message
from llmlab.data.chat_template import MARKERS, ChatTemplate
from llmlab.data.synthetic import Language, sample_documents
from llmlab.data.tokenizers import SentencePieceTokenizer, train_tokenizer
from llmlab.interop.hf_tokenizer import save_hf_tokenizer

VOCAB = 400  # sentencepiece: 259 fixed pieces + the text's characters + some learnt pieces
# (kind, training text): "plain" has none of the characters of "<0x41>" or "</s>" but letters, so Unigram
# must cut around them; "named" has them all, so Unigram must out-score them instead.
CASES = [("char", "plain"), ("byte", "plain"), ("bpe", "plain"), ("unigram", "plain"), ("bpe", "named"),
         ("unigram", "named")]
# Whitespace runs, blank lines, names of reserved pieces, sentencepiece's space symbol, characters no
# training text has (CJK, emoji with a joiner, accents, a combining mark), digits and punctuation.
HELD_OUT = ("  Bako  and\tTilu   went\n\n\n\tto the lake.  \n \n\n</s> <unk> <0x41> <0xE2><0x96><0x81> <s> x▁y ▁▁ "
            "日本語 🦜👩‍🔬 é e\u0301 Ωμέγα 3.14, 42! (a/b) <tag> ?? \r\n\x00\u3000\ufeff trailing  ")
ATOMS = [*"Bako and Tilu the lake.,\t\n\r ", "  ", "\n\n", "went", "</s>", "<unk>", "<0x41>", "<0xE2>", "<s>", "▁",
         "日", "本", "🦜", "é", "e\u0301", "\x00", "\u3000", "7", "<", ">", "/"]


def make_text(named: bool, seed: int = 0) -> str:
    """About 20 KB of the synthetic language, indented and spaced unevenly, with blank lines."""
    rng = random.Random(seed)
    docs, _ = sample_documents(Language(), 200, seed)
    lines = []
    for doc in docs:
        lines.append(rng.choice(["", "", "  ", "    ", "\t"]) + doc + rng.choice(["", "", "  ", "\t"]))
        lines += [""] * rng.choice([0, 0, 1, 2])
        if named:
            lines.append(f"x = 0x{rng.randrange(1 << 24):06X} </{rng.choice(docs).split()[0]}> {rng.randrange(10**6)}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """(llmlab tokenizer, loaded Hugging Face tokenizer, manifest entry) per case."""
    texts = {"plain": make_text(named=False), "named": make_text(named=True)}
    out = {}
    for kind, text in CASES:
        tok = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=VOCAB), texts[text])
        directory = tmp_path_factory.mktemp(f"{kind}-{text}")
        manifest = save_hf_tokenizer(tok, directory)
        out[kind, text] = tok, AutoTokenizer.from_pretrained(directory), manifest
    return out


def fuzz(n: int = 200, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(ATOMS, k=rng.randint(0, 30))) for _ in range(n)]


def path_score(tok: SentencePieceTokenizer, ids: list[int]) -> float:
    sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
    return sum(sp.get_score(i) for i in ids)


def assert_same_ids(case: tuple, text: str) -> None:
    tok, hf, manifest = case
    ours, theirs = tok.encode(text), hf.encode(text, add_special_tokens=False)
    assert hf(text)["input_ids"] == [tok.bos_id, *theirs]  # by default the bos llmlab puts before a prompt
    if ours != theirs:  # only where the manifest says so: a tie between equally scored segmentations
        assert "differs_on" in manifest, (text, ours, theirs)
        assert tok.kind == "unigram" and hf.decode(theirs) == text, (text, ours, theirs)
        assert path_score(tok, theirs) == pytest.approx(path_score(tok, ours), abs=1e-4), (text, ours, theirs)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_held_out_text_gives_llmlab_ids(exported, case):
    tok, hf, manifest = exported[case]
    assert manifest["kind"] == tok.kind and manifest["eos_token"] == hf.eos_token
    for text in (HELD_OUT, *HELD_OUT.splitlines(keepends=True), "", "\n", "   ", make_text(case[1] == "named", 5)):
        assert_same_ids(exported[case], text)


def test_unigram_keeps_reserved_names_out_both_ways(exported):
    """Plain text: the name characters it lacks are cut out; named text: the names are out-scored alone."""
    assert exported["unigram", "plain"][1].backend_tokenizer.pre_tokenizer is not None
    assert exported["unigram", "named"][1].backend_tokenizer.pre_tokenizer is None


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_fuzz_gives_llmlab_ids(exported, case):
    for text in fuzz():
        assert_same_ids(exported[case], text)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_decode_gives_llmlab_text(exported, case):
    tok, hf, _ = exported[case]
    for text in (HELD_OUT, *fuzz(50, seed=2)):
        ids = tok.encode(text)
        assert hf.decode(ids) == tok.decode(ids)  # the text itself, or U+FFFD for char's unknown characters
        if tok.kind != "char":
            assert hf.decode(ids) == text


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_decode_of_any_ids(exported, kind):
    """Generated ids: eos is dropped like llmlab with skip_special_tokens, invalid UTF-8 becomes U+FFFD alike."""
    tok, hf, _ = exported[kind, "plain"]
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.choice([rng.randrange(tok.vocab_size), 0xE2, 0x96, tok.eos_id]) % tok.vocab_size for _ in range(12)]
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids), ids


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_decode_of_invalid_byte_pieces_differs_as_the_manifest_says(exported, kind):
    tok, hf, manifest = exported[kind, "plain"]
    byte = [hf.convert_tokens_to_ids(f"<0x{b:02X}>") for b in (0xC3, 0xA9, 0xE2)]  # "é" and a cut-off "▁"
    assert tok.decode(byte) == "é\ufffd" and hf.decode(byte) == "\ufffd" * 3
    assert "not valid UTF-8" in manifest["decode_differs_on"]
    assert hf.decode(byte[:2]) == tok.decode(byte[:2]) == "é"


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_eos(exported, case):
    tok, hf, _ = exported[case]
    assert hf.eos_token_id == tok.eos_id
    text = f"a{hf.eos_token}b {hf.eos_token}"
    assert tok.eos_id not in hf.encode(text, add_special_tokens=False)  # text never gives eos
    assert_same_ids(exported[case], text)
    assert hf.decode([*tok.encode("a"), tok.eos_id], skip_special_tokens=True) == "a"


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_sentencepiece_space_symbol_in_text(exported, case):
    """llmlab encodes a literal U+2581 as its bytes; the export does too, and claims no difference there."""
    tok, hf, manifest = exported[case]
    text = "▁ x▁y ▁▁\n▁"
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False)
    assert "2581" not in json.dumps(manifest)
    if tok.kind in ("bpe", "unigram"):
        assert hf.convert_ids_to_tokens(hf.encode("▁", add_special_tokens=False)) == ["<0xE2>", "<0x96>", "<0x81>"]


def test_unigram_ties_break_differently_as_the_manifest_says(exported, tmp_path):
    """Pieces t, a, aa: "taaa" is t+a+aa or t+aa+a, the same score. Sentencepiece sums in float32, where
    (t + aa) + a rounds above (t + a) + aa; Hugging Face sums in float64, sees a tie and keeps the first."""
    base, _, _ = exported["unigram", "plain"]
    model = sentencepiece_model_pb2.ModelProto.FromString(base.model_proto)
    reserved = [p for p in model.pieces if p.type != p.NORMAL]
    del model.pieces[:]
    model.pieces.extend(reserved)
    for piece, score in (("t", -0.5), ("a", -1.1), ("aa", -1.6)):
        model.pieces.add(piece=piece, score=score, type=model.SentencePiece.NORMAL)
    tok = SentencePieceTokenizer(model.SerializeToString(), "unigram")
    manifest = save_hf_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
    assert [sp.id_to_piece(i) for i in tok.encode("taaa")] == ["t", "aa", "a"]
    assert hf.convert_ids_to_tokens(hf.encode("taaa", add_special_tokens=False)) == ["t", "a", "aa"]
    assert "ties" in manifest["parity"] and "equally scored" in manifest["differs_on"]


def test_files_need_no_custom_code(exported):
    tok, hf, _ = exported["bpe", "plain"]
    config = json.loads((Path(hf.name_or_path) / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "auto_map" not in config and config["split_special_tokens"] is True
    assert type(hf) is PreTrainedTokenizerFast  # transformers 5: an alias of TokenizersBackend


@pytest.mark.parametrize("config", [LlamaConfig, GPT2Config], ids=["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "unigram"])
def test_model_config_beside_keeps_the_exported_pipeline(exported, kind, config, tmp_path):
    """A model's config.json in the same directory must not make AutoTokenizer swap in LlamaTokenizer & co,
    which would rebuild the pipeline their own way."""
    tok, _, manifest = exported[kind, "plain"]
    config(vocab_size=tok.vocab_size, bos_token_id=None, eos_token_id=None).save_pretrained(tmp_path)
    save_hf_tokenizer(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert type(hf) is PreTrainedTokenizerFast
    assert_same_ids((tok, hf, manifest), HELD_OUT)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_bos_is_added_as_llmlab_adds_it_by_transformers_and_by_the_tokenizers_library(exported, case):
    tok, hf, _ = exported[case]
    text = "Bako and Tilu"
    assert hf(text)["input_ids"] == hf.encode(text) == [tok.bos_id, *tok.encode(text)]
    assert hf.bos_token_id == tok.bos_id
    directory = Path(hf.name_or_path)
    assert Backend.from_file(str(directory / "tokenizer.json")).encode(text).ids == [tok.bos_id, *tok.encode(text)]
    assert json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))["add_bos_token"] is True


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_a_chat_export_carries_the_markers_and_a_template_that_gives_llmlab_prompt_ids(exported, case, tmp_path):
    tok = exported[case][0]
    manifest = save_hf_tokenizer(tok, tmp_path, chat=True)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    template = ChatTemplate(tok)
    assert len(hf) == template.vocab_size == tok.vocab_size + len(MARKERS)
    assert manifest["chat_markers"] == {m: hf.convert_tokens_to_ids(m) for m in MARKERS}
    conversation = [Message("system", "Answer  briefly, "), Message("user", "Bako and\tTilu?\n"),
                    Message("assistant", "the lake."), Message("user", "日本 é again ")]
    as_dicts = [{"role": m.role, "content": m.content} for m in conversation]
    ids = hf.apply_chat_template(as_dicts, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == template.prompt(conversation)
    assert ids[:2] == [tok.bos_id, template.role_ids["system"]] and ids[-1] == template.role_ids["assistant"]
    assert hf.apply_chat_template(as_dicts[:3], return_dict=True)["input_ids"] == template.encode(conversation[:3]).ids
    # a marker typed in a message: the tokenizer matches it (as the manifest says) unless told to sanitize
    plain, sanitized = (hf.apply_chat_template([{"role": "user", "content": "a </s> b <|end|> c"}], return_dict=True,
                                               add_generation_prompt=True, sanitize_control_tokens=s)["input_ids"]
                        for s in (False, True))
    assert {tok.eos_id, template.end_id} <= set(plain[2:-2])
    assert all(i < tok.vocab_size and i != tok.eos_id for i in sanitized[2:-2])
    assert "chat marker" in manifest["text_differs_on"]
    reply = [*tok.encode("the lake."), template.end_id]
    assert hf.decode(reply, skip_special_tokens=True) == template.decode(reply) == "the lake."
    with pytest.raises(Exception, match="roles are system, user and assistant"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}])
