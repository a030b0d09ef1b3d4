"""Checkpoints that are either complete or invisible.

Layout of one checkpoint, checkpoints/step_<N>/:
    model.safetensors   the weights (tied tensors stored once)
    state.pt            optimizer, RNG and data-position state; loads with weights_only=True
    manifest.json       written last: step, file sizes and sha256 checksums, and those of the run's tokenizer
                        files (verified with the checkpoint) and config_resolved.yaml (checked on resume)

The directory is assembled under a temporary name and renamed into place, and checkpoints/latest
(a one-line pointer) is replaced atomically afterwards, so a crash at any moment leaves either the
old checkpoint or the new one, never a half-written directory that looks complete. Loading verifies
the checksums, because safetensors loads a flipped byte silently; resuming walks back from the newest
checkpoint to the first intact one. Nothing is unpickled beyond tensors and plain data.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from llmlab.config.errors import ConfigError
from llmlab.files import publishing, remove_temporaries, sha256_file, write_atomic
from llmlab.model.lora import load_lora_state_dict, lora_state_dict
from llmlab.rundir import RunDir
from llmlab.rundir.layout import MANIFEST

ADAPTERS_ONLY = "lora_adapters"  # manifest["weights"] of a LoRA run: model.safetensors holds the adapters only

BEST = "best"  # checkpoints/best: the weights at the lowest periodic val loss, never rotated away
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    path: Path
    step: int


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, state: dict, meta: dict,
                    keep: int = 0, name: str | None = None) -> Checkpoint:
    """Write checkpoints/step_<step>/ atomically, point checkpoints/latest at it, keep the newest `keep` (0 = all).

    name=BEST: checkpoints/best instead, the weights alone (state = {}); no pointer moves and nothing is rotated."""
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root, "step_")  # left by a process killed mid-write; never a checkpoint
    remove_temporaries(root, BEST)
    final = root / (name or f"step_{step}")
    with publishing(final) as tmp:  # a rerun of the same step (e.g. after a resume) replaces it whole
        adapters = lora_state_dict(model)
        if adapters:  # a LoRA run: the adapters alone, beside meta["base"], the weights they adapt
            save_file({k: v.contiguous() for k, v in adapters.items()}, str(tmp / "model.safetensors"))
            meta = {**meta, "weights": ADAPTERS_ONLY}
        else:
            save_model(model, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        files = {name: file_record(tmp / name) for name in ("model.safetensors", "state.pt")}
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files, **run_files(RunDir(root.parent)), **meta,
                    **({"trainer_state": False} if name == BEST else {})}
        write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2))
    if name is not None:
        return Checkpoint(final, step)
    write_atomic(root / "latest", final.name + "\n")
    if keep:
        older = [c for c in list_checkpoints(root) if c.step < step]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def run_files(run: RunDir) -> dict:
    """What a checkpoint needs of its run directory, checksummed: the tokenizer its ids mean something in, and the
    config it was trained under."""
    record: dict = {}
    if run.tokenizer.is_dir():
        record["tokenizer_files"] = {str(p.relative_to(run.root)): file_record(p)
                                     for p in sorted(run.tokenizer.rglob("*")) if p.is_file()}
    config = run.config
    if config.is_file():
        record["config_sha256"] = sha256_file(config)
    return record


def check_file(file: Path, expected: dict, what: str) -> None:
    """ConfigError naming the file when it is missing, of another size or another checksum than recorded."""
    if not file.is_file():
        raise ConfigError(f"{what} {file} is missing")
    size = file.stat().st_size
    if size != expected["bytes"]:
        kind = "truncated" if size < expected["bytes"] else "longer than written"
        raise ConfigError(f"{what} {file} is {kind}: {size} bytes, the manifest says {expected['bytes']}")
    if sha256_file(file) != expected["sha256"]:
        raise ConfigError(f"{what} {file} is corrupt: its sha256 does not match the manifest")


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"checkpoint {path} is incomplete: {MANIFEST} is missing")
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"checkpoint {manifest_path} is not valid JSON") from None


def verify_checkpoint(path: Path) -> dict:
    """The manifest of a complete, intact checkpoint; ConfigError naming the file otherwise."""
    manifest = read_manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"checkpoint {path / MANIFEST} lists no files")
    for name, expected in files.items():
        check_file(path / name, expected, "checkpoint file")
    run_dir = RunDir.of_checkpoint(path).root
    for name, expected in manifest.get("tokenizer_files", {}).items():  # older checkpoints record none
        check_file(run_dir / name, expected, "the run's tokenizer file")
    return manifest


def holds_trainer_state(path: Path, manifest: dict) -> bool:
    """Whether a checkpoint can be resumed: best holds the weights alone (older manifests do not say so)."""
    return manifest.get("trainer_state", path.name != BEST) is not False


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete-looking checkpoints (a manifest is present), oldest first."""
    found = []
    for path in root.glob("step_*"):
        if (path / MANIFEST).is_file() and path.name[5:].isdigit():
            found.append(Checkpoint(path, int(path.name[5:])))
    return sorted(found, key=lambda c: c.step)


