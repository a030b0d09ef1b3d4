"""The model card an export writes with card=true (YAML front matter the Hub reads, then Markdown naming the training
command, the final metrics and the config), and push=, which fails at once and in one line where it cannot work."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from llmlab import card
from llmlab.config.commands import ExportConfig
from llmlab.config.errors import ConfigError
from llmlab.export import export_run
from llmlab.files import sha256_file
from llmlab.run_info import read_run_info

COMMAND = ["+debug=fast", "stage=sft", "data=tasks", "stage.init_from=outputs/base", "trainer.lr=0.002"]


def split_card(text: str) -> tuple[dict, str]:
    """(front matter, Markdown body) of a model card; fails unless the card starts with a YAML block."""
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def fake_run(root: Path, config: dict, overrides: list[str] | None = COMMAND) -> tuple[Path, dict]:
    """A run directory's records (no weights: the card reads none) and its checkpoint's manifest."""
    checkpoint = root / "checkpoints" / "step_12"
    checkpoint.mkdir(parents=True)
    (root / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (root / "metrics.json").write_text(json.dumps({"status": "completed", "steps": 12, "params": 28160,
                                                   "val_loss": 1.25, "val_ppl": 3.4903, "train_loss": 1.1,
                                                   "wall_s": 3.0, "bigram_loss": None}))
    if overrides is not None:
        (root / ".hydra").mkdir()
        (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return checkpoint, {"config_sha256": sha256_file(root / "config_resolved.yaml")}


CONFIG = {"model": {"name": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 4, "context_length": 32},
          "data": {"kind": "tasks", "train_tasks": 4000}, "stage": {"name": "sft", "init_from": "outputs/base"},
          "trainer": {"max_steps": 12, "lr": 0.002}, "seed": 0}


def test_card_is_yaml_front_matter_the_hub_reads_then_markdown_with_command_metrics_and_config(tmp_path):
    checkpoint, manifest = fake_run(tmp_path / "run", CONFIG)
    info = read_run_info(checkpoint, manifest)
    text = card.model_card(info, ExportConfig(run="r", out="exported/tiny-sft"), "llama", chat=True)
    meta, body = split_card(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "other" and "Not chosen yet" in body  # the placeholder, and what to do about it
    assert meta["datasets"] == ["llmlab-tasks"] and {"llmlab", "llama", "sft", "chat"} <= set(meta["tags"])
    assert "base_model" not in meta  # outputs/base is no Hub id: the Hub would refuse the card
    assert "It starts from `outputs/base` (export with `base_model=<its Hub id>` to link it)." in body
    results = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"loss": 1.25, "perplexity": 3.4903}
    assert "python -m llmlab.run +debug=fast stage=sft data=tasks stage.init_from=outputs/base trainer.lr=0.002" in body
    assert "| val loss | 1.25 |" in body and "| train loss | 1.1 |" in body and "wall" not in body
    assert "```yaml\n" + (tmp_path / "run" / "config_resolved.yaml").read_text().rstrip("\n") + "\n```" in body
    assert body.startswith("\n# tiny-sft\n")

    hub = card.model_card(info, ExportConfig(run="r", out="o", license="apache-2.0", base_model="me/tiny-base",
                                             datasets=["me/tasks"]), "llama", chat=True)
    meta, body = split_card(hub)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "me/tiny-base" and meta["datasets"] == ["me/tasks"]


def test_card_says_what_it_could_not_read(tmp_path):
    config = {**CONFIG, "stage": {"name": "pretrain"}, "data": {"kind": "text", "paths": ["corpus/a.txt"]}}
    checkpoint, manifest = fake_run(tmp_path / "run", config, overrides=None)
    meta, body = split_card(card.model_card(read_run_info(checkpoint, manifest), ExportConfig(run="r", out="o"),
                                            "gpt2", chat=False))
    assert meta["datasets"] == ["a.txt"] and "chat" not in meta["tags"] and "starts from" not in body
    assert "training command was not recorded" in body

    (tmp_path / "run" / "config_resolved.yaml").write_text("model: {name: other}\n")  # changed since the checkpoint
    info = read_run_info(checkpoint, manifest)
    assert info.config == {} and "name: other" not in card.model_card(info, ExportConfig(run="r", out="o"), "gpt2",
                                                                       chat=False)
    assert any("not the config step_12 was trained under" in p for p in info.problems)


@pytest.mark.parametrize("setting,message", [
    ("offline", "push=me/tiny: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push"),
    ("no token", "push=me/tiny: no Hugging Face token; log in first (hf auth login) or set HF_TOKEN"),
    ("refused", "push=me/tiny: cannot reach http://127.0.0.1:"),
    ("silent", "push=me/tiny: cannot reach https://hf.co (no answer within 3 s)"),
])
def test_push_that_cannot_work_fails_at_once_in_one_line_before_anything_is_exported(tmp_path, monkeypatch, setting,
                                                                                     message):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", setting == "offline")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None if setting == "no token" else "hf_test")
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # refused: a machine without network; silent: a name lookup or connection that never answers (a firewall that
    # drops packets), which must not hold the command past the reach timeout
    endpoint = f"http://127.0.0.1:{port}" if setting == "refused" else "https://hf.co"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    if setting == "silent":
        def never_answers(*args, **kwargs):
            time.sleep(8)
            raise TimeoutError("timed out")

        monkeypatch.setattr(card.socket, "create_connection", never_answers)
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        export_run(ExportConfig(run=str(tmp_path / "no_run"), out=str(tmp_path / "out"), push="me/tiny"))
    assert time.monotonic() - start < 5
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_card_from_the_command_line_names_the_training_command(cli_runs, tmp_path):
    out = tmp_path / "exported"
    done = run_cli("llmlab.export", [f"run={cli_runs / 'sft'}", f"out={out}", "card=true"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    meta, body = split_card((out / "README.md").read_text())
    overrides = yaml.safe_load((cli_runs / "sft" / ".hydra" / "overrides.yaml").read_text())
    assert "python -m llmlab.run " + " ".join(overrides) in body and "stage=sft" in overrides
    val_loss = json.loads((cli_runs / "sft" / "metrics.json").read_text())["val_loss"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(val_loss, rel=1e-5)
    assert "README.md" in json.loads((out / "llmlab_export.json").read_text())["files"]
    again = run_cli("llmlab.export", [f"run={cli_runs / 'sft'}", f"out={out}", "overwrite=true"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # an export with its card is still an export to replace
    assert not (out / "README.md").exists()


@pytest.mark.slow
def test_push_offline_from_the_command_line_is_one_line(cli_runs, tmp_path):
    out = tmp_path / "exported"
    started = time.monotonic()
    done = run_cli("llmlab.export", [f"run={cli_runs / 'base'}", f"out={out}", "card=true", "push=me/tiny"],
                   cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_test"})
    took = time.monotonic() - started
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: push=me/tiny: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push"]
    assert not out.exists()
    print(f"push offline: the command ended in {took:.1f} s (Python and llmlab's imports included)")


@pytest.mark.slow
def test_push_uploads_the_export_with_its_card(cli_runs, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeHub:  # the Hub's client, as far as push uses it
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo, repo_type, exist_ok):
            calls.append(("create", repo, repo_type, exist_ok))
            return f"https://huggingface.co/{repo}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr("llmlab.export.check_push", lambda repo: "hf_test")
    export_run(ExportConfig(run=str(cli_runs / "sft"), out=str(tmp_path / "exported"), card=True, push="me/tiny"))
    assert calls[:2] == [("token", "hf_test"), ("create", "me/tiny", "model", True)]
    assert calls[2][:2] == ("upload", "me/tiny")
    assert {"README.md", "config.json", "model.safetensors", "llmlab_export.json"} <= set(calls[2][2])

    class RefusingHub(FakeHub):
        def upload_folder(self, repo_id, folder_path, commit_message):
            raise RuntimeError("403 Forbidden: you cannot write to me/tiny\n(a long explanation)")

    monkeypatch.setattr(huggingface_hub, "HfApi", RefusingHub)
    with pytest.raises(ConfigError) as err:
        export_run(ExportConfig(run=str(cli_runs / "sft"), out=str(tmp_path / "again"), card=True, push="me/tiny"))
    assert str(err.value) == (f"push=me/tiny: the upload failed (403 Forbidden: you cannot write to me/tiny); the "
                              f"export in {tmp_path / 'again'} is complete, retry with the same command and "
                              "overwrite=true")
    assert (tmp_path / "again" / "README.md").is_file()


def card_snippet(card_text: str) -> str:
    """The card's Python example, exactly as printed."""
    return card_text.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("run, prompt", [("base", "Dubo and "), ("sft", "Say how many words. the ripe pear")])
