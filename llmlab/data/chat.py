"""Chat data for the SFT stage and preference data for the DPO stage, read from JSON or JSONL files.

A conversation record is in one of three shapes, told apart by its keys: Alpaca (instruction, input,
output), ShareGPT (conversations of from/value, or of role/content as minimind writes them) or messages
(role/content). Every mistake in a record is
one ConfigError line that starts with where it is (file:line, or file: record N) and names the field,
so a user can fix a large file without a debugger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmlab.config.errors import ConfigError
from llmlab.data.sources import read_text, resolve_paths

ROLES = ("system", "user", "assistant")
SUFFIXES = (".json", ".jsonl")

# The keys that mark each conversation format; a record must carry the keys of exactly one.
FORMATS = {"Alpaca": ("instruction", "output"), "ShareGPT": ("conversations",), "messages": ("messages",)}

# Why a conversation must end the way it does, said in the error.
WHY_LAST = {"assistant": "SFT learns from the assistant's replies", "user": "the chosen and rejected replies answer it"}

MISSING = object()  # a key absent from a record, told apart from an explicit null


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]  # the conversation so far; ends with a user message
    chosen: str  # the preferred assistant reply
    rejected: str  # the dispreferred assistant reply


@dataclass(frozen=True)
class Shape:
    """How one message object spells its role and content."""

    role_key: str
    content_key: str
    roles: dict[str, str]  # role as spelled in the file -> one of ROLES


MESSAGES = Shape("role", "content", {role: role for role in ROLES})
SHAREGPT = Shape("from", "value", {"system": "system", "human": "user", "user": "user",
                                   "gpt": "assistant", "assistant": "assistant"})

# A message with the field its role came from (e.g. "messages[2].role"), so order errors can point at it.
Turn = tuple[str, Message]


# ---- files ----------------------------------------------------------------------------------------

def load_conversations(paths: list[str | Path]) -> list[tuple[Message, ...]]:
    return [parse_conversation(record, where) for path in expand(paths) for record, where in read_records(path)]


def load_preferences(paths: list[str | Path]) -> list[PreferencePair]:
    return [parse_preference(record, where) for path in expand(paths) for record, where in read_records(path)]


def expand(paths: list[str | Path]) -> list[Path]:
    if not paths:
        raise ConfigError("data.paths: no files given")
    return resolve_paths([str(path) for path in paths])


def read_records(path: Path) -> Iterator[tuple[dict, str]]:
    """Each record with where it is: "file:line" in JSONL, "file: record N" in a JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.paths: file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{path}: expected a .json or .jsonl file, got suffix {path.suffix!r}")
    records = stream_json_lines(path) if path.suffix == ".jsonl" else json_document(path, read_text(path))
    count = 0
    for record, where in records:
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: expected a record (a JSON object), got {describe(record)}")
        count += 1
        yield record, where
    if count == 0:
        raise ConfigError(f"{path}: no records")


