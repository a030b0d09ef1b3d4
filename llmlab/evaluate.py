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
and to <run>/evaluation.json.

pass@k (`k=8`): pass@1 is the greedy reply's exact match, pass@k the unbiased estimate from `samples` (default k)
replies per task at `temperature` (llmlab.train.pass_at_k), each with a 95% bootstrap interval over the prompts,
for all tasks, per family and per graded family's level (`sum/3`). `compare=<run>` scores another checkpoint on
the same prompts with the same draws and gives the paired differences (the sweep report's bootstrap,
llmlab.sweep.intervals). The per-prompt scores go to evaluation.json too, for comparisons across seeds.
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
    whole_split = split_of(model, tokenizer, config, device)
    result = {"checkpoint": str(checkpoint), **whole_split}
    kind = (config.get("data") or {}).get("kind")
    if not (cfg.tasks if cfg.tasks is not None else kind is None or kind in EMBEDDED_LANGUAGE):
        result["tasks_skipped"] = (f"the run trained on data.kind={kind}, not on llmlab's embedded language the "
                                   "tasks are written in (tasks=true scores them anyway)")
        (checkpoint.parent.parent / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
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
                  answer_ppl=math.exp(total / count))
    if cfg.k:
        result["pass_at_k"] = pass_at_k_of(cfg, model, template, eval_tasks, device)
    (checkpoint.parent.parent / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def pass_at_k_of(cfg: EvaluateConfig, model, template, tasks: list, device) -> dict:
    """pass@1 and pass@k with intervals (all, per family, per level), the per-prompt scores, and the paired
    differences against cfg.compare's checkpoint."""
    from llmlab.sweep.intervals import compare_scores, score_interval
    from llmlab.train.pass_at_k import pass_scores

    if not tasks:
        raise ConfigError("k > 0 needs held-out tasks to sample: data.eval_tasks is 0")

    def scores_of(a_model):
        return pass_scores(a_model, template, tasks, device, cfg.k, cfg.samples, cfg.temperature, cfg.seed)

    ours = scores_of(model)
    names = {"pass@1": ours.greedy, f"pass@{cfg.k}": ours.sampled}
    found = {"k": cfg.k, "samples": ours.n, "temperature": cfg.temperature, "seed": cfg.seed,
             "sampled_completions": ours.n * len(tasks),
             "groups": {name: {g: score_interval([values[i] for i in idx])
                               for g, idx in groups_of(tasks).items()} for name, values in names.items()},
             "per_prompt": {**names, "right": ours.right}}
    if cfg.compare:
        from llmlab.load import load_trained

        other, _, other_checkpoint = load_trained(cfg.compare, device, cfg.checkpoint)
        other.resize_vocab(template.vocab_size)
        theirs = scores_of(other.to(device).eval())
        found["compare"] = {"checkpoint": str(other_checkpoint), **{
            name: vars(compare_scores([names[name]], [values]))
            for name, values in (("pass@1", theirs.greedy), (f"pass@{cfg.k}", theirs.sampled))}}
    return found


def groups_of(tasks: list) -> dict[str, list[int]]:
    """Indices of the tasks of "all", of each family and of each graded family's level."""
    from llmlab.data.tasks import group_of

    groups: dict[str, list[int]] = {"all": list(range(len(tasks)))}
    for i, task in enumerate(tasks):
        groups.setdefault(task.family, []).append(i)
        if task.level:
            groups.setdefault(group_of(task), []).append(i)
    return groups


EMBEDDED_LANGUAGE = ("synthetic", "tasks", "task_prefs")  # the data kinds drawn from llmlab's own language


def run_config(checkpoint: Path) -> dict:
    """The checkpoint's run's config_resolved.yaml, verified against the checkpoint; {} when there is none."""
    import yaml

    from llmlab.files import sha256_file
    from llmlab.train import checkpoint as ckpt

    config_file = checkpoint.parent.parent / "config_resolved.yaml"
    if not config_file.is_file():
        return {}
    recorded = ckpt.read_manifest(checkpoint).get("config_sha256")
    if recorded and sha256_file(config_file) != recorded:
        raise ConfigError(f"{config_file} has changed since checkpoint {checkpoint} was written")
    return yaml.safe_load(config_file.read_text()) or {}


def split_of(model, tokenizer, config: dict, device) -> dict:
    """{val_loss_full, val_tokens_scored} of a pretraining run (config: its resolved config); {} for a chat run."""
    from llmlab.data.validation import validation_streams
    from llmlab.train.split_eval import split_loss

    if not config:
        return {}
    streams = validation_streams(config.get("data") or {}, tokenizer, Path(config.get("cache_dir", ".")))
    if not streams:
        return {}
    scored = split_loss(model, streams, model.cfg.context_length, 32, device)
    return {"val_loss_full": scored.loss, "val_tokens_scored": scored.tokens}


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
    if "pass_at_k" in result:
        print_pass_at_k(result["pass_at_k"])


def print_pass_at_k(found: dict) -> None:
    from llmlab.sweep.intervals import Difference, describe_score

    print(f"pass@k: {found['samples']} replies per task at temperature {found['temperature']} "
          f"({found['sampled_completions']} sampled), 95% intervals over the prompts")
    names = list(found["groups"])
    print(f"  {'group':10s} " + " ".join(f"{name:>22s}" for name in names))
    for group in found["groups"][names[0]]:
        cells = [found["groups"][name][group] for name in names]
        print(f"  {group:10s} " + " ".join(f"{m:6.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in cells))
    if "compare" in found:
        print(f"paired against {found['compare']['checkpoint']} (this run minus it, same prompts and draws):")
        for name in names:
            print("  " + describe_score(name, Difference(**found["compare"][name])))


if __name__ == "__main__":
    quote_arguments()
    main()
