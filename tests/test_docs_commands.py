"""Every `python -m llmlab.<command> ...` line in README.md, CONTRIBUTING.md, docs/ and experiments/ (fenced blocks and
inline code) composes and validates as the command would, without running it: Hydra commands through Hydra's compose
API and the schemas' checks, argparse commands through their own parsers. A placeholder (`<run dir>`) stands for a
path; an option in brackets (`[--reference 4]`) is taken; `a|b` in a value is each alternative in turn; a multirun
sweep is composed once per swept value."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from llmlab.config.argv import quote_overrides
from llmlab.store import CONF_DIR, to_dataclass
from tests.docs_pages import ROOT, pages, split_fences

HYDRA_COMMANDS = {"run": "config", "prepare": "config", "generate": "generate", "chat": "chat", "evaluate": "evaluate",
                  "analyze": "analyze", "export": "export", "merge_lora": "merge_lora"}
START = re.compile(r"(?:python -m|torchrun\b[^`\n]*?\s-m)\s+llmlab\.([a-z_]+(?:\.[a-z_]+)*)\b(.*)")
PLACEHOLDER = "placeholder"


@dataclass(frozen=True)
class Command:
    where: str  # page:line
    name: str  # run, generate, sweep, ...
    args: tuple[str, ...]
    text: str
    partial: bool  # a mention (`python -m llmlab.generate`, `... overwrite=true`): composed, not validated whole


def command_texts(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of each command line: fenced lines (continuations joined) and inline code spans."""
    text = page.read_text()
    prose, _ = split_fences(text)
    found = []
    lines, fenced, pending, start = text.splitlines(), False, "", 0
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            # a command starts its line (after VAR=value settings); one in a comment or a quote is prose
            if re.match(r"(\w+=\S+\s+)*(python|torchrun)\b", (pending + line).strip()):
                found.append((start, pending + line))
            pending = ""
    for match in re.finditer(r"`([^`]+)`", prose):
        found.append((prose.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return [(n, t) for n, t in found if START.search(t)]


def parse(page: Path) -> list[Command]:
    out = []
    for number, text in command_texts(page):
        match = START.search(text)
        rest = re.sub(r"<[^<>]*>", PLACEHOLDER, match.group(2))
        # an optional part in brackets: its options are taken, a description (`[run overrides]`) is dropped
        rest = re.sub(r"(?:(?<=\s)|^)\[([^\]]*)\]", lambda m: m.group(1) if re.match(r"-|[\w.]+=", m.group(1)) else "",
                      rest)
        try:
            tokens = shlex.split(rest, comments=True)
        except ValueError:  # prose that quotes part of a command: take what stands before the open quote
            tokens = shlex.split(rest.split('"')[0].split("'")[0], comments=True)
        name, hydra = match.group(1), match.group(1) in HYDRA_COMMANDS
        # a mention rather than a whole command: a bare name (but `python -m llmlab.run` is whole), an elision, or
        # a placeholder where a Hydra command takes its key=value overrides (`<overrides>`)
        partial = (not tokens and name != "run") or "..." in tokens or (hydra and PLACEHOLDER in tokens)
        args = [t for t in tokens if t != "..." and not (hydra and t == PLACEHOLDER)]
        where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
        out.append(Command(f"{where}:{number}", name, tuple(args), text.strip(), partial))
    return out


def all_commands() -> list[Command]:
    return [c for page in pages() for c in parse(page)]


def alternatives(args: list[str]) -> list[list[str]]:
    """`key=a|b` is each of a and b (prose lists choices that way); one list per choice, the others at their first."""
    options = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and "|" in value and not value.startswith(("[", "{", "'", '"')):
            options.append([f"{key}={v}" for v in value.split("|")])
        else:
            options.append([arg])
    combos = [[o[0] for o in options]]
    for i, choices in enumerate(options):
        combos += [[*(o[0] for o in options[:i]), c, *(o[0] for o in options[i + 1:])] for c in choices[1:]]
    return combos


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides as single runs: each swept value once (the other sweeps at their first value)."""
    parser = OverridesParser.create()
    parsed = [(o, parser.parse_override(o)) for o in overrides]
    values = []
    for text, override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            values.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            values.append([text])
    points = [[v[0] for v in values]]
    for i, vs in enumerate(values):
        points += [[*(v[0] for v in values[:i]), x, *(v[0] for v in values[i + 1:])] for x in vs[1:]]
    return points


def check_hydra(command: Command) -> None:
    args = [a for a in command.args if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in args):
        raise AssertionError(f"options {args} are not Hydra overrides")
    # `<group>.<field>=<value>` and `+experiment=<name>` show the syntax: no value to compose
    args = [a for a in args if PLACEHOLDER not in a.partition("=")[0]
            and not (a.partition("=")[2] == PLACEHOLDER and (CONF_DIR / a.partition("=")[0].lstrip("+~")).is_dir())]
    for choice in alternatives(quote_overrides(args)):
        points = sweep_points(choice) if len(command.args) != len(args) or "-m" in command.args else [choice]
        for overrides in itertools.islice(points, 12):
            cfg = compose(HYDRA_COMMANDS[command.name], overrides=overrides, return_hydra_config=True)
            if command.partial:  # keys and types checked by composing; the required fields are not given
                continue
            with open_dict(cfg):
                del cfg["hydra"]
                if command.name in ("run", "prepare"):
                    cfg.out_dir = "."
            to_dataclass(cfg)


def check_argparse(command: Command, monkeypatch) -> None:
    args = [a for a in command.args if a != "-m"]
    if command.name not in ("sweep", "bench", "docs"):  # a command this test does not know yet: it must exist
        if importlib.util.find_spec(f"llmlab.{command.name}") is None:
            raise AssertionError(f"no such command: python -m llmlab.{command.name}")
        return
    if command.partial:
        return
    if "--help" in args or "-h" in args:
        return
    if command.name == "sweep":
        import llmlab.sweep.__main__ as sweep

        monkeypatch.setattr(sweep, "write_sweep_report", lambda *a, **k: {"jobs": [], "swept": [], "summary": ""})
        assert sweep.main(args) == 0
    elif command.name == "bench":
        from llmlab.bench.__main__ import BENCHMARKS, main

        for module in BENCHMARKS.values():
            monkeypatch.setattr(module, "main", lambda parsed: None)
        main(args)
    else:
        assert set(args) <= {"--check"}, args


def test_the_pages_hold_commands_of_every_kind():
    names = {c.name for c in all_commands()}
    assert {"run", "generate", "chat", "evaluate", "analyze", "export", "merge_lora", "prepare", "sweep",
            "bench"} <= names, names


def test_a_wrong_command_is_caught(monkeypatch, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```\npython -m llmlab.run trainer.learning_rate=1\n```\nand `python -m llmlab.sweep`, "
                    "`python -m llmlab.nothing x=1`\n")
    bad = parse(page)
    assert [(c.args, c.partial) for c in bad] == [(("trainer.learning_rate=1",), False), ((), True), (("x=1",), False)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        with pytest.raises(Exception, match="learning_rate"):
            check_hydra(bad[0])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit):  # the sweep command needs its directory
        check_argparse(dataclasses.replace(bad[1], partial=False), monkeypatch)
    with pytest.raises(AssertionError, match="no such command"):
        check_argparse(bad[2], monkeypatch)


def test_every_documented_command_composes_and_validates(monkeypatch):
    failures = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            for command in all_commands():
                try:
                    if command.name in HYDRA_COMMANDS:
                        check_hydra(command)
                    else:
                        check_argparse(command, monkeypatch)
                except BaseException as err:  # SystemExit from argparse too
                    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    failures.append(f"{command.where}: {command.text}\n    {message}")
    finally:
        GlobalHydra.instance().clear()
    assert not failures, f"{len(failures)} documented command(s) do not compose:\n" + "\n".join(failures)
