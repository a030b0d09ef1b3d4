"""pass@k (the unbiased estimator, sampling, intervals, paired comparison), the graded digit families and the
on-policy samples file."""

from __future__ import annotations

import itertools
import json
from math import comb

import pytest
import torch

from llmlab.config.commands import EvaluateConfig
from llmlab.config.errors import ConfigError
from llmlab.config.schema import ModelConfig, TasksDataConfig
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.task_samples import (
    TaskSamples,
    on_policy_pairs,
    read_task_samples,
    rejection_sampled,
    write_task_samples,
)
from llmlab.data.tasks import FAMILIES, Task, group_of, is_correct, make_tasks, split_of
from llmlab.data.tokenizers import CharTokenizer
from llmlab.model.transformer import Transformer
from llmlab.sweep.intervals import compare_scores, describe_score, score_interval
from llmlab.train.pass_at_k import pass_at_k, pass_scores, sampled_replies
from llmlab.train.task_eval import task_accuracy


def test_pass_at_k_is_the_chance_that_k_of_the_n_replies_hold_a_right_one():
    for n, c, k in [(4, 1, 2), (8, 3, 4), (10, 0, 3), (6, 6, 1), (5, 2, 5)]:
        draws = list(itertools.combinations([True] * c + [False] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / comb(n, k))
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 from samples is the share right
    with pytest.raises(ValueError, match="k=9 is larger than the n=8 replies"):
        pass_at_k(8, 1, 9)


def test_k_larger_than_the_samples_drawn_is_one_line():
    with pytest.raises(ConfigError, match="k=16 is larger than samples=8"):
        EvaluateConfig(run="x", k=16, samples=8)
    EvaluateConfig(run="x", k=8)  # samples = k by default


def test_the_graded_families_are_verified_exactly_graded_and_held_out():
    tasks = make_tasks(40, "train", families=("sum", "sort"), levels=(2, 4))
    assert [t.level for t in tasks[:8]] == [2, 2, 4, 4, 2, 2, 4, 4]  # each family takes the levels in turn
    for t in tasks:
        digits = t.prompt.split("#")[1]
        assert len(digits) == t.level == len(set(digits))
        expected = str(sum(map(int, digits))) if t.family == "sum" else "".join(sorted(digits))
        assert t.answer == expected and is_correct(t, f" {expected}\n") and not is_correct(t, t.wrong)
        assert group_of(t) == f"{t.family}/{t.level}"
    train = {t.prompt for t in make_tasks(500, "train", families=("sum",), levels=(3,))}
    test = {t.prompt for t in make_tasks(100, "test", families=("sum",), levels=(3,))}
    assert not train & test and all(split_of(p) == "test" for p in test)
    assert "sum" not in FAMILIES  # asked by name: the default mix (and its golden runs) stays as it was
    with pytest.raises(ConfigError, match="data.levels"):
        TasksDataConfig(levels=[1])


def tiny_policy() -> tuple[Transformer, ChatTemplate]:
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train("Sum the digits. #0123456789 Sort")
    template = ChatTemplate(tokenizer)
    model = Transformer(ModelConfig(vocab_size=template.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                    context_length=64))
    return model.eval(), template


def test_sampled_replies_repeat_with_the_seed_and_pass_at_1_is_task_accuracy():
    model, template = tiny_policy()
    tasks = make_tasks(6, "test", families=("sum",), levels=(2,))
    first = sampled_replies(model, template, tasks, torch.device("cpu"), n=3, seed=1, max_new_tokens=4)
    assert first == sampled_replies(model, template, tasks, torch.device("cpu"), n=3, seed=1, max_new_tokens=4)
    assert [len(r) for r in first] == [3] * 6
    scores = pass_scores(model, template, tasks, torch.device("cpu"), k=2, n=4)
    assert sum(scores.greedy) / 6 == task_accuracy(model, template, tasks, torch.device("cpu"))["all"]
    means = scores.means()
    assert set(means) == {"pass@1", "pass@2"} and set(means["pass@2"]) == {"all", "sum", "sum/2"}
    with pytest.raises(ValueError, match="k=5 is larger than the 4 replies"):
        pass_scores(model, template, tasks, torch.device("cpu"), k=5, n=4)


def test_intervals_over_prompts_and_the_paired_comparison():
    mean, low, high = score_interval([1.0] * 30 + [0.0] * 70)
    assert mean == pytest.approx(0.3) and low < 0.3 < high and high - low < 0.25
    reference = [float(i % 3 == 0) for i in range(200)]
    better = [1.0 if i % 3 == 0 or i % 5 == 0 else 0.0 for i in range(200)]  # right on all of those and more
    difference = compare_scores([better], [reference])
    assert difference.paired and difference.diff > 0 and difference.low > 0
    assert describe_score("x", difference).startswith("x: higher by")
    same = compare_scores([reference], [reference])
    assert same.diff == 0 and "indistinguishable" in describe_score("x", same)


def test_on_policy_samples_round_trip_and_make_pairs_and_rejection_samples(tmp_path):
    solved = Task("sum", "Sum the digits. #12", "3", "4", 2)
    never = Task("sum", "Sum the digits. #45", "9", "8", 2)
    samples = [TaskSamples(solved, ["3", "4", "3", "5"]), TaskSamples(never, ["8", "8"])]
    path = tmp_path / "samples.jsonl"
    write_task_samples(path, samples)
    read = read_task_samples(path)
    assert [s.task for s in read] == [solved, never] and read[0].right == [True, False, True, False]
    assert [(p.chosen, p.rejected) for p in on_policy_pairs(read)] == [("3", "4"), ("3", "5")]
    assert [c[1].content for c in rejection_sampled(read)] == ["3"]


def test_a_samples_file_with_a_missing_answer_is_one_line_naming_the_record(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = {"family": "sum", "prompt": "Sum the digits. #12", "answer": "3", "replies": ["3"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": None}) + "\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: the record has no 'answer'"):
        read_task_samples(path)


@pytest.mark.slow
def test_on_policy_pipeline_sample_then_rft_and_dpo_then_pass_at_k_with_a_paired_comparison(tmp_path):
    """A tiny base, SFT on sum with eval/pass@k, its own samples, rejection sampling and DPO on them, and
    llmlab.evaluate's pass@k with a paired comparison (about 40 s on one thread)."""
    from conftest import FAST, compose_config

    from llmlab.evaluate import evaluate
    from llmlab.runner import Run
    from llmlab.sample_tasks import SampleTasksConfig, sample_tasks
    from llmlab.store import to_dataclass

    def config(name: str, overrides: list[str]):
        given = {o.split("=")[0] for o in overrides}
        fast = [o for o in FAST if not o.startswith("data.") and o.split("=")[0] not in given]
        cfg = compose_config([*fast, f"cache_dir={tmp_path / 'cache'}", "trainer.batch_size=8",
                              "trainer.eval_batches=1", "trainer.warmup_steps=2", *overrides])
        cfg.out_dir = str(tmp_path / name)
        return to_dataclass(cfg)

    tasks = ["data.families=[sum]", "data.levels=[2]", "data.eval_tasks=6", "data.val_tasks=8",
             "data.train_tasks=64"]
    base = config("base", ["data.train_docs=200", "data.val_docs=20", "trainer.max_steps=20"])
    Run(base).execute()
    sft = config("sft", [*tasks, "stage=sft", "data=tasks", f"stage.init_from={base.out_dir}", "data.pass_k=2",
                         "trainer.max_steps=10", "trainer.eval_every=10"])
    Run(sft).execute()
    last = json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"eval/pass@1", "eval/pass@2", "eval/pass@2/sum/2"} <= set(last)
    assert last["eval/pass@1"] == last["eval/task_accuracy"]
    samples = tmp_path / "samples.jsonl"
    found = sample_tasks(SampleTasksConfig(run=sft.out_dir, out=str(samples), data=sft.data, samples=4,
                                           device="cpu"))
    assert found["sampled_completions"] == 64 * 4 and len(read_task_samples(samples)) == 64
    # whatever the tiny model got right or wrong, write a file with both kinds so both stages have data
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    for r in records[:16]:
        r["replies"] = [r["answer"], r["wrong"]]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    for stage, kind in (("sft", "tasks"), ("dpo", "task_prefs")):
        run = config(f"on_policy_{stage}", [*tasks, f"stage={stage}", f"data={kind}", f"data.samples={samples}",
                                            f"stage.init_from={sft.out_dir}", "trainer.max_steps=2"])
        assert Run(run).execute().status == "completed"
    scored = evaluate(EvaluateConfig(run=str(tmp_path / "on_policy_dpo"), data=sft.data, k=2, samples=3,
                                     compare=sft.out_dir, device="cpu"))["pass_at_k"]
    assert scored["sampled_completions"] == 6 * 3 and len(scored["per_prompt"]["pass@2"]) == 6
    assert set(scored["compare"]) == {"checkpoint", "pass@1", "pass@2"}
    assert scored["groups"]["pass@1"]["sum/2"][0] == scored["groups"]["pass@1"]["all"][0]
