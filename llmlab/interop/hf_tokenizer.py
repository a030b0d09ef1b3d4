"""llmlab tokenizers as Hugging Face tokenizers: a directory that `transformers.AutoTokenizer` loads with no
custom code and that encodes text to llmlab's ids. ``add_special_tokens=False`` gives exactly ``encode``'s ids; the
default adds what llmlab puts before a prompt, its bos token (the eos piece: a sequence starts after a document
boundary), through a post-processor that the ``tokenizers`` library alone applies too (``add_bos_token`` in
tokenizer_config.json).

A chat model's tokenizer also holds the four chat markers as special tokens with the ids the model was trained on
(just above the text vocabulary) and a chat template, so ``apply_chat_template`` gives llmlab's prompt ids.

The pipeline is built with the ``tokenizers`` library and saved by transformers' fast tokenizer class
(``PreTrainedTokenizerFast``, which transformers 5 renamed ``TokenizersBackend``):

- char: BPE without merges over the training characters, i.e. a character lookup; an unknown character is
  ``<unk>`` (id 1), one per character, and decodes to U+FFFD as in llmlab.
- byte: GPT-2's byte-level alphabet with one entry per byte (id = byte value) and no merges.
- bpe / unigram: sentencepiece's pieces with its space symbol U+2581 written back as a plain space, so no
  normaliser is needed and a literal U+2581 in the text is an unknown character that falls back to its
  three byte pieces, as in llmlab. ``\\n`` is an added token: llmlab encodes lines independently and added
  tokens cut the text the same way.

The eos piece is a special token that text never produces: ``split_special_tokens=True`` (saved in
tokenizer_config.json) sends a literal "</s>" through the model like any other text. The ``tokenizers``
library alone does not read that file: there, set ``encode_special_tokens = True`` on the loaded tokenizer.
A chat export cannot split them: ``apply_chat_template`` writes the markers as text and encodes that, so there a
literal marker in the text becomes the marker (the manifest says so; ``apply_chat_template(...,
sanitize_control_tokens=True)`` keeps a message's own "<|end|>" text).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from llmlab.data.chat_template import MARKERS
from llmlab.data.tokenizers import CharTokenizer, SentencePieceTokenizer, Tokenizer

EOS = "</s>"  # char and byte have no eos piece of their own: borrow sentencepiece's name
UNK = "<unk>"

# What the export manifest says where ids or text can differ from llmlab's.
CHAT_MARKERS_IN_TEXT = ("text holding a chat marker or the eos piece (\"<|user|>\", \"</s>\"): a chat export "
                        "encodes it as that special token, llmlab as text")
# llmlab's ChatTemplate as Jinja: <bos>, each message as <|role|> content <|end|>, then <|assistant|> to ask
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('llmlab chat roles are system, user and assistant, got ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")

UNIGRAM_TIES = ("texts with two equally scored segmentations (the same pieces in another order, e.g. in runs "
                "of spaces): sentencepiece breaks the tie by float32 rounding, Hugging Face by float64")
DECODE_DIFFERS = ("ids whose byte pieces are not valid UTF-8 (Hugging Face decodes every byte of such a run to "
                  "U+FFFD, llmlab only the invalid bytes) and <unk>, which encode never gives")


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path, chat: bool = False) -> dict[str, Any]:
    """Write tokenizer.json and tokenizer_config.json into ``directory`` (chat: with the chat markers and
    template); return the export manifest's entry."""
    from transformers import PreTrainedTokenizerFast

    if tokenizer.kind == "hf":  # a run of an imported model (model=hf) still has that model's own tokenizer
        tokenizer.hf_tokenizer.save_pretrained(str(directory))
        return {"kind": "hf", "eos_token": tokenizer.hf_tokenizer.eos_token, "parity": "exact: the imported one"}
    builders = {"char": _char_backend, "byte": _byte_backend, "bpe": _sentencepiece_backend,
                "unigram": _sentencepiece_backend}
    if tokenizer.kind not in builders:
        raise ValueError(f"save_hf_tokenizer: kind {tokenizer.kind!r} has no export; it handles {', '.join(builders)}")
    backend, special_tokens = builders[tokenizer.kind](tokenizer)
    if backend.get_vocab_size() != tokenizer.vocab_size:
        raise RuntimeError(f"Hugging Face vocabulary {backend.get_vocab_size()} != llmlab's {tokenizer.vocab_size}")
    bos = backend.id_to_token(tokenizer.bos_id)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)])
    extra: dict[str, Any] = {}
    if chat:
        _add_chat_markers(backend, tokenizer.vocab_size)
        extra = {"chat_template": CHAT_TEMPLATE, "extra_special_tokens": list(MARKERS)}
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, split_special_tokens=not chat,
                                 clean_up_tokenization_spaces=False, bos_token=bos, add_bos_token=True,
                                 add_eos_token=False, **special_tokens, **extra)
    if hf.eos_token_id != tokenizer.eos_id or hf.bos_token_id != tokenizer.bos_id:
        raise RuntimeError(f"Hugging Face eos/bos ids {hf.eos_token_id}/{hf.bos_token_id} != llmlab's "
                           f"{tokenizer.eos_id}/{tokenizer.bos_id}")
    hf.save_pretrained(str(directory))
    _record_add_bos(directory / "tokenizer_config.json")
    manifest = {"kind": tokenizer.kind, "eos_token": hf.eos_token, "bos_token": hf.bos_token, "parity": "exact"}
    if tokenizer.kind == "unigram":
        manifest.update(parity="exact except ties", differs_on=UNIGRAM_TIES)
    if chat:
        manifest["chat_markers"] = {m: tokenizer.vocab_size + i for i, m in enumerate(MARKERS)}
        manifest["text_differs_on"] = CHAT_MARKERS_IN_TEXT
    if tokenizer.kind in ("bpe", "unigram"):
        manifest["decode_differs_on"] = DECODE_DIFFERS
    return manifest


