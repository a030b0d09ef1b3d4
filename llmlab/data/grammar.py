"""The embedded language parsing its own text: is a generated document one the generator could have written?

A document is "<A> and <B> went to the <place>." and then sentences. A sentence is *accepted* when it has one of
the grammar's two forms with words of matching classes ("X <verb> the <adj> <noun>." with the verb's own nouns and
adjectives, or "X gave the <noun> to Y.") and well-formed names; its *names are copied* when every name in it is
one of the two characters introduced and the recipient of "gave" is the other one. In a language with a code the
first sentence after the introduction is "The code was #<code>." and the third "They typed #<code>.": accepted when
they stand there with a well-formed code (distinct digits), and the typed one is copied when it is the code given.
Only sentences that end (a '.') are judged: a sample cut off by max_new_tokens leaves its last sentence unjudged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmlab.data.synthetic import Language

NAME = r"[A-Z][a-z]{3}"


@dataclass
class DocumentCheck:
    introduced: bool  # the first sentence is a well-formed introduction of two different characters
    sentences: int  # complete sentences after the introduction
    accepted: int  # of them, in the grammar
    names_copied: int  # of them, with the introduced names (the other one as recipient) and the code as given
    typed: bool = True  # the document went on to type the code (a language without a code: always)

    @property
    def valid(self) -> bool:
        """The whole document is one the generator can produce (every sentence accepted, the code typed)."""
        return self.introduced and self.accepted == self.sentences and self.names_copied == self.sentences \
            and self.typed


class GrammarChecker:
    def __init__(self, language: Language | None = None):
        lang = self.language = language or Language()
        self.verb_class = {v: i for i, (verbs, _, _) in enumerate(lang.classes) for v in verbs}
        self.noun_class = {n: i for i, (_, nouns, _) in enumerate(lang.classes) for n in nouns}
        self.adj_class = {a: i for i, (_, _, adjs) in enumerate(lang.classes) for a in adjs}
        self.intro = re.compile(rf"({NAME}) and ({NAME}) went to the ([a-z]+)\.")
        self.action = re.compile(rf"({NAME}) ([a-z]+) the ([a-z]+) ([a-z]+)\.")
        self.gift = re.compile(rf"({NAME}) gave the ([a-z]+) to ({NAME})\.")
        self.given = re.compile(r"The code was #([0-9]+)\.")
        self.typed = re.compile(r"They typed #([0-9]+)\.")
        self.given_at, self.typed_at = (0, 2) if lang.code_digits else (None, None)  # sentence indices

    def is_name(self, word: str) -> bool:
        lang, low = self.language, word.lower()
        return (len(low) == 4 and low[0] in lang.consonants and low[2] in lang.consonants
                and low[1] in lang.vowels and low[3] in lang.vowels)

    def is_code(self, digits: str) -> bool:
        return len(digits) == self.language.code_digits == len(set(digits))

    def check(self, text: str) -> DocumentCheck:
        text = text.strip()
        intro = self.intro.match(text)
        cast: tuple[str, ...] = ()
        introduced = bool(intro and self.is_name(intro[1]) and self.is_name(intro[2]) and intro[1] != intro[2]
                          and intro[3] in self.language.places)
        if intro:
            cast, rest = (intro[1], intro[2]), text[intro.end():]
        else:  # no introduction: judge the sentences after the first one (their names cannot be copied)
            rest = text[text.index(".") + 1:] if "." in text else ""
        sentences = [s.strip() + "." for s in rest.split(".")[:-1]]  # the part after the last '.' is unfinished
        accepted = copied = 0
        code = None
        for k, sentence in enumerate(sentences):
            if k == self.given_at:
                given = self.given.fullmatch(sentence)
                code = given[1] if given and self.is_code(given[1]) else None
                ok = names_ok = code is not None
            elif k == self.typed_at:
                typed = self.typed.fullmatch(sentence)
                ok = bool(typed and self.is_code(typed[1]))
                names_ok = ok and typed[1] == code
            else:
                ok, names_ok = self.sentence(sentence, cast)
            accepted += ok
            copied += ok and names_ok
        typed = self.typed_at is None or len(sentences) > self.typed_at
        return DocumentCheck(introduced, len(sentences), accepted, copied, typed)

    def sentence(self, sentence: str, cast: tuple[str, ...]) -> tuple[bool, bool]:
        """(in the grammar, its names copied from the introduction) of a sentence of the story."""
        gift = self.gift.fullmatch(sentence)
        if gift:
            giver, noun, receiver = gift.groups()
            ok = noun in self.noun_class and self.is_name(giver) and self.is_name(receiver)
            return ok, giver in cast and receiver in cast and giver != receiver
        action = self.action.fullmatch(sentence)
        if action:
            subject, verb, adj, noun = action.groups()
            cls = self.verb_class.get(verb)
            ok = cls is not None and self.noun_class.get(noun) == cls and self.adj_class.get(adj) == cls \
                and self.is_name(subject)
            return ok, subject in cast
        return False, False
