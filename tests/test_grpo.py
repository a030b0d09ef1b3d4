"""GRPO: group advantages, the objective against the plain policy gradient, the KL at the start, the rewards
(the user's function and one that raises), the policy-entropy alert, and a resumed run equal to a whole one."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import compose_config

from llmlab.config.monitors import HealthMonitorConfig
from llmlab.config.schema import ModelConfig
from llmlab.config.stages import GRPOConfig
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tasks import Task
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.model.transformer import Transformer
from llmlab.monitors.base import AlertLog, MonitorContext
from llmlab.monitors.health import HealthMonitor
from llmlab.monitors.worker import BackgroundWorker
from llmlab.runner import Run
from llmlab.stages import all_stages
from llmlab.stages.grpo import (
    GRPOObjective,
    PromptBatch,
    PromptRecord,
    RewardError,
    Rewards,
    Rollouts,
    completion_logps,
    group_advantages,
    user_reward,
)
from llmlab.store import to_dataclass
from llmlab.train import checkpoint as ckpt

TEMPLATE = ChatTemplate(ByteTokenizer())
CALLS: list[tuple] = []


def recording_reward(prompt, completion, record):
    """A user reward (stage.reward._target_=test_grpo.recording_reward): remembers its arguments."""
    CALLS.append((prompt, completion, record))
    return 0.5


def vowel_reward(prompt, completion, record):
    """Varies between completions of one prompt, so every group has a spread to learn from."""
    return sum(c in "aeiou" for c in completion) / 10


def broken_reward(prompt, completion, record):
    return {"not": "a number"}["missing"]


def tiny_policy() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=64,
                                   vocab_size=TEMPLATE.vocab_size))


def test_the_stage_is_registered_by_its_own_module_with_its_own_yaml():
    stage = all_stages()["grpo"]
    assert stage.__module__ == "llmlab.stages.grpo" and stage.config is GRPOConfig and stage.chat


def test_advantages_of_a_hand_made_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0,    # two right, two wrong
                            1.1, 1.1, 1.1, 1.1,    # all equal: no spread, no signal
                            0.0, 0.0, 0.0, 3.0])
    advantages, flat = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0, 0, 1]).std()  # 0.5774, unbiased
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.75, -0.75, -0.75, 2.25])
    expected[:4] /= std + 1e-4
    expected[8:] /= torch.tensor([0.0, 0, 0, 3]).std() + 1e-4
    torch.testing.assert_close(advantages, expected)
    assert flat.tolist() == [False, True, False]
    assert advantages[4:8].eq(0).all()


def hand_rollouts(policy: Transformer, generator: torch.Generator) -> Rollouts:
    """Four completions of 5 tokens after 3-token prompts (one left-padded), the last one ended early."""
    ids = torch.randint(0, 200, (4, 8), generator=generator)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 0] = 0
    completion_mask = torch.ones(4, 5, dtype=torch.bool)
    completion_mask[3, 3:] = False
    with torch.no_grad():
        ref, _ = completion_logps(policy, ids, mask, 3)
    return Rollouts(ids, mask, completion_mask, torch.tensor([1.0, -0.5, 0.25, -0.75]), ref)


def objective(policy: Transformer, **stage) -> GRPOObjective:
    cfg = GRPOConfig(**stage)
    return GRPOObjective(copy.deepcopy(policy), [], TEMPLATE, Rewards(0.0, False, None, None), cfg, 0,
                         torch.device("cpu"))


def test_one_update_with_an_inactive_clip_is_the_plain_policy_gradient():
    """updates_per_batch=1, beta=0: the gradient is that of -sum(A * log pi(token)) / tokens."""
    policy = tiny_policy()
    rollouts = hand_rollouts(policy, torch.Generator().manual_seed(1))
    grpo = objective(policy, beta=0.0)
    grpo.policy_loss(policy, rollouts, {}).backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    logp, _ = completion_logps(policy, rollouts.ids, rollouts.mask, 3)
    m = rollouts.completion_mask.float()
    (-(rollouts.advantages[:, None] * logp * m).sum() / m.sum()).backward()
    for mine, plain in zip(ours, [p.grad for p in policy.parameters()], strict=True):
        torch.testing.assert_close(mine, plain, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in ours)


def test_the_kl_to_the_reference_is_zero_at_the_first_step_and_grows_after():
    policy = tiny_policy()
    grpo = objective(policy, beta=0.1)
    record: dict = {}
    rollouts = hand_rollouts(policy, torch.Generator().manual_seed(2))
    loss = grpo.policy_loss(policy, rollouts, record)
    assert record["grpo/kl"][0].item() == 0.0
    assert record["grpo/clip_fraction"][0].item() == 0.0
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.05 * p.grad
    record.clear()
    grpo.policy_loss(policy, rollouts, record)  # the second update on the same samples
    assert record["grpo/kl"][0].item() > 0


def test_sampling_fills_groups_and_records_what_it_logs():
    policy = tiny_policy()
    tasks = [Task("count", "Say how many words. the ripe pear", "three", "two"),
             Task("pattern", "Keep going. pear lake pear", "lake", "pear")]
    records = [PromptRecord(TEMPLATE.prompt([]) + TEMPLATE.tokenizer.encode(t.prompt), t.prompt,
                            dataclasses.asdict(t), f"task {i}") for i, t in enumerate(tasks)]
    grpo = GRPOObjective(copy.deepcopy(policy), records, TEMPLATE, Rewards(0.1, True, None, None),
                         GRPOConfig(group_size=4, max_new_tokens=6), 0, torch.device("cpu"))
    from llmlab.model.generation import pad_prompts

    ids, mask = pad_prompts([r.ids for r in records], TEMPLATE.end_id)
    record: dict = {}
    loss = grpo.loss(policy, PromptBatch(ids, mask, [0, 1], 0, True), record)
    assert torch.isfinite(loss) and grpo.slots[0].ids.shape[0] == 8 and grpo.slots[0].completion_mask.shape[1] <= 6
    for key in ("reward_mean", "reward_std", "reward/count", "reward/pattern", "kl", "entropy", "clip_fraction",
                "completion_length", "zero_spread_groups"):
        assert f"grpo/{key}" in record, key
    state = grpo.state_dict()  # what a checkpoint keeps: the generator and the samples still to train on
    again = grpo.loss(policy, PromptBatch(ids, mask, [0, 1], 0, True), {})
    grpo.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert torch.equal(grpo.loss(policy, PromptBatch(ids, mask, [0, 1], 0, True), {}), again)


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_a_user_reward_gets_the_prompt_the_completion_and_the_record():
    CALLS.clear()
    task = Task("count", "Say how many words. the ripe pear", "three", "two")
    record = PromptRecord([1, 2], task.prompt, dataclasses.asdict(task), "train task 0 (count)")
    target = "test_grpo.recording_reward"
    rewards = Rewards(0.1, True, user_reward(target), target)
    assert rewards(record, "three", ended=True) == pytest.approx(1.0 + 0.1 + 0.5)
    assert rewards(record, "four", ended=False) == pytest.approx(0.5)
    assert CALLS[0] == ("Say how many words. the ripe pear", "three",
                        {"family": "count", "prompt": task.prompt, "answer": "three", "wrong": "two", "level": 0})


def test_a_reward_that_raises_or_cannot_be_imported_is_one_line_naming_the_record():
    record = PromptRecord([1], "hi", {"messages": []}, "prompts.jsonl:7")
    rewards = Rewards(0.0, False, user_reward("test_grpo.broken_reward"), "test_grpo.broken_reward")
    with pytest.raises(RewardError, match=r"^stage.reward._target_=test_grpo.broken_reward raised KeyError: "
                                          r"'missing' on prompts.jsonl:7 \(completion 'x'") as err:
        rewards(record, "x", ended=False)
    assert "\n" not in str(err.value)
    with pytest.raises(Exception, match=r"stage.reward._target_=test_grpo.nothing_here: cannot import it"):
        user_reward("test_grpo.nothing_here")


def test_the_health_monitor_alerts_on_policy_entropy_collapse(tmp_path):
    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, policy_entropy_collapse=0.05))
    ctx = MonitorContext(model=tiny_policy(), out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"))
    monitor.on_train_start(ctx, 0)
    monitor.on_log(5, {"grpo/entropy": 0.4, "train/loss": 0.0})
    monitor.on_log(10, {"grpo/entropy": 0.01, "train/loss": 0.0})
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"], a["subject"]) for a in alerts] == [(10, "policy_entropy_collapse", "grpo/entropy")]


def a_start(tmp_path):
    """A chat-ready start as a pretrain run leaves it (untrained weights: the user's reward gives the signal)."""
    tokenizer = ByteTokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, context_length=96,
                                    vocab_size=tokenizer.vocab_size))
    ckpt.save_checkpoint(tmp_path / "base" / "checkpoints", 1, model, {}, {"model": dataclasses.asdict(model.cfg)})
    tokenizer.save(tmp_path / "base" / "tokenizer")
    return tmp_path / "base"


