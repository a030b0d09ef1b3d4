"""A model card for an export (README.md: Hugging Face metadata as YAML front matter, then Markdown the Hub shows),
and the upload of an export to the Hub.

The card is written from what the run directory recorded (llmlab.run_info): its final metrics, the command that
trained it and its resolved config, the one its checkpoint was saved under. A push checks everything it can
without the Hub (offline mode, a token, the Hub reachable) before the export starts, so a user who cannot push
learns it at once, in one line, not after the export.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from llmlab.config.commands import ExportConfig
from llmlab.config.errors import ConfigError
from llmlab.run_info import RunInfo
from llmlab.rundir import CONFIG_FILE, RunDir

CARD = "README.md"
REACH_TIMEOUT_S = 3.0  # a Hub that does not answer a connection in this long is taken as unreachable
HUB_METRICS = {"val_loss": "loss", "val_ppl": "perplexity"}  # metrics.json key -> the Hub's metric type


def dataset_ids(info: RunInfo) -> list[str]:
    """Names for the card's `datasets`: the run's data files, or llmlab's embedded data by name."""
    data = info.get("data", {}) or {}
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "synthetic":
        return ["llmlab-synthetic-language"]
    if kind in ("tasks", "task_prefs"):
        return ["llmlab-tasks"]
    paths = data.get("paths") if isinstance(data, dict) else None
    return [Path(str(p)).name for p in paths or []] or ([str(kind)] if kind else [])


def card_metadata(info: RunInfo, cfg: ExportConfig, family: str, chat: bool) -> str:
    """The YAML front matter (without its --- lines)."""
    from huggingface_hub import EvalResult, ModelCardData

    datasets = cfg.datasets or dataset_ids(info)
    base = cfg.base_model  # a stage run's start is a local directory; the Hub refuses a card naming one
    results = [EvalResult(task_type="text-generation", dataset_type=datasets[0] if datasets else "unknown",
                          dataset_name=info.get("data.kind", "unknown"), dataset_split="validation",
                          metric_type=HUB_METRICS[key], metric_value=round(value, 6), metric_name=label)
               for key, label, value in info.metrics() if key in HUB_METRICS]
    tags = ["llmlab", family, info.stage, *(["chat"] if chat else [])]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license=cfg.license, datasets=datasets or None,
        base_model=base, tags=tags, model_name=Path(cfg.out).name,
        eval_results=results or None)
    return data.to_yaml()


