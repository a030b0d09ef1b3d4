"""Shared helpers: compose the real config (as the CLI would) with small, fast settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from llmlab.store import CONF_DIR, register_configs, to_dataclass

REPO = Path(__file__).resolve().parents[1]

# A run small enough to train in a few seconds on CPU: the fast preset (conf/debug/fast.yaml) on little data.
# One thread: the default follows the machine's load, and runs that tests compare bitwise across processes must
# compute alike whatever the load.
FAST = ["+debug=fast", "data.train_docs=400", "data.val_docs=40", "trainer.progress=false", "device=cpu",
        "trainer.threads=1"]


def compose_config(overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def run_config(tmp_path: Path, overrides: list[str] = ()):
    """A validated RunConfig with outputs and caches under tmp_path."""
    cfg = compose_config([*FAST, f"cache_dir={tmp_path / 'cache'}", *overrides])
    cfg.out_dir = str(tmp_path / "run")
    return to_dataclass(cfg)


def run_cli(module: str, args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def fast_args(tmp_path) -> list[str]:
    return [*FAST, f"cache_dir={tmp_path / 'cache'}"]


@pytest.fixture(scope="session")
def cli_runs(tmp_path_factory) -> Path:
    """A pretrain run (base/) and an SFT run from it (sft/), each trained by `python -m llmlab.run` in seconds, so
    each has the record a command leaves (.hydra/overrides.yaml)."""
    root = tmp_path_factory.mktemp("cli_runs")
    common = [*(a for a in FAST if not a.startswith("data.")), f"cache_dir={root / 'cache'}"]
    sft = ["stage=sft", "data=tasks", "data.train_tasks=400", "data.val_tasks=40", "data.eval_tasks=10",
           f"stage.init_from={root / 'base'}"]
    for name, extra in (("base", ["data.train_docs=400", "data.val_docs=40"]), ("sft", sft)):
        done = run_cli("llmlab.run", [*common, *extra, f"hydra.run.dir={root / name}"], cwd=root)
        assert done.returncode == 0, done.stderr
    return root
