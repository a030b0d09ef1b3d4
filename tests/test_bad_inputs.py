"""Bad input through the real CLI: one line naming the field, file or line; a non-zero exit; no traceback;
and the run already in the directory is left exactly as it was.

The same rules are unit-tested where they live (test_config, test_data, test_tokenizers, test_model);
here each one is checked end to end, as a user meets it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, run_cli

FILES = {"empty.txt": b"", "latin1.txt": b"good line\nbad \xff byte\n"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A finished run at run/ (the earlier results that must survive), plus the data files the cases name."""
    root = tmp_path_factory.mktemp("bad_inputs")
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    done = run_cli("llmlab.run", [*FAST, "trainer.max_steps=4", "trainer.checkpoint_every=2",
                                  f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run except Hydra's own record of the latest command (.hydra/), the lock, which names
    the last process that held the directory, and run.log, the log every command run there appends to (a refused
    one says why: the test checks that it only appends)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.name not in (".lock", "run.log")}


# (overrides, what the one line must say); {root} is the workspace
INTO_THE_EXISTING_RUN = [
    (["model=huge"], "Could not find 'model/huge'"),
    (["trainer.lr=fast"], "trainer.lr"),
    (["trainer.learning_rate=0.1"], "learning_rate"),
    (["trainer.lr=0"], "trainer.lr must be > 0"),
    (["trainer.batch_size=-2"], "trainer.batch_size must be > 0"),
    (["trainer.max_steps=0"], "trainer.max_steps must be > 0"),
    (["model.d_model=30"], "model.d_model=30 must be divisible by model.n_heads=4"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3"),
    (["trainer.lr=1e-2"], "holds a run made with another config (trainer.lr: 0.003 there, 0.01 now)"),
    (["trainer.resume=never"], "already holds a run (checkpoint step_4)"),
    (["trainer.resume={root}/nowhere"], "no complete checkpoint found there"),
]
INTO_A_NEW_RUN = [
    (["data=text"], "data.paths"),
    (["data=text", "data.paths=[{root}/missing.txt]"], "data.paths: file not found: {root}/missing.txt"),
    (["data=text", "data.paths=[{root}/empty.txt]"], "data.paths: file is empty: {root}/empty.txt"),
    (["data=text", "data.paths=[{root}/latin1.txt]"], "latin1.txt:2: not valid UTF-8"),
    (["tokenizer=bpe", "tokenizer.vocab_size=100000"], "tokenizer.vocab_size=100000 is too large"),
    (["trainer.batch_size=100000"], "trainer.batch_size=100000 x model.context_length=32"),
]


def check_one_line(result, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(expected in line for line in errors), result.stderr[-600:]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,expected", INTO_THE_EXISTING_RUN)
def test_bad_input_into_an_existing_run_is_one_line_and_changes_nothing(workspace, overrides, expected):
    before, log_before = snapshot(workspace / "run"), (workspace / "run" / "run.log").read_text()
    args = [*FAST, "trainer.max_steps=4", "trainer.checkpoint_every=2", f"cache_dir={workspace / 'cache'}",
            f"hydra.run.dir={workspace / 'run'}", *(o.format(root=workspace) for o in overrides)]
    check_one_line(run_cli("llmlab.run", args, cwd=workspace), expected.format(root=workspace))
    assert snapshot(workspace / "run") == before
    log = (workspace / "run" / "run.log").read_text()
    assert log.startswith(log_before) and log.count("\n") - log_before.count("\n") <= 1  # the error line at most


@pytest.mark.slow
@pytest.mark.parametrize("overrides,expected", INTO_A_NEW_RUN)
def test_bad_data_and_tokenizer_input_is_one_line(workspace, tmp_path, overrides, expected):
    fast = [a for a in FAST if not a.startswith("data.")] if "data=text" in overrides else FAST  # synthetic-only keys
    args = [*fast, f"cache_dir={workspace / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
            *(o.format(root=workspace) for o in overrides)]
    check_one_line(run_cli("llmlab.run", args, cwd=workspace), expected.format(root=workspace))
