"""The architecture rules of the design, as import-linter contracts in pyproject.toml: every one is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO

PYPROJECT = REPO / "pyproject.toml"
CONTRACTS = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
# `python -m importlinter.cli` would run nothing and exit 0: call the console script's function instead.
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo", *args, str(PYPROJECT)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_every_rule_of_the_design_is_a_contract():
    assert {c["id"]: c["type"] for c in CONTRACTS} == {
        "model": "forbidden", "data": "forbidden", "config": "forbidden", "files": "forbidden",
        "monitors": "forbidden", "commands": "forbidden", "acyclic": "acyclic_siblings",
        "config-no-torch": "forbidden", "rundir": "forbidden"}
    acyclic = next(c for c in CONTRACTS if c["id"] == "acyclic")
    assert acyclic["ancestors"] == ["llmlab"]


@pytest.mark.slow
@pytest.mark.parametrize("contract", CONTRACTS, ids=[c["id"] for c in CONTRACTS])
def test_the_layers_import_only_downward_and_without_cycles(contract):
    result = lint_imports("--contract", contract["id"])
    kept = result.returncode == 0 and "Contracts: 1 kept, 0 broken." in result.stdout
    assert kept, f"{contract['name']}\n{result.stdout}{result.stderr}"
