"""What llmlab publishes (checkpoints, exports, caches) gets the modes the umask gives any new file, so a colleague
on a shared machine reads the weights as they read the rest of the run."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import run_config
from safetensors.torch import save_file

from llmlab.export import ExportConfig, export_run
from llmlab.files import current_umask, publishing
from llmlab.runner import Run


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask, directory, file", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_a_published_directory_and_its_weights_follow_the_umask(tmp_path, mask, directory, file):
    with umask(mask):
        assert current_umask() == mask
        with publishing(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors alone writes 0600
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "notes.txt").write_text("x")
    found = modes(tmp_path / "out")
    assert found == {".": directory, "model.safetensors": file, "sub": directory, "sub/notes.txt": file}


@pytest.mark.slow
def test_a_runs_checkpoints_and_its_export_are_readable_by_others_under_umask_022(tmp_path):
    with umask(0o022):
        Run(run_config(tmp_path, ["trainer.max_steps=2", "trainer.checkpoint_every=2"])).execute()
        export_run(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / "exported")))
    for root in (tmp_path / "run" / "checkpoints", tmp_path / "exported"):
        found = modes(root)
        assert "model.safetensors" in "".join(found)
        private = {name: oct(mode) for name, mode in found.items() if not mode & stat.S_IROTH}
        assert not private, private
