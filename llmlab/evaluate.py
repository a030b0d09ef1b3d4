"""`python -m llmlab.evaluate run=<run dir> [checkpoint=best]`: the loss over the whole validation split, task
accuracy and perplexity of any run.

The embedded tasks are written in llmlab's synthetic language, so they are scored only for a run trained on it
(data synthetic, tasks or task_prefs) or when `tasks=true` asks; a run on the user's own text gets its
whole-split loss and one line saying why the tasks were left out.

Whole split (a pretraining run): every validation token scored once in non-overlapping windows, the split rebuilt
from the run's verified config (llmlab.data.validation), so it is the figure the run wrote as val_loss_full at its
end, for any of its checkpoints.

Accuracy: greedy replies to the held-out embedded tasks (the ones a chat run scores at each eval,
`data.eval_tasks` of them), exact match per family. Perplexity: of the reference answers given their
prompts (the SFT loss on the `data.val_tasks` validation conversations). A pretrained run has no role
markers yet: it is scored with the four marker embeddings an SFT run would start from (their mean
embedding), so "after pretrain" is measured on the very model SFT begins with. Results go to the console
and to <run>/evaluation/<checkpoint>.json: one file per checkpoint (and per choice of tasks, and per validation
split), never overwritten by the evaluation of another.

The validation split is checked against the one the run recorded (its checkpoint's manifest, or val_windows.json):
a split that changed since (a corpus edited, LLMLAB_DATA_DIR pointed elsewhere) is one line, not another loss;
allow_data_change=true scores it anyway and says so in the result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_arguments
from llmlab.config.commands import EvaluateConfig
from llmlab.config.errors import ConfigError, exit_on_config_error
from llmlab.rundir import RunDir
from llmlab.rundir.summary import perplexity
from llmlab.store import CONF_DIR, to_dataclass


def evaluate(cfg: EvaluateConfig) -> dict:
    import torch

    from llmlab.data.chat_batches import fixed_batches
    from llmlab.data.chat_template import ChatTemplate
    from llmlab.data.post_training import encode_items, held_out_tasks, task_conversation
    from llmlab.load import load_trained
    from llmlab.train.device import pick_device
    from llmlab.train.task_eval import task_accuracy

    device = pick_device(cfg.device)
    model, tokenizer, checkpoint = load_trained(cfg.run, device, cfg.checkpoint)
    config = run_config(checkpoint)
    whole_split = split_of(model, tokenizer, config, device, recorded_split(checkpoint), cfg.allow_data_change)
    result = {"checkpoint": str(checkpoint), **whole_split}
    out = result_path(checkpoint, cfg, whole_split["val_split_fingerprint"] if "data_changed" in whole_split else None)
    kind = (config.get("data") or {}).get("kind")
    if not (cfg.tasks if cfg.tasks is not None else kind is None or kind in EMBEDDED_LANGUAGE):
        result["tasks_skipped"] = (f"the run trained on data.kind={kind}, not on llmlab's embedded language the "
                                   "tasks are written in (tasks=true scores them anyway)")
        write_result(out, result)
        return result
    template = ChatTemplate(tokenizer)
    model.resize_vocab(template.vocab_size)  # a pretrained run: the markers SFT would add
    model = model.to(device).eval()
    data = cfg.data
    val_tasks, eval_tasks = held_out_tasks(data)  # the held-out tasks a chat run scores itself on
    items, _ = encode_items(template, [task_conversation(t) for t in val_tasks], model.cfg.context_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in fixed_batches(items, 32, tokenizer.eos_id, math.ceil(len(items) / 32)):
            logits = model(batch.input_ids.to(device)).float()
            targets = batch.targets.to(device)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum",
                                                       ignore_index=-100).item()
            count += int((targets != -100).sum())
    accuracy = task_accuracy(model, template, eval_tasks, device) if eval_tasks else {}
    result.update(eval_tasks=len(eval_tasks), task_accuracy=accuracy, answer_loss=total / count,
                  answer_ppl=perplexity(total / count))
    write_result(out, result)
    return result


def result_path(checkpoint: Path, cfg: EvaluateConfig, other_split: str | None = None) -> Path:
    """<run>/evaluation/<checkpoint>.json; a choice of tasks other than the default adds a short hash of it, and a
    validation split other than the run's (allow_data_change) its fingerprint, so evaluations of other checkpoints,
    on other tasks or on other data never overwrite each other."""
    import dataclasses
    import hashlib

    name = checkpoint.name
    choice = {"data": dataclasses.asdict(cfg.data), "tasks": cfg.tasks}
    if choice != {"data": dataclasses.asdict(EvaluateConfig().data), "tasks": None}:
        name += "-" + hashlib.sha256(json.dumps(choice, sort_keys=True).encode()).hexdigest()[:8]
    if other_split:
        name += f"-data-{other_split[:8]}"
    return RunDir.of_checkpoint(checkpoint).evaluation(name)


def write_result(path: Path, result: dict) -> None:
    from llmlab.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    print(f"written: {path}")


def recorded_split(checkpoint: Path) -> str | None:
    """The fingerprint of the validation split the run scored: its checkpoint's manifest's, else val_windows.json's
    (runs from before the manifests recorded it); None when neither says."""
    from llmlab.train import checkpoint as ckpt

    recorded = (ckpt.read_manifest(checkpoint).get("data") or {}).get("val_split")
    if recorded:
        return recorded
    try:
        return json.loads(RunDir.of_checkpoint(checkpoint).val_windows.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


EMBEDDED_LANGUAGE = ("synthetic", "tasks", "task_prefs")  # the data kinds drawn from llmlab's own language


def run_config(checkpoint: Path) -> dict:
    """The checkpoint's run's config_resolved.yaml, verified against the checkpoint; {} when there is none."""
    from llmlab.train import checkpoint as ckpt

    recorded = ckpt.read_manifest(checkpoint).get("config_sha256")
    return RunDir.of_checkpoint(checkpoint).verified_config(recorded, checkpoint)


def split_of(model, tokenizer, config: dict, device, recorded: str | None = None, allow_change: bool = False) -> dict:
    """{val_loss_full, val_tokens_scored} of a pretraining run (config: its resolved config); {} for a chat run.
    recorded: the fingerprint of the split the run scored; another split is refused unless allow_change."""
    from llmlab.data.validation import validation_streams
    from llmlab.train.split_eval import split_fingerprint, split_loss

    if not config:
        return {}
    streams = validation_streams(config.get("data") or {}, tokenizer, Path(config.get("cache_dir", ".")))
    if not streams:
        return {}
    now = split_fingerprint(streams, model.cfg.context_length)
    changed = recorded is not None and now != recorded
    if changed and not allow_change:
        raise ConfigError(f"the validation split is not the one this run scored (fingerprint {now} now, {recorded} "
                          "recorded): its data changed since; restore it, or allow_data_change=true to score the "
                          "data as it is now")
    scored = split_loss(model, streams, model.cfg.context_length, 32, device)
    return {"val_loss_full": scored.loss, "val_tokens_scored": scored.tokens, "val_split_fingerprint": now,
            **({"data_changed": f"scored on a split other than the run's ({recorded})"} if changed else {})}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        result = evaluate(to_dataclass(cfg))
    if "val_loss_full" in result:
        print(f"{Path(result['checkpoint'])}: val loss {result['val_loss_full']:.4f} over the whole validation split "
              f"({result['val_tokens_scored']:,} tokens)")
    if "tasks_skipped" in result:
        print(f"{Path(result['checkpoint'])}: embedded tasks not scored: {result['tasks_skipped']}")
        return
    acc = result["task_accuracy"]
    print(f"{Path(result['checkpoint'])}: task accuracy {acc.get('all', float('nan')):.3f} on "
          f"{result['eval_tasks']} held-out tasks, answer perplexity {result['answer_ppl']:.3f}")
    for family, value in acc.items():
        if family != "all":
            print(f"  {family:8s} {value:.3f}")


if __name__ == "__main__":
    quote_arguments()
    main()
