"""Chat and preference records: each format parses, and each mistake is one line naming where and which field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab.config.errors import ConfigError
from llmlab.data.chat import Message, PreferencePair, load_conversations, load_preferences, read_records

SYS, USER, BOT = Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!")
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, indent=2))
    return path


def one_line_error(call, *where: str) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in where:
        assert fragment in message
    return message


# ---- each format parses --------------------------------------------------------------------------

CONVERSATIONS = [
    ({"instruction": "Hi", "output": "Hello!"}, (USER, BOT)),
    ({"instruction": "Hi", "input": "", "output": "Hello!", "extra": 1}, (USER, BOT)),
    ({"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be brief."},
     (SYS, Message("user", "Sum\n\n1 2"), Message("assistant", "3"))),
    ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello!"}, {"from": "user", "value": "Bye"},
                        {"from": "assistant", "value": "Bye!"}]},
     (SYS, USER, BOT, Message("user", "Bye"), Message("assistant", "Bye!"))),
    ({"messages": msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")), "id": 7}, (SYS, USER, BOT)),
]


@pytest.mark.parametrize("write", [write_json, write_jsonl])
def test_each_conversation_format_parses(tmp_path, write):
    path = write(tmp_path / f"chat{'.json' if write is write_json else '.jsonl'}", [r for r, _ in CONVERSATIONS])
    assert load_conversations([path]) == [expected for _, expected in CONVERSATIONS]


PREFERENCES = [
    ({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}, (USER,)),
    ({"prompt": msgs(("system", "Be brief."), ("user", "Hi")), "chosen": "Hello!", "rejected": "Go away."},
     (SYS, USER)),
    ({"prompt": [{"from": "human", "value": "Hi"}], "chosen": [{"from": "gpt", "value": "Hello!"}],
      "rejected": msgs(("assistant", "Go away."))}, (USER,)),
    # full conversations: the shared messages before the replies are the prompt
    ({"chosen": msgs(("user", "Hi"), ("assistant", "Hello!")),
      "rejected": msgs(("user", "Hi"), ("assistant", "Go away."))}, (USER,)),
    # a prompt repeated at the start of the full conversations is not doubled
    ({"prompt": "Hi", "chosen": msgs(("user", "Hi"), ("assistant", "Hello!")),
      "rejected": msgs(("user", "Hi"), ("assistant", "Go away."))}, (USER,)),
    # ... and messages that follow on from the prompt extend it
    ({"prompt": "Hi", "chosen": msgs(("assistant", "Yes?"), ("user", "Hi"), ("assistant", "Hello!")),
      "rejected": msgs(("assistant", "Yes?"), ("user", "Hi"), ("assistant", "Go away."))},
     (USER, Message("assistant", "Yes?"), USER)),
]


@pytest.mark.parametrize("record,prompt", PREFERENCES)
def test_each_preference_shape_parses(tmp_path, record, prompt):
    path = write_jsonl(tmp_path / "pairs.jsonl", [record])
    assert load_preferences([path]) == [PreferencePair(prompt, "Hello!", "Go away.")]


def test_a_json_file_may_hold_one_record(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(GOOD))
    assert list(read_records(path)) == [(GOOD, f"{path}: record 1")]


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n\n  \n{json.dumps(GOOD)}\n")
    assert [where for _, where in read_records(path)] == [f"{path}:1", f"{path}:4"]


def test_line_separator_inside_a_jsonl_string_is_not_a_line_break(tmp_path):
    record = {"instruction": "a\u2028b", "output": "c"}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_conversations([path]) == [(Message("user", "a\u2028b"), Message("assistant", "c"))]


def test_glob_patterns_expand_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"instruction": "b", "output": "B"}])
    write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "output": "A"}])
    assert [c[0].content for c in load_conversations([str(tmp_path / "*.jsonl")])] == ["a", "b"]


# ---- every rule has its error --------------------------------------------------------------------

# (bad record, what the one line must say after where)
BAD_CONVERSATIONS = [
    ({"text": "Hi"}, 'no chat format matches keys ["text"]; expected instruction and output (Alpaca)'),
    ({**GOOD, "conversations": []}, 'keys ["messages", "conversations"] mix the ShareGPT and messages formats'),
    ({"instruction": "Hi"}, "output: expected a non-empty string, got nothing (the key is missing)"),
    ({"output": "Hello!"}, "instruction: expected a non-empty string, got nothing"),
    ({"instruction": 3, "output": "Hello!"}, "instruction: expected a non-empty string, got a number"),
    ({"instruction": "Hi", "output": " "}, "output: expected a non-empty string, got ' '"),
    ({"instruction": "Hi", "input": ["x"], "output": "Hello!"}, "input: expected a string, got a list"),
    ({"instruction": "Hi", "output": "Hello!", "system": ""}, "system: expected a non-empty string, got ''"),
    ({"messages": "Hi"}, "messages: expected a non-empty list of messages, got 'Hi'"),
    ({"messages": []}, "messages: expected a non-empty list of messages, got a list"),
    ({"messages": ["Hi"]}, "messages[0]: expected a message with role and content, got 'Hi'"),
    ({"messages": [{"content": "Hi"}]}, 'messages[0]: expected a message with role and content, got an object '
                                        'with keys ["content"]'),
    ({"conversations": [{"text": "Hi"}]},
     "conversations[0]: expected a message with from and value or role and content"),
    ({"messages": msgs(("bot", "Hi"))}, "messages[0].role: unknown role 'bot'; expected one of system|user|assistant"),
    ({"conversations": [{"from": "bing", "value": "Hi"}]},
     "conversations[0].from: unknown role 'bing'; expected one of system|human|user|gpt|assistant"),
    ({"messages": [{"role": "user", "content": ["Hi"]}]},
     "messages[0].content: expected a non-empty string, got a list"),
    ({"conversations": [{"from": "human"}]}, "conversations[0].value: expected a non-empty string, got nothing"),
    ({"messages": msgs(("user", ""), ("assistant", "Hello!"))}, "messages[0].content: expected a non-empty string"),
    ({"messages": msgs(("user", "Hi"), ("assistant", ""))}, "messages[1].content: expected a non-empty string, got ''"),
    ({"messages": msgs(("system", "a"), ("system", "b"), ("user", "Hi"), ("assistant", "Hello!"))},
     "messages[1].role: a system message may only come first"),
    ({"messages": msgs(("user", "Hi"), ("system", "a"), ("assistant", "Hello!"))},
     "messages[1].role: a system message may only come first"),
    ({"messages": msgs(("assistant", "Hello!"), ("user", "Hi"))}, "messages[0].role: expected 'user'"),
    ({"messages": msgs(("user", "Hi"), ("user", "Hi"), ("assistant", "Hello!"))},
     "messages[1].role: expected 'assistant' (user and assistant alternate, starting with user), got 'user'"),
    ({"messages": msgs(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"))},
     "messages[2].role: expected the last message to be 'assistant' (SFT learns from the assistant's replies)"),
    ({"messages": msgs(("system", "Be brief."))}, "messages: expected a user message after the system message"),
]

BAD_PREFERENCES = [
    ({"prompt": "Hi", "rejected": "No."}, "chosen: expected a string or a list of messages, got nothing"),
    ({"prompt": "Hi", "chosen": "Hello!", "rejected": 3}, "rejected: expected a string or a list of messages, got a"),
    ({"prompt": None, "chosen": "Hello!", "rejected": "No."},
     "prompt: expected a string or a list of messages, got null"),
    ({"prompt": "", "chosen": "Hello!", "rejected": "No."}, "prompt: expected a non-empty string, got ''"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No."}, "chosen: expected a non-empty string, got ''"),
    ({"prompt": "Hi", "chosen": [], "rejected": "No."}, "chosen: expected a non-empty list of messages"),
    ({"prompt": [{"speaker": "user"}], "chosen": "Hello!", "rejected": "No."},
     "prompt[0]: expected a message with role and content or from and value"),
    ({"prompt": msgs(("user", "Hi"), ("assistant", "Hello!")), "chosen": "Again!", "rejected": "No."},
     "prompt[1].role: expected the last message to be 'user'"),
    ({"prompt": msgs(("user", "Hi"), ("user", "Hi")), "chosen": "Hello!", "rejected": "No."},
     "prompt[1].role: expected 'assistant'"),
    ({"prompt": "Hi", "chosen": msgs(("assistant", "Hello!"), ("user", "Ok")), "rejected": "No."},
     "chosen[1].role: the reply (last message of chosen) must be 'assistant', got 'user'"),
    ({"prompt": "Hi", "chosen": "Hello!", "rejected": [{"role": "critic", "content": "No."}]},
     "rejected[0].role: unknown role 'critic'"),
    ({"chosen": msgs(("user", "Hi"), ("assistant", "Hello!")), "rejected": msgs(("user", "Yo"), ("assistant", "No."))},
     "rejected: the messages before the reply must equal chosen's"),
    ({"chosen": "Hello!", "rejected": "No."}, "prompt: missing; give a prompt, or chosen and rejected as full"),
    ({"prompt": "Hi", "chosen": "Hello!", "rejected": "Hello!"}, "rejected: same reply as chosen"),
]


PAIR = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}


def bad_file(tmp_path: Path, good: dict, bad: dict, suffix: str) -> tuple[Path, str]:
    """The bad record second, after a good one, so the error must point at the right line or record."""
    if suffix == ".json":
        return write_json(tmp_path / "data.json", [good, bad]), "data.json: record 2: "
    return write_jsonl(tmp_path / "data.jsonl", [good, bad]), "data.jsonl:2: "


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("record,expected", BAD_CONVERSATIONS)
def test_bad_conversation_is_one_line_naming_where_and_field(tmp_path, suffix, record, expected):
    path, where = bad_file(tmp_path, GOOD, record, suffix)
    message = one_line_error(lambda: load_conversations([path]), where + expected)
    assert message.startswith(str(path))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("record,expected", BAD_PREFERENCES)
def test_bad_preference_is_one_line_naming_where_and_field(tmp_path, suffix, record, expected):
    path, where = bad_file(tmp_path, PAIR, record, suffix)
    message = one_line_error(lambda: load_preferences([path]), where + expected)
    assert message.startswith(str(path))


# ---- file errors ----------------------------------------------------------------------------------

# (file name, content, what the one line must say); {path} is the file
BAD_FILES = [
    ("missing.jsonl", None, "file not found: {path}"),
    ("chat.txt", "{}", "{path}: expected a .json or .jsonl file, got suffix '.txt'"),
    ("chat.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', "{path}:2: invalid JSON ("),
    ("chat.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction" "a"}\n]', "{path}:3: invalid JSON ("),
    ("chat.json", '"hello"', "{path}: expected a list of records (or one record) at the top level, got 'hello'"),
    ("chat.json", "[]", "{path}: no records"),
    ("chat.jsonl", "\n \n", "file is empty: {path}"),
    ("chat.jsonl", '{"instruction": "a", "output": "b"}\n[1, 2]\n',
     "{path}:2: expected a record (a JSON object), got a list"),
]


@pytest.mark.parametrize("name,content,expected", BAD_FILES)
def test_bad_file_is_one_line_naming_it(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    one_line_error(lambda: load_conversations([path]), expected.format(path=path))
    one_line_error(lambda: list(read_records(path)), expected.format(path=path))


def test_pattern_matching_nothing_is_named(tmp_path):
    pattern = str(tmp_path / "*.jsonl")
    one_line_error(lambda: load_preferences([pattern]), f"no file matches {pattern!r}")


def test_no_paths_is_an_error():
    one_line_error(lambda: load_conversations([]), "no files given")