def stream_json_lines(path: Path) -> Iterator[tuple[object, str]]:
    """Each line's record, reading the file a line at a time: memory holds one record, whatever the file's size."""
    offset, blank = 0, True
    with path.open("rb") as file:
        for lineno, raw in enumerate(file, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError(f"data.paths: {path}:{lineno}: not valid UTF-8 (byte {offset + err.start}); save "
                                  "the file as UTF-8") from None
            offset += len(raw)
            # Records end at "\n" only: a line iterator cuts there too (U+2028 may stand inside a JSON string).
            if line.strip():
                blank = False
                yield decode(line, path, lineno), f"{path}:{lineno}"
    if blank:
        raise ConfigError(f"data.paths: file is empty: {path}")


def json_document(path: Path, text: str) -> Iterator[tuple[object, str]]:
    data = decode(text, path, 0)
    if isinstance(data, dict):
        data = [data]  # a file of one record
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of records (or one record) at the top level, got {describe(data)}")
    for n, record in enumerate(data, 1):
        yield record, f"{path}: record {n}"


def decode(text: str, path: Path, lineno: int) -> object:
    """lineno is the line text starts on in the file, or 0 when text is the whole file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = lineno or err.lineno
        raise ConfigError(f"{path}:{line}: invalid JSON ({err.msg}, column {err.colno})") from None


# ---- conversations --------------------------------------------------------------------------------

def parse_conversation(record: dict, where: str) -> tuple[Message, ...]:
    fmt = detect_format(record, where)
    if fmt == "Alpaca":
        turns = alpaca_turns(record, where)
    else:
        # minimind's SFT files spell conversations with role/content, as messages do
        field, shapes = ("conversations", (SHAREGPT, MESSAGES)) if fmt == "ShareGPT" else ("messages", (MESSAGES,))
        turns = parse_messages(record[field], field, where, shapes)
        check_turns(turns, where, field, last="assistant")
    return tuple(message for _, message in turns)


def detect_format(record: dict, where: str) -> str:
    found = [name for name, keys in FORMATS.items() if any(key in record for key in keys)]
    if len(found) == 1:
        return found[0]
    keys = json.dumps(list(record))
    if not found:
        raise ConfigError(f"{where}: no chat format matches keys {keys}; expected instruction and output (Alpaca), "
                          "conversations (ShareGPT) or messages")
    raise ConfigError(f"{where}: keys {keys} mix the {' and '.join(found)} formats; expected exactly one")


def alpaca_turns(record: dict, where: str) -> list[Turn]:
    instruction = text(record.get("instruction", MISSING), "instruction", where)
    extra = record.get("input")
    extra = "" if extra is None else extra  # optional and may be empty: many instructions need no input
    if not isinstance(extra, str):
        raise ConfigError(f"{where}: input: expected a string, got {describe(extra)}")
    turns = []
    if record.get("system") is not None:
        turns.append(("system", Message("system", text(record["system"], "system", where))))
    turns.append(("instruction", Message("user", f"{instruction}\n\n{extra}" if extra.strip() else instruction)))
    turns.append(("output", Message("assistant", text(record.get("output", MISSING), "output", where))))
    return turns


def parse_messages(value: object, field: str, where: str, shapes: tuple[Shape, ...]) -> list[Turn]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {field}: expected a non-empty list of messages, got {describe(value)}")
    return [parse_message(item, f"{field}[{i}]", where, shapes) for i, item in enumerate(value)]


def parse_message(item: object, field: str, where: str, shapes: tuple[Shape, ...]) -> Turn:
    shape = next((s for s in shapes if isinstance(item, dict) and s.role_key in item), None)
    if shape is None:
        wanted = " or ".join(f"{s.role_key} and {s.content_key}" for s in shapes)
        raise ConfigError(f"{where}: {field}: expected a message with {wanted}, got {describe(item)}")
    label, name = f"{field}.{shape.role_key}", item[shape.role_key]
    if not isinstance(name, str) or name not in shape.roles:
        raise ConfigError(f"{where}: {label}: unknown role {name!r}; expected one of {'|'.join(shape.roles)}")
    content = text(item.get(shape.content_key, MISSING), f"{field}.{shape.content_key}", where)
    return label, Message(shape.roles[name], content)


def check_turns(turns: list[Turn], where: str, field: str, last: str) -> None:
    """At most one system message, first; then user and assistant alternate from user; `last` speaks last."""
    start = 1 if turns and turns[0][1].role == "system" else 0
    for i, (label, message) in enumerate(turns[start:]):
        expected = ("user", "assistant")[i % 2]
        if message.role == "system":
            raise ConfigError(f"{where}: {label}: a system message may only come first")
        if message.role != expected:
            raise ConfigError(f"{where}: {label}: expected {expected!r} (user and assistant alternate, "
                              f"starting with user), got {message.role!r}")
    if len(turns) == start:
        raise ConfigError(f"{where}: {field}: expected a user message after the system message")
    label, message = turns[-1]
    if message.role != last:
        raise ConfigError(f"{where}: {label}: expected the last message to be {last!r} ({WHY_LAST[last]}), "
                          f"got {message.role!r}")


# ---- preferences ----------------------------------------------------------------------------------

def parse_preference(record: dict, where: str) -> PreferencePair:
    prompt = prompt_turns(record, where)
    chosen_before, chosen = reply(record, "chosen", where)
    rejected_before, rejected = reply(record, "rejected", where)
    if messages_of(chosen_before) != messages_of(rejected_before):
        raise ConfigError(f"{where}: rejected: the messages before the reply must equal chosen's "
                          "(both continue the same prompt)")
    prompt = join_prompt(prompt, chosen_before)
    if not prompt:
        raise ConfigError(f"{where}: prompt: missing; give a prompt, or chosen and rejected as full conversations")
    check_turns(prompt, where, "prompt", last="user")
    if chosen == rejected:
        raise ConfigError(f"{where}: rejected: same reply as chosen; a preference pair needs two different replies")
    return PreferencePair(messages_of(prompt), chosen, rejected)


def prompt_turns(record: dict, where: str) -> list[Turn]:
    value = record.get("prompt", MISSING)
    if value is MISSING:
        return []  # chosen and rejected may carry it as full conversations
    if string_or_list(value, "prompt", where) is list:
        return parse_messages(value, "prompt", where, (MESSAGES, SHAREGPT))
    return [("prompt", Message("user", text(value, "prompt", where)))]


def reply(record: dict, field: str, where: str) -> tuple[list[Turn], str]:
    """The messages before the reply (empty for a plain string) and the reply itself."""
    value = record.get(field, MISSING)
    if string_or_list(value, field, where) is str:
        return [], text(value, field, where)
    turns = parse_messages(value, field, where, (MESSAGES, SHAREGPT))
    label, message = turns[-1]
    if message.role != "assistant":
        raise ConfigError(f"{where}: {label}: the reply (last message of {field}) must be 'assistant', "
                          f"got {message.role!r}")
    return turns[:-1], message.content


def join_prompt(prompt: list[Turn], before: list[Turn]) -> list[Turn]:
    """The messages before the replies extend the prompt; many datasets repeat the prompt there, so don't double it."""
    if messages_of(before[: len(prompt)]) == messages_of(prompt):
        return before
    return prompt + before


def messages_of(turns: list[Turn]) -> tuple[Message, ...]:
    return tuple(message for _, message in turns)


# ---- values ---------------------------------------------------------------------------------------

def text(value: object, field: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {field}: expected a non-empty string, got {describe(value)}")
    return value


def string_or_list(value: object, field: str, where: str) -> type:
    if not isinstance(value, str | list):
        raise ConfigError(f"{where}: {field}: expected a string or a list of messages, got {describe(value)}")
    return type(value)


def describe(value: object) -> str:
    """A value as an error shows it: short, on one line, in JSON's words."""
    if value is MISSING:
        return "nothing (the key is missing)"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, dict):
        return f"an object with keys {json.dumps(list(value))}"
    names = {list: "a list", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
