"""`python -m llmlab.evaluate run=<run dir> data=tasks`: task accuracy and perplexity of any run.

Accuracy: greedy replies to the held-out embedded tasks (the ones a chat run scores at each eval,
`data.eval_tasks` of them), exact match per family. Perplexity: of the reference answers given their
prompts (the SFT loss on the `data.val_tasks` validation conversations). A pretrained run has no role
markers yet: it is scored with the four marker embeddings an SFT run would start from (their mean
embedding), so "after pretrain" is measured on the very model SFT begins with. Results go to the console
and to <run>/evaluation.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig

from llmlab.config.argv import quote_path_arguments
from llmlab.config.commands import EvaluateConfig
from llmlab.config.errors import exit_on_config_error
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
    model, tokenizer, checkpoint = load_trained(cfg.run, device)
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
    result = {"checkpoint": str(checkpoint), "eval_tasks": len(eval_tasks), "task_accuracy": accuracy,
              "answer_loss": total / count, "answer_ppl": math.exp(total / count)}
    (checkpoint.parent.parent / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        result = evaluate(to_dataclass(cfg))
    acc = result["task_accuracy"]
    print(f"{Path(result['checkpoint'])}: task accuracy {acc.get('all', float('nan')):.3f} on "
          f"{result['eval_tasks']} held-out tasks, answer perplexity {result['answer_ppl']:.3f}")
    for family, value in acc.items():
        if family != "all":
            print(f"  {family:8s} {value:.3f}")


if __name__ == "__main__":
    quote_path_arguments()
    main()
