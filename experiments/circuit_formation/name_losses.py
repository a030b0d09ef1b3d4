"""Where a checkpoint's validation loss goes, by token category: the two names of a document's introduction (new,
unpredictable), the names repeated later (the recipient of "gave ... to", which the grammar determines, and a
sentence's subject, one of the two characters), each split into its first token and the rest, the code where it is
given (new, random digits) and where it is typed (every digit already in the context), split the same way, and every
other token.

    python experiments/circuit_formation/name_losses.py outputs/<run>/checkpoints/step_500 outputs/<run>/checkpoints/step_1000

Prints, per category: its share of the tokens, its loss in nats per token, its contribution to the mean loss and
how often the model's top-1 prediction is right. On the first 400 validation documents of the embedded language
(the run's own), each fed alone after the end token, as training sees a document (cut at the model's context).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from llmlab.config.schema import SyntheticDataConfig
from llmlab.data.copy_probe import token_ends, token_span
from llmlab.data.sources import annotated_validation
from llmlab.load import load_trained


def categories(text: str, copies, ends: list[int], n: int) -> list[str]:
    """The category of each of the document's n tokens."""
    cat = ["other"] * n
    first, second = text.split(" went ")[0].split(" and ")
    for a, b, name in ((0, len(first), "intro name 1"), (len(first) + 5, len(first) + 5 + len(second),
                                                          "intro name 2")):
        s, e = token_span(ends, a, b)
        cat[s:e] = [name] * (e - s)
    for c in copies:
        if c.kind == "code":
            s, e = token_span(ends, c.source_start, c.source_end)
            cat[s:e] = ["code given"] * (e - s)
        s, e = token_span(ends, c.start, c.end)
        role = "code typed," if c.kind == "code" else "recipient" if c.determined else "subject"
        cat[s:e] = [f"{role} first"] + [f"{role} rest"] * (e - s - 1)
    return cat


@torch.no_grad()
def breakdown(path: str, docs: int = 400) -> None:
    model, tokenizer, checkpoint = load_trained(path)
    model.eval()
    sums, counts, right = {}, {}, {}
    for text, copies in annotated_validation(SyntheticDataConfig())[:docs]:
        encoded = tokenizer.encode(text)
        ends = token_ends(tokenizer, text, encoded)
        cat = categories(text, copies, ends, len(encoded)) + ["other"]  # the closing end token
        ids = [tokenizer.eos_id, *encoded, tokenizer.eos_id][:model.cfg.context_length + 1]  # what the context holds
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
        for k, name in enumerate(cat[:len(ids) - 1]):  # position k predicts token k + 1
            sums[name] = sums.get(name, 0.0) - logp[k, ids[k + 1]].item()
            counts[name] = counts.get(name, 0) + 1
            right[name] = right.get(name, 0) + int(logp[k].argmax().item() == ids[k + 1])
    total = sum(counts.values())
    print(f"{checkpoint}: loss {sum(sums.values()) / total:.4f} over {total} tokens")
    for name in sorted(sums):
        print(f"  {name:16s} tokens {counts[name] / total:.3f}  nats/token {sums[name] / counts[name]:.3f}  "
              f"contribution {sums[name] / total:.4f}  top-1 {right[name] / counts[name]:.2f}")


if __name__ == "__main__":
    for checkpoint_path in sys.argv[1:]:
        breakdown(checkpoint_path)