def _record_add_bos(config: Path) -> None:
    """add_bos_token in tokenizer_config.json, which transformers does not save from the constructor: a reader
    (and a transformers that rebuilds the post-processor from it) sees that the bos is added."""
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings.update(add_bos_token=True, add_eos_token=False)
    config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _add_chat_markers(backend: Backend, vocab_size: int) -> None:
    """The chat markers as special tokens with the ids llmlab gives them: vocab_size + 0..3."""
    backend.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in MARKERS])
    ids = [backend.token_to_id(m) for m in MARKERS]
    if ids != list(range(vocab_size, vocab_size + len(MARKERS))):
        raise RuntimeError(f"chat markers got ids {ids}, llmlab's are {vocab_size}..{vocab_size + len(MARKERS) - 1}")


def _char_backend(tokenizer: CharTokenizer) -> tuple[Backend, dict[str, str]]:
    vocab = {EOS: tokenizer.eos_id, UNK: tokenizer.unk_id}
    vocab.update({c: i for i, c in enumerate(tokenizer.chars, start=2)})
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    backend.decoder = decoders.Sequence([decoders.Replace(UNK, "\ufffd"), decoders.Fuse()])
    # <unk> stays out of the special tokens, so decode(skip_special_tokens=True) keeps its U+FFFD like llmlab.
    return backend, {"eos_token": EOS}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 stands for itself, the rest move to 256+."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    moved = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(moved)) for b in range(256)]


def _byte_backend(tokenizer: Tokenizer) -> tuple[Backend, dict[str, str]]:
    vocab = {char: b for b, char in enumerate(_byte_alphabet())} | {EOS: tokenizer.eos_id}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # Not ByteFallback: ByteLevel turns invalid UTF-8 into U+FFFD the way bytes.decode(errors="replace") does.
    backend.decoder = decoders.ByteLevel()
    return backend, {"eos_token": EOS}


def _sentencepiece_backend(tokenizer: SentencePieceTokenizer) -> tuple[Backend, dict[str, str]]:
    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    # Control, unknown and byte pieces: sentencepiece never matches their names ("</s>", "<0x41>") in text.
    reserved = [sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i) for i in range(len(pieces))]
    newline = sp.piece_to_id("\n")  # the one user-defined piece (llmlab's _SP_OPTIONS), cut out as an added token
    normal = [not r and i != newline for i, r in enumerate(reserved)]
    names = [p.replace("\u2581", " ") if n else p for p, n in zip(pieces, normal, strict=True)]
    if tokenizer.kind == "unigram":
        backend = _unigram(sp, names, normal, reserved)
    else:
        backend = _bpe(sp, names, normal)
    backend.add_tokens([AddedToken("\n", special=False, normalized=False)])
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return backend, {"eos_token": pieces[sp.eos_id()], "unk_token": pieces[sp.unk_id()]}


def _unigram(sp: spm.SentencePieceProcessor, names: list[str], normal: list[bool], reserved: list[bool]) -> Backend:
    """The same pieces and scores. Unlike sentencepiece, Hugging Face's Unigram also matches the names of
    reserved pieces in the text; two measures keep those out of every best path."""
    scores = [sp.get_score(i) for i in range(len(names))]
    lowest = min(s for s, n in zip(scores, normal, strict=True) if n)
    # 1. A score below any path of normal pieces over a name's (at most 6) characters when all are known.
    never = 10 * min(lowest, 0.0) - 10.0
    vocab = [(name, s if n else never) for name, s, n in zip(names, scores, normal, strict=True)]
    backend = Backend(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    # 2. A name character that is no piece is an unknown character (scored below `never`, so a name over it
    # would win): cut the text around it. Sentencepiece's best path covers such a character alone (it is in
    # no piece), so the cut changes nothing else.
    known = {name for name, n in zip(names, normal, strict=True) if n and len(name) == 1}
    unknown = sorted({c for name, r in zip(names, reserved, strict=True) if r for c in name} - known)
    if unknown:
        pattern = Regex("|".join(re.escape(c) for c in unknown))
        backend.pre_tokenizer = pre_tokenizers.Split(pattern, behavior="isolated")
    return backend


def _bpe(sp: spm.SentencePieceProcessor, names: list[str], normal: list[bool]) -> Backend:
    """Merges are every split of a normal piece into two normal pieces, best-scoring piece first: sentencepiece
    merges any adjacent pair whose concatenation is a piece, the highest-scoring one first. No merge makes a
    reserved piece, so their names are never matched in the text."""
    ids = {name: i for i, (name, n) in enumerate(zip(names, normal, strict=True)) if n}
    by_score = sorted(ids.values(), key=lambda i: (-sp.get_score(i), i))
    merges = [(names[i][:k], names[i][k:]) for i in by_score for k in range(1, len(names[i]))
              if names[i][:k] in ids and names[i][k:] in ids]
    vocab = {name: i for i, name in enumerate(names)}
    return Backend(models.BPE(vocab=vocab, merges=merges, unk_token=names[sp.unk_id()], byte_fallback=True))