def test_the_cards_transformers_snippet_prints_what_generate_prints(cli_runs, tmp_path, run, prompt):
    """The snippet, run as the card prints it, uses transformers alone: the tokenizer adds llmlab's bos, a chat
    model's tokenizer carries its chat template and markers, and generate stops where llmlab's does."""
    out = tmp_path / "exported"
    done = run_cli("llmlab.export", [f"run={cli_runs / run}", f"out={out}", "card=true", f"prompt={prompt}",
                                     "max_new_tokens=30"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    snippet = card_snippet((out / card.CARD).read_text(encoding="utf-8"))
    assert json.dumps(prompt) in snippet and "max_new_tokens=30" in snippet
    theirs = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert theirs.returncode == 0, theirs.stderr
    ours = run_cli("llmlab.generate", [f"run={cli_runs / run}", f"prompt={prompt}", "temperature=0",
                                       "max_new_tokens=30", "device=cpu"], cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    sample = ours.stdout.split("--- sample 1\n", 1)[1]
    if run == "sft":
        assert "apply_chat_template" in snippet
        sample = sample.removeprefix(f"user: {prompt}\nassistant: ")
    assert theirs.stdout == sample
    # something was generated (a tiny model may continue with spaces, so only the closing newline is dropped)
    assert len(sample.removesuffix("\n")) > (len(prompt) if run == "base" else 0)
