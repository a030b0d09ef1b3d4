"""A user's own text: a small first file trains with the README's command (the evaluation bounded by what its
validation split holds, said in one warning line), and `python -m llmlab.evaluate` on that run scores its text,
not the embedded tasks written in llmlab's synthetic language."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
from conftest import run_cli


def prose(n_bytes: int, seed: int = 0) -> str:
    """About n_bytes of text with word statistics like a natural language's: words of 1-9 letters drawn by a
    Zipf law from 3000, sentences of 4-20 words, lines of one to three sentences."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    lines, size = [], 0
    while size < n_bytes:
        sentences = []
        for _ in range(rng.randint(1, 3)):
            sentence = rng.choices(words, weights, k=rng.randint(4, 20))
            sentences.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + rng.choice(".?!,;"))
        lines.append(" ".join(sentences))
        size += len(lines[-1]) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def small_corpus_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's own-corpus command on a 200 KB file, with the default model and trainer (a few steps)."""
    root = tmp_path_factory.mktemp("own_text")
    corpus = root / "corpus.txt"
    corpus.write_text(prose(200_000), encoding="utf-8")
    args = ["data=text", f"data.paths=[{corpus}]", "tokenizer=bpe", "trainer.max_steps=2", "trainer.eval_every=2",
            "trainer.threads=1", "trainer.progress=false", "monitors=none", "device=cpu",
            f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}"]
    done = run_cli("llmlab.run", args, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stderr


@pytest.mark.slow
def test_a_200_kb_file_trains_with_the_default_evaluation_bounded_and_one_warning(small_corpus_run):
    root, stderr = small_corpus_run
    warned = [line for line in stderr.splitlines() if "trainer.eval_batches" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: trainer.eval_batches=8 is more than"), warned
    assert "evaluating 1 batch of 32" in warned[0]
    summary = json.loads((root / "run" / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["val_loss"] > 0


@pytest.mark.slow
def test_evaluate_on_own_text_scores_the_text_and_leaves_the_embedded_tasks_out(small_corpus_run):
    root, _ = small_corpus_run
    done = run_cli("llmlab.evaluate", [f"run={root / 'run'}", "device=cpu"], cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val loss" in done.stdout and "over the whole validation split" in done.stdout
    assert "embedded tasks not scored: the run trained on data.kind=text" in done.stdout
    assert "task accuracy" not in done.stdout and "answer perplexity" not in done.stdout
    result = json.loads(next((root / "run" / "evaluation").glob("step_*.json")).read_text())
    assert "task_accuracy" not in result and result["val_loss_full"] > 0
    # asked for, they are scored all the same
    done = run_cli("llmlab.evaluate", [f"run={root / 'run'}", "device=cpu", "tasks=true", "data.eval_tasks=2",
                                       "data.val_tasks=4"], cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "task accuracy" in done.stdout and "on 2 held-out tasks" in done.stdout