TASKS = ["data=tasks", "data.train_tasks=40", "data.val_tasks=8", "data.eval_tasks=4"]


def grpo_config(out, start, overrides, data=TASKS):
    cfg = compose_config(["+debug=fast", "device=cpu", "stage=grpo", *data, f"stage.init_from={start}",
                          "trainer.eval_batches=1", "trainer.batch_size=2", "stage.group_size=4",
                          "stage.max_new_tokens=8",
                          "stage.updates_per_batch=2", "stage.reward._target_=test_grpo.vowel_reward",
                          "trainer.warmup_steps=20", "trainer.lr=1e-2", "trainer.eval_every=3",
                          "trainer.checkpoint_every=3", "trainer.progress=false", *overrides])
    cfg.out_dir = str(out)
    return to_dataclass(cfg)


@pytest.mark.slow
def test_a_resumed_grpo_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path, capsys):
    """Stopped at step 3, between the two updates on one batch of samples: the resumed run must bring back the
    samples and the sampling generator, not draw new ones."""
    from safetensors.torch import load_file

    start = a_start(tmp_path)
    whole = Run(grpo_config(tmp_path / "whole", start, ["trainer.max_steps=6"])).execute()
    assert whole.status == "completed"
    Run(grpo_config(tmp_path / "parts", start, ["trainer.max_steps=3"])).execute()
    Run(grpo_config(tmp_path / "parts", start, ["trainer.max_steps=6", "trainer.allow_config_change=true"])).execute()
    assert "checkpoints/step_3 (step 3)" in capsys.readouterr().out
    a, b = (load_file(tmp_path / d / "checkpoints/step_6/model.safetensors") for d in ("whole", "parts"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    logged = {k for row in rows for k in row}
    assert {"grpo/reward_mean", "grpo/kl", "grpo/entropy", "eval/task_accuracy", "val/loss"} <= logged
    changed = load_file(start / "checkpoints/step_1/model.safetensors")
    assert not torch.equal(changed["lm_head.weight"], a["lm_head.weight"][: changed["lm_head.weight"].shape[0]])


def test_the_trained_tokens_are_scored_by_the_distribution_that_sampled_them():
    """Greedy completions of left-padded prompts: the training forward's argmax is every completion token, so
    the log-probabilities trained on are those of the sampling policy (positions and padding agree)."""
    from llmlab.model.generation import SamplingConfig, generate, pad_prompts

    policy = tiny_policy().eval()
    prompts = [[1, 5, 9, 200, 30], [7, 8], [3, 4, 250]]
    ids, mask = pad_prompts(prompts, TEMPLATE.end_id)
    seq = generate(policy, ids, SamplingConfig(max_new_tokens=6, temperature=0.0), attention_mask=mask)
    full_mask = torch.cat((mask, torch.ones(3, seq.shape[1] - ids.shape[1], dtype=mask.dtype)), 1)
    logits = policy(seq[:, :-1], attention_mask=full_mask[:, :-1])[:, ids.shape[1] - 1:]
    assert torch.equal(logits.argmax(-1), seq[:, ids.shape[1]:])
    logp, entropy = completion_logps(policy, seq, full_mask, ids.shape[1])
    assert torch.equal(logp, logits.float().log_softmax(-1).max(-1).values) and (entropy > 0).all()


@pytest.mark.slow
def test_lora_grpo_on_chat_prompts_with_a_user_reward_trains_only_adapters_and_evaluates(tmp_path):
    """data=chat with the user's reward (no verifier there) and LoRA: the reference stays the start without
    adapters (KL 0 at the first step), the checkpoint holds adapters only, and llmlab.evaluate reads the run."""
    from safetensors import safe_open

    from llmlab.evaluate import EvaluateConfig, evaluate

    start = a_start(tmp_path)
    chat = tmp_path / "prompts.jsonl"
    chat.write_text("\n".join(json.dumps({"instruction": f"Name {w}.", "output": w})
                              for w in ("the lake", "a pear", "the map", "a key") * 5))
    data = ["data=chat", f"data.paths=[{chat}]", "data.val_fraction=0.2"]
    common = ["model.lora.rank=4", "trainer.max_steps=2", "trainer.log_every=1", "trainer.eval_every=2",
              "trainer.checkpoint_every=2", "stage.updates_per_batch=1"]
    with pytest.raises(Exception, match="stage=grpo data=chat needs a reward: stage.reward._target_"):
        Run(grpo_config(tmp_path / "none", start, [*common, "stage.reward._target_=null"], data)).setup()
    assert Run(grpo_config(tmp_path / "lora", start, common, data)).execute().status == "completed"
    rows = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["grpo/kl"] == 0.0 and "grpo/reward_mean" in rows[0]
    with safe_open(tmp_path / "lora" / "checkpoints" / "step_2" / "model.safetensors", "pt") as f:
        assert all(n.endswith((".lora_A", ".lora_B")) for n in f.keys())
    scores = evaluate(EvaluateConfig(run=str(tmp_path / "lora"), tasks=True, data=to_dataclass(
        compose_config(["stage=sft", "data=tasks", "data.eval_tasks=5", "data.val_tasks=4",
                        f"stage.init_from={start}"])).data))
    assert 0.0 <= scores["task_accuracy"]["all"] <= 1.0


@pytest.mark.slow
def test_two_processes_sample_their_own_prompts_and_train_one_model(tmp_path):
    """torchrun (gloo, CPU): each rank samples its own prompts with its own generator; the run completes, logs
    the rank-0 rewards and a KL of 0 at the first step, and checkpoints one model."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    start = a_start(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def vowels(prompt, completion, record):\n"
                                            "    return sum(c in 'aeiou' for c in completion) / 10\n")
    args = ["+debug=fast", "device=cpu", "stage=grpo", *TASKS, f"stage.init_from={start}", "trainer.eval_batches=1",
            "trainer.batch_size=2", "stage.group_size=4", "stage.max_new_tokens=8", "trainer.max_steps=3",
            "trainer.log_every=1", "trainer.eval_every=3", "trainer.checkpoint_every=3", "trainer.threads=1",
            "monitors=none", "trainer.progress=false", "stage.reward._target_=my_rewards.vowels",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'ddp'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "llmlab.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["grpo/kl"] == 0.0 and "eval/task_accuracy" in rows[-1]
    assert (tmp_path / "ddp" / "checkpoints" / "step_3" / "model.safetensors").is_file()
