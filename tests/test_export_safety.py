"""`python -m llmlab.export ... overwrite=true` only ever replaces an earlier export: never the working directory, the
run being exported (or what holds it, or anything inside it), a directory with other content, nor a file. Each
refusal is one line naming `out`, and nothing is changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from llmlab.config.errors import ConfigError
from llmlab.export import ExportConfig, export_run
from llmlab.runner import Run
from tests.conftest import run_cli, run_config


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under root, with the sha256 of each file."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A working directory holding a trained run (`run/`) and a file of the user's."""
    root = tmp_path_factory.mktemp("workspace")
    Run(run_config(root, ["trainer.max_steps=2", "trainer.checkpoint_every=2", "monitors=none"])).execute()
    shutil.rmtree(root / "cache")
    (root / "notes.txt").write_text("my notes\n")
    return root


def export(workspace: Path, out, run=None, overwrite: bool = True) -> Path:
    return export_run(ExportConfig(run=str(run or workspace / "run"), out=str(out), overwrite=overwrite))


def refused(workspace: Path, out, match: str, run=None, overwrite: bool = True) -> None:
    before = snapshot(workspace)
    with pytest.raises(ConfigError, match=match) as err:
        export(workspace, out, run, overwrite)
    assert str(err.value).startswith((f"out={out} ", f"out={out}: ")) and "\n" not in str(err.value)
    assert snapshot(workspace) == before


@pytest.mark.slow
def test_out_dot_from_the_cli_leaves_the_working_directory_as_it_was(workspace):
    before = snapshot(workspace)
    result = run_cli("llmlab.export", ["run=run", "out=.", "overwrite=true"], cwd=workspace)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: out=. is the working directory; an export never replaces it: "
                                     "choose a new directory, e.g. out=exported/<name>")
    assert snapshot(workspace) == before and (workspace / "notes.txt").read_text() == "my notes\n"


@pytest.mark.slow
def test_out_an_existing_file_from_the_cli_is_one_line(workspace):
    before = snapshot(workspace)
    result = run_cli("llmlab.export", ["run=run", "out=notes.txt"], cwd=workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: out=notes.txt is a file, not a directory: "
                                     "choose a directory for the export")
    assert snapshot(workspace) == before
    refused(workspace, workspace / "notes.txt", "is a file, not a directory")  # overwrite=true: the same
    refused(workspace, workspace / "notes.txt" / "model", "is a file, so no directory can be made under it")


@pytest.mark.slow
@pytest.mark.parametrize(("out", "run", "where"), [
    ("run", "run", "is"),
    ("run", "run/checkpoints/step_2", "is"),  # the run named by one of its checkpoints
    ("run/checkpoints", "run", "is inside"),
    ("run/tokenizer", "run/checkpoints", "is inside"),
    ("run/hf", "run", "is inside"),  # not there yet, but inside the run all the same
])
def test_the_run_being_exported_and_anything_inside_it_are_refused(workspace, out, run, where):
    refused(workspace, workspace / out, f"{where} the run being exported \\(run=", run=workspace / run)


@pytest.mark.slow
def test_a_directory_that_holds_the_run_is_refused(workspace, tmp_path):
    # the workspace itself is not the working directory here: it is refused for holding the run
    refused(workspace, workspace, "holds the run being exported")
    refused(workspace, workspace.parent, "holds the run being exported")


@pytest.mark.slow
def test_a_directory_with_other_content_is_refused(workspace, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "data.txt").write_text("keep me\n")
    refused(tmp_path, other, r"is not an earlier export \(no llmlab_export.json in it\), and overwrite=true only",
            run=workspace / "run")
    refused(tmp_path, other, r"exists and is not empty, and is not an earlier export", run=workspace / "run",
            overwrite=False)
    assert (other / "data.txt").read_text() == "keep me\n"


@pytest.mark.slow
def test_an_earlier_export_is_replaced_and_stale_temporaries_beside_it_removed(workspace, tmp_path):
    out = tmp_path / "exported"
    export(workspace, out, overwrite=False)
    record = json.loads((out / "llmlab_export.json").read_text())
    assert sorted(record["files"]) == sorted(p.name for p in out.iterdir())
    refused(tmp_path, out, "exists and is not empty; choose another directory or overwrite=true",
            run=workspace / "run", overwrite=False)

    # what a killed export left (publishing's .tmp_<name>.<8 random>[.old]); others' temporaries are not ours
    stale = [tmp_path / ".tmp_exported.k1ll3d_x", tmp_path / ".tmp_exported.k1ll3d_x.old"]
    kept = [tmp_path / ".tmp_exported.v2.abcdefgh", tmp_path / ".tmp_other.abcdefgh"]
    for path in stale + kept:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "model.safetensors").write_bytes(b"half")
    (out / "config.json").write_text("{}")  # an earlier export, changed: overwrite writes it anew
    export(workspace, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp_exported.")) == \
        [".tmp_exported.v2.abcdefgh"]

    (out / "README.md").write_text("my model card\n")  # added by hand: overwrite would lose it
    refused(tmp_path, out, r"is an earlier export but also holds what no export wrote \(README.md\)",
            run=workspace / "run")
    (out / "README.md").unlink()
    (out / "llmlab_export.json").write_text('{"family": ')  # torn: no longer recognisable as an export
    refused(tmp_path, out, r"is not an earlier export \(its llmlab_export.json is not readable", run=workspace / "run")


@pytest.mark.slow
def test_a_symbolic_link_as_out_is_refused(workspace, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    refused(tmp_path, tmp_path / "link", "is a symbolic link", run=workspace / "run")