def model_card(info: RunInfo, cfg: ExportConfig, family: str, chat: bool) -> str:
    """README.md for the export directory of this run."""
    name = Path(cfg.out).name
    params = info.summary.get("params")
    size = f" ({params:,} parameters)" if isinstance(params, int) else ""
    kind = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}.get(family, family)
    lines = [f"# {name}", "",
             f"A small decoder-only language model{size} trained with llmlab "
             f"({info.stage} stage), exported as a `transformers` `{kind}`: no custom code."]
    if info.base:
        lines.append(f"It starts from `{info.base}`" + (f", published as `{cfg.base_model}`." if cfg.base_model else
                                                          " (export with `base_model=<its Hub id>` to link it)."))
    lines += ["", "## Use", "```python", *usage(info, cfg, chat), "```", ""]
    if chat:
        lines += ["This model answers in llmlab's chat template, which the tokenizer carries: `<bos> <|system|> text "
                  "<|end|> <|user|> text <|end|> <|assistant|>`; generation stops at `<|end|>`. Greedy decoding "
                  "gives the reply `python -m llmlab.generate` prints for the same prompt with `temperature=0`."]
    else:
        lines += ["The tokenizer starts the text with `<bos>` as llmlab does, so greedy decoding gives the text "
                  "`python -m llmlab.generate` prints for the same prompt with `temperature=0`."]
    lines += ["", "## Training", "The command that trained it:" if info.command else
              "The training command was not recorded (the run was not started from the command line; its config "
              "is below).", ""]
    if info.command:
        lines += ["```", info.command, "```"]
        if info.multirun:
            lines.append("It was one job of a multirun; the command above trains that job alone.")
    lines += ["", "## Final metrics", ""]
    metrics = info.metrics()
    if metrics:
        lines += ["From the run's `metrics.json` (validation split of its data):", "", "| metric | value |",
                  "|---|---|", *[f"| {label} | {value:.6g} |" for _, label, value in metrics]]
        status, steps = info.summary.get("status"), info.summary.get("steps")
        lines += ["", f"The run ended `{status}` after {steps} steps."]
    elif summary_problem := next((p for p in info.problems if p.startswith("metrics.json")), None):
        lines.append(f"Not available: the run's {summary_problem}, so what it reached is unknown.")
    else:
        lines.append("None recorded: the run wrote no final `metrics.json`.")
    lines += ["", "## Config", ""]
    config_file = RunDir(info.root).config
    if info.config:
        lines += [f"The run's `{CONFIG_FILE}`, as its checkpoint `{info.checkpoint.name}` was trained under:", "",
                  "```yaml", config_file.read_text(encoding="utf-8").rstrip("\n"), "```"]
    else:
        lines.append(f"Not available ({'; '.join(info.problems) or 'not recorded'}).")
    lines += ["", "## License", ""]
    if cfg.license == "other":
        lines.append("Not chosen yet: export again with `license=<a Hub license id>` (e.g. `apache-2.0`), or edit "
                     "the `license:` line at the top of this file.")
    else:
        lines.append(f"`{cfg.license}`.")
    lines += ["", "## Limitations", "",
              "A small research model: it has seen only the data above, and nothing it writes has been checked."]
    return f"---\n{card_metadata(info, cfg, family, chat).rstrip()}\n---\n\n" + "\n".join(lines) + "\n"


def usage(info: RunInfo, cfg: ExportConfig, chat: bool) -> list[str]:
    """The card's Python example: load, prompt (a chat model: in its chat template), generate greedily, print."""
    where = json.dumps(cfg.push or cfg.out)
    prompt = cfg.prompt or ("" if chat else str(info.get("trainer.sample_prompt", "") or ""))
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f"model = AutoModelForCausalLM.from_pretrained({where})",
             f"tokenizer = AutoTokenizer.from_pretrained({where})", ""]
    generate = f"output = model.generate(**inputs, max_new_tokens={cfg.max_new_tokens}, do_sample=False)"
    if chat:
        return [*lines, f"messages = [{{\"role\": \"user\", \"content\": {json.dumps(prompt, ensure_ascii=False)}}}]",
                "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                "return_dict=True)", generate,
                "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"]
    return [*lines, f"inputs = tokenizer({json.dumps(prompt, ensure_ascii=False)}, return_tensors=\"pt\")", generate,
            "print(tokenizer.decode(output[0], skip_special_tokens=True))"]


def reachable(url: str, timeout: float) -> str:
    """"" when a TCP connection to url's host opens within timeout, else why not (name lookup included: it has no
    timeout of its own, so it runs in a thread that is abandoned if it takes too long)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append("")
        except OSError as err:
            outcome.append(getattr(err, "strerror", None) or str(err) or type(err).__name__)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def check_push(repo: str) -> str:
    """The token to push with; ConfigError (one line naming push=) when the push cannot work from here."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"push={repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    token = get_token()
    if not token:
        raise ConfigError(f"push={repo}: no Hugging Face token; log in first (hf auth login) or set HF_TOKEN")
    why = reachable(constants.ENDPOINT, REACH_TIMEOUT_S)
    if why:
        raise ConfigError(f"push={repo}: cannot reach {constants.ENDPOINT} ({why}); push when online")
    return token


def push_export(out: Path, repo: str, token: str) -> str:
    """Upload the export directory to the Hub model repo (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=out, commit_message="Upload an llmlab export")
    except Exception as err:  # the Hub's refusals (auth, name, quota) and the network's, as one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"push={repo}: the upload failed ({first}); the export in {out} is complete, "
                          "retry with the same command and overwrite=true") from None
    return str(url)
