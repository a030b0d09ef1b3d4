"""Conversations as token ids, with a loss mask on the assistant's tokens.

Role markers are ids *above* the tokenizer's vocabulary (vocab_size + 0..3): the tokenizer never emits them,
so no text, not even a user typing "<|assistant|>", can produce one. A model for a chat stage has these four
extra embeddings (`resize_vocab` adds them to a pretrained model, initialised at the mean embedding).

    <bos> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...

The loss mask covers each assistant reply and the <|end|> that closes it (so the model learns to stop),
nothing else: not the markers, not the system or user text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmlab.data.chat import Message
from llmlab.data.tokenizers import Tokenizer

MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    loss_mask: list[bool]  # loss_mask[i]: ids[i] is a target (predicted from ids[:i])


class ChatTemplate:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        base = tokenizer.vocab_size
        self.role_ids = {"system": base, "user": base + 1, "assistant": base + 2}
        self.end_id = base + 3
        self.vocab_size = base + len(MARKERS)

    def encode(self, messages: Sequence[Message]) -> Encoded:
        ids, mask = [self.tokenizer.bos_id], [False]
        for message in messages:
            body = [*self.tokenizer.encode(message.content), self.end_id]
            ids += [self.role_ids[message.role], *body]
            mask += [False] + [message.role == "assistant"] * len(body)
        return Encoded(ids, mask)

    def prompt(self, messages: Sequence[Message]) -> list[int]:
        """Ids that ask for the next assistant reply: the conversation, then <|assistant|>."""
        return [*self.encode(messages).ids, self.role_ids["assistant"]]

    def reply(self, messages: Sequence[Message], answer: str) -> Encoded:
        """prompt(messages) followed by the answer and <|end|>, the answer's tokens and <|end|> masked in."""
        prompt = self.prompt(messages)
        body = [*self.tokenizer.encode(answer), self.end_id]
        return Encoded([*prompt, *body], [False] * len(prompt) + [True] * len(body))

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ids up to the first <|end|>, markers dropped."""
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.tokenizer.decode([i for i in ids if i < self.tokenizer.vocab_size])

    def render(self, ids: Sequence[int]) -> str:
        """Every id shown: markers by name, text as text (the debug view of a batch)."""
        base, parts, run = self.tokenizer.vocab_size, [], []
        for i in [*ids, None]:
            if i is not None and i < base:
                run.append(i)
                continue
            if run:
                parts.append(self.tokenizer.decode(run))
                run = []
            if i is not None:
                parts.append(MARKERS[i - base])
        return "".join(parts)


def resize_vocab(model: torch.nn.Module, vocab_size: int) -> bool:
    """Grow the model's token embedding (and untied head) to vocab_size rows; new rows start at the mean of the
    old ones, so their logits start near the average instead of at random. False when it was big enough."""
    old = model.tok_emb.weight
    if old.shape[0] >= vocab_size:
        return False
    tied = model.lm_head.weight is old
    with torch.no_grad():
        grown = torch.cat([old, old.mean(0, keepdim=True).expand(vocab_size - old.shape[0], -1)])
        model.tok_emb = torch.nn.Embedding(vocab_size, old.shape[1], _weight=grown.clone(), device=old.device,
                                           dtype=old.dtype)
        head = model.lm_head.weight
        model.lm_head = torch.nn.Linear(old.shape[1], vocab_size, bias=False, device=old.device, dtype=old.dtype)
        if tied:
            model.lm_head.weight = model.tok_emb.weight
        else:
            model.lm_head.weight.copy_(torch.cat([head, head.mean(0, keepdim=True).expand(vocab_size - len(head), -1)]))
    model.cfg = dataclasses.replace(model.cfg, vocab_size=vocab_size)
    return True
