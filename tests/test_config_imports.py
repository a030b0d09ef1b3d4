"""The config layer imports no torch: composing and validating any config, and the CLI's report of a config mistake,
happen before anything heavy loads (each checked in a fresh process, where nothing else imported torch first)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from test_config import GROUP_OPTIONS, OPTIONAL_GROUPS, needs

HEAVY = ("torch", "numpy", "matplotlib")

# Composes and validates each override list of argv[1] (JSON), then each command's config; prints what it loaded.
COMPOSE_ALL = """
import json, sys
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from llmlab.config.errors import ConfigError
from llmlab.store import CONF_DIR, to_dataclass

def validated(name, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_dataclass(compose(name, overrides=overrides))

built = [type(validated("config", overrides)).__name__ for overrides in json.loads(sys.argv[1])]
for command in ("generate", "chat", "evaluate", "analyze", "export", "merge_lora"):
    out = ["out=y"] if command in ("export", "merge_lora") else []
    built.append(type(validated(command, ["run=x", *out])).__name__)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"built": built, "heavy": heavy}))
"""

# The front door with a config mistake, as `python -m llmlab.run model.n_layers=-1` runs it.
BAD_VALUE = """
import runpy, sys
sys.argv = ["llmlab.run", "model.n_layers=-1", "hydra.run.dir=" + sys.argv[1], "hydra.output_subdir=null",
            "hydra/job_logging=none", "hydra/hydra_logging=none"]
try:
    runpy.run_module("llmlab.run", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(code, "torch" in sys.modules)
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_composing_and_validating_every_config_imports_no_torch():
    overrides = [[f"{'+' if group in OPTIONAL_GROUPS else ''}{group}={option}", *needs(group, option)]
                 for group, option in GROUP_OPTIONS]
    done = python(COMPOSE_ALL, json.dumps(overrides), ",".join(HEAVY))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["built"][:len(overrides)] == ["RunConfig"] * len(overrides)
    assert len(result["built"]) == len(overrides) + 6
    assert result["heavy"] == []


@pytest.mark.slow
def test_a_config_mistake_is_reported_before_torch_loads(tmp_path):
    done = python(BAD_VALUE, str(tmp_path / "run"))
    assert "error: model.n_layers must be > 0, got -1" in done.stderr
    assert done.stdout.split() == ["2", "False"]