def find_checkpoint(path: Path) -> Path | None:
    """A checkpoint directory from a run directory, a checkpoints/ directory or a step_<N> directory.

    Prefers the `latest` pointer; falls back to the newest complete checkpoint if it is missing.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    root = RunDir.checkpoints_of(path)
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / MANIFEST).is_file():
            return target
    complete = list_checkpoints(root)
    return complete[-1].path if complete else None


def select_checkpoint(path: Path, which: str = "latest") -> tuple[Path | None, dict | None, list[str]]:
    """The verified checkpoint `which` (latest | best | step_<N>) of a run directory or its checkpoints/, or the
    checkpoint directory `path` names itself: (checkpoint, manifest, why newer ones were passed over).

    latest walks back past damaged checkpoints (saying so); best and step_<N> are one choice, never swapped for
    another: ConfigError when it is missing or damaged. (None, None, []) when a run has no checkpoint yet."""
    path = Path(path)
    if (path / MANIFEST).is_file():  # one checkpoint named explicitly
        if which not in ("latest", path.name):
            raise ConfigError(f"checkpoint={which}: {path} is one checkpoint already ({path.name}); give its run "
                              "directory to choose another")
        return path, verify_checkpoint(path), []
    root = RunDir.checkpoints_of(path)
    if which == "latest":
        found, skipped = newest_intact(root)
        return found, read_manifest(found) if found else None, skipped
    if which != BEST and not (which.startswith("step_") and which[5:].isdigit()):
        raise ConfigError(f"checkpoint={which}: expected latest, best or step_<N>")
    chosen = root / which
    if not (chosen / MANIFEST).is_file():
        have = [c.path.name for c in list_checkpoints(root)] + ([BEST] if (root / BEST / MANIFEST).is_file() else [])
        raise ConfigError(f"checkpoint={which}: {chosen} is not a complete checkpoint (this run has: "
                          f"{', '.join(have) or 'none'})")
    return chosen, verify_checkpoint(chosen), []


def newest_intact(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under root whose files match its manifest, and why each newer one was passed over.

    ConfigError when there are checkpoints and none is intact: starting afresh would overwrite the run.
    """
    skipped = []
    candidates = list_checkpoints(root)
    for candidate in reversed(candidates):
        try:
            verify_checkpoint(candidate.path)
        except ConfigError as err:
            skipped.append(str(err))
            continue
        return candidate.path, skipped
    if candidates:
        raise ConfigError(f"no intact checkpoint in {root}: {'; '.join(skipped)}")
    return None, skipped


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """The checkpoint's weights into model; an adapters-only checkpoint needs the base weights in model already."""
    if read_manifest(path).get("weights") == ADAPTERS_ONLY:
        try:
            load_lora_state_dict(model, load_file(str(path / "model.safetensors")))
        except ValueError as e:
            raise ConfigError(f"checkpoint {path}: {e}") from None
        return
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {path} does not match this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def load_state(path: Path) -> dict:
    """Trainer state; weights_only=True means a pickle that would run code is refused."""
    file = path / "state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ConfigError(f"checkpoint file {file} holds objects other than tensors and plain data; refused to "
                          f"load it (it could run code): {reason}") from None
