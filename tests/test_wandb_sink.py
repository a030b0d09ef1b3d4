"""logger=wandb: a run's scalars (the trainer's and the monitors') reach a Weights & Biases run, checked offline by
reading the run's own record file; a missing package or a W&B that cannot start is one line before training."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from conftest import run_config

from llmlab.config.errors import ConfigError
from llmlab.config.schema import WandbConfig
from llmlab.runner import Run
from llmlab.sinks.wandb import WandbSink

BLOCK = 32768  # the .wandb file: a 7-byte header, then LevelDB-log records in 32 KiB blocks, each a protobuf Record


def history(run_file: Path) -> dict[int, dict[str, float]]:
    """step -> the values logged at that step, read from an offline run's run-<id>.wandb."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, rows = run_file.read_bytes(), 7, b"", {}
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the block's padding
            pos += left
            continue
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                row = rows.setdefault(record.history.step.num, {})
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                row.update({key: json.loads(value) for key, value in items.items() if not key.startswith("_")})
    return rows


@pytest.mark.slow
def test_a_run_logs_the_trainers_and_the_monitors_scalars_to_an_offline_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = run_config(tmp_path, ["logger=wandb", f"logger.wandb.dir={tmp_path / 'wandb'}", "monitors.attention.every=6",
                                "monitors.max_workers=1"])
    assert Run(cfg).execute().status == "completed"

    (run_file,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    logged = history(run_file)
    out = tmp_path / "run"
    for log in ("metrics.jsonl", "monitors.jsonl"):
        rows = [json.loads(line) for line in (out / log).read_text().splitlines()]
        assert rows
        for row in rows:
            step = row.pop("step")
            assert {k: logged[step][k] for k in row} == pytest.approx(row), (log, step)
    assert any(key.startswith("attention/") for row in logged.values() for key in row)


def test_without_the_package_logger_wandb_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets where it is not installed
    with pytest.raises(ConfigError, match=r"^logger=wandb: the wandb package is not installed; pip install") as err:
        WandbSink(WandbConfig(enabled=True), tmp_path, "run", {})
    assert "\n" not in str(err.value)


def test_a_wandb_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ConfigError, match=r"^logger=wandb \(mode online\): W&B did not start: api_key not configured "
                                          r"\(no-tty\); set WANDB_MODE=offline") as err:
        WandbSink(WandbConfig(enabled=True, mode="online"), tmp_path, "run", {})
    assert "\n" not in str(err.value)
