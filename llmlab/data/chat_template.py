"""Conversations as token ids, with a loss mask on the assistant's tokens.

Role markers are ids *above* the tokenizer's vocabulary (vocab_size + 0..3): the tokenizer never emits them,
so no text, not even a user typing "<|assistant|>", can produce one. A model for a chat stage has these four
extra embeddings (`Transformer.resize_vocab` adds them to a pretrained model, initialised at the mean embedding).

    <bos> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> <|user|> ...

The loss mask covers each assistant reply and the <|end|> that closes it (so the model learns to stop),
nothing else: not the markers, not the system or user text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
