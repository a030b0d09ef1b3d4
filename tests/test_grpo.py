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
from llmlab.config.stages import GRPOConfig, RewardFunctionConfig
from llmlab.data.chat_template import ChatTemplate
from llmlab.data.tasks import Task
from llmlab.data.tokenizers import ByteTokenizer
from llmlab.model.transformer import Transformer
from llmlab.monitors.base import AlertLog, MonitorContext
from llmlab.monitors.health import HealthMonitor
from llmlab.monitors.worker import BackgroundWorker
from llmlab.runner import Run
from llmlab.stages import all_stages
from llmlab.stages.grpo import reward_functions
from llmlab.store import to_dataclass
from llmlab.train import checkpoint as ckpt
from llmlab.train.objectives import GRPOObjective, RolloutBatch, completion_logps
from llmlab.train.rewards import PromptRecord, RewardError, RewardFunction, Rewards, locate
from llmlab.train.rollouts import PromptOrder, RolloutConfig, RolloutSource, group_advantages

TEMPLATE = ChatTemplate(ByteTokenizer())
CALLS: list[tuple] = []


def recording_reward(prompts, completions, records):
    """A user reward (stage.rewards=[{name: r, _target_: test_grpo.recording_reward}]): remembers its arguments."""
    CALLS.append((prompts, completions, records))
    return [0.5] * len(completions)


def vowel_reward(prompts, completions, records):
    """Varies between completions of one prompt, so every group has a spread to learn from."""
    return [sum(c in "aeiou" for c in completion) / 10 for completion in completions]


def broken_reward(prompts, completions, records):
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


def hand_rollouts(policy: Transformer, generator: torch.Generator) -> RolloutBatch:
    """Four completions of 5 tokens after 3-token prompts (one left-padded), the last one ended early."""
    ids = torch.randint(0, 200, (4, 8), generator=generator)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 0] = 0
    completion_mask = torch.ones(4, 5, dtype=torch.bool)
    completion_mask[3, 3:] = False
    with torch.no_grad():
        ref, _ = completion_logps(policy, ids, mask, 3)
    return RolloutBatch(ids, mask, completion_mask, torch.tensor([1.0, -0.5, 0.25, -0.75]), ref, None, {}, True)


def objective(policy: Transformer, beta: float = 0.04) -> GRPOObjective:
    return GRPOObjective(beta, 0.2)


def test_one_update_with_an_inactive_clip_is_the_plain_policy_gradient():
    """updates_per_batch=1, beta=0: the gradient is that of -sum(A * log pi(token)) / tokens."""
    policy = tiny_policy()
    rollouts = hand_rollouts(policy, torch.Generator().manual_seed(1))
    grpo = objective(policy, beta=0.0)
    grpo.loss(policy, rollouts, {}).backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    logp, _ = completion_logps(policy, rollouts.ids, rollouts.mask, 3)
    m = rollouts.completion_mask.float()
    (-(rollouts.advantages[:, None] * logp * m).sum() / m.sum()).backward()
    for mine, plain in zip(ours, [p.grad for p in policy.parameters()], strict=True):
        torch.testing.assert_close(mine, plain, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in ours)


def test_clip_higher_lets_a_right_token_grow_past_the_symmetric_bound():
    """A ratio of 1.25 on positive advantages: clip_eps=0.2 cuts its gradient, clip_eps_high=0.28 does not; a
    negative advantage is clipped below alike in both."""
    policy = tiny_policy()
    batch = hand_rollouts(policy, torch.Generator().manual_seed(4))
    with torch.no_grad():
        logp, _ = completion_logps(policy, batch.ids, batch.mask, 3)
    batch = batch._replace(advantages=torch.ones(4), old_logp=logp - torch.log(torch.tensor(1.25)))

    def grad_norm(objective: GRPOObjective) -> float:
        policy.zero_grad()
        objective.loss(policy, batch, {}).backward()
        return sum(p.grad.abs().sum().item() for p in policy.parameters() if p.grad is not None)

    assert grad_norm(GRPOObjective(0.0, 0.2)) == 0.0
    assert grad_norm(GRPOObjective(0.0, 0.2, 0.28)) > 0.0


def test_the_kl_to_the_reference_is_zero_at_the_first_step_and_grows_after():
    policy = tiny_policy()
    grpo = objective(policy, beta=0.1)
    record: dict = {}
    rollouts = hand_rollouts(policy, torch.Generator().manual_seed(2))
    loss = grpo.loss(policy, rollouts, record)
    assert record["grpo/kl"][0].item() == 0.0
    assert record["grpo/clip_fraction"][0].item() == 0.0
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.05 * p.grad
    record.clear()
    # the second update on the same samples: the sampling policy's log-probabilities are the old ones
    grpo.loss(policy, rollouts._replace(old_logp=completion_logps(copy.deepcopy(policy), rollouts.ids,
                                                                  rollouts.mask, 3)[0].detach(), fresh=False), record)
    assert record["grpo/kl"][0].item() > 0


def rollout_source(policy: Transformer, tasks: list[Task], **cfg) -> RolloutSource:
    records = [PromptRecord(TEMPLATE.prompt([]) + TEMPLATE.tokenizer.encode(t.prompt), t.prompt,
                            dataclasses.asdict(t), f"task {i}") for i, t in enumerate(tasks)]
    stage = GRPOConfig(group_size=4, max_new_tokens=6)
    rollout_cfg = RolloutConfig(4, 1.0, 6, cfg.pop("updates_per_batch", 1), **cfg)
    return RolloutSource(policy, copy.deepcopy(policy), records, TEMPLATE, reward_functions(stage, True),
                         rollout_cfg, PromptOrder(len(records), 2, 0), 1, 0, torch.device("cpu"))


TWO_TASKS = [Task("count", "Say how many words. the ripe pear", "three", "two"),
             Task("pattern", "Keep going. pear lake pear", "lake", "pear")]


def test_the_rollout_source_fills_groups_measures_them_and_resumes_where_it_was():
    policy = tiny_policy()
    source = rollout_source(policy, TWO_TASKS, updates_per_batch=2)
    batch = source.next()
    assert batch.ids.shape[0] == 8 and batch.completion_mask.shape[1] <= 6 and batch.fresh
    assert batch.old_logp is not None  # two updates per batch: the second compares with the sampling policy
    for key in ("reward_mean", "reward_std", "reward/correct", "reward/format", "family/count", "family/pattern",
                "completion_length", "zero_spread_groups", "zero_spread_share"):
        assert f"grpo/{key}" in batch.metrics, key
    again = source.next()  # the second update: the same samples, not fresh
    assert torch.equal(again.ids, batch.ids) and not again.fresh
    state = torch.load(_saved(source.state_dict()), weights_only=True)
    after = source.next()
    source.load_state_dict(state)
    assert torch.equal(source.next().ids, after.ids)
    record: dict = {}
    loss = GRPOObjective(0.04, 0.2).loss(policy, batch, record)
    assert torch.isfinite(loss) and "grpo/reward_mean" in record and "grpo/kl" in record


def test_a_resume_whose_prompts_changed_is_one_line():
    state = rollout_source(tiny_policy(), TWO_TASKS * 2).state_dict()
    with pytest.raises(Exception, match="the checkpoint trained on 4 prompts and this config gives 2"):
        rollout_source(tiny_policy(), TWO_TASKS).load_state_dict(state)


def by_prompt(prompts, completions, records):
    """1 for every completion of prompt 'a' (a group with no spread); the completion's place for the others."""
    return [1.0 if p == "a" else float(i) for i, p in enumerate(prompts)]


def test_dynamic_sampling_replaces_zero_spread_groups_while_it_may_draw():
    policy = tiny_policy()
    tasks = [Task("count", "a", "zzzz", "y"), Task("pattern", "b", "zzzz", "y")] * 4
    rewards = Rewards([RewardFunction("by_prompt", by_prompt, 1.0, "test")], 0.0)

    def first_batch(**cfg) -> RolloutBatch:
        source = rollout_source(policy, tasks, **cfg)
        source.rewards = rewards
        return source.next()

    plain = first_batch()
    assert plain.metrics["grpo/zero_spread_groups"] > 0  # some of its two prompts are "a"
    dynamic = first_batch(dynamic_sampling=True, max_draws=8)
    assert dynamic.metrics["grpo/zero_spread_groups"] == 0 and dynamic.ids.shape[0] == 8
    assert dynamic.metrics["grpo/zero_spread_share"] > 0  # the "a" groups drawn and dropped on the way
    assert (dynamic.advantages.view(2, 4) != 0).any(1).all()  # every group kept has something to teach
    once = first_batch(dynamic_sampling=True, max_draws=1)  # no second draw allowed: what came is kept
    assert torch.equal(once.ids, plain.ids)


def _saved(state: dict):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_user_rewards_get_the_batch_and_add_up_with_their_weights():
    CALLS.clear()
    task = Task("count", "Say how many words. the ripe pear", "three", "two")
    record = PromptRecord([1, 2], task.prompt, dataclasses.asdict(task), "train task 0 (count)")
    stage = GRPOConfig(rewards=[RewardFunctionConfig("half", "test_grpo.recording_reward", 2.0)])
    rewards = reward_functions(stage, tasks=True)
    total, terms = rewards([record, record], ["three", "four"], [True, False])
    assert total.tolist() == pytest.approx([1.0 + 0.1 + 2 * 0.5, 2 * 0.5])
    assert {k: v.tolist() for k, v in terms.items()} == {"correct": [1.0, 0.0], "half": [0.5, 0.5],
                                                           "format": [1.0, 0.0]}
    assert CALLS[0] == (["Say how many words. the ripe pear"] * 2, ["three", "four"],
                        [dataclasses.asdict(task)] * 2)


def test_a_reward_that_raises_or_cannot_be_imported_is_one_line_naming_the_record():
    record = PromptRecord([1], "hi", {"messages": []}, "prompts.jsonl:7")
    rewards = Rewards([RewardFunction("broken", broken_reward, 1.0, "stage.rewards[0] (test_grpo.broken_reward)")],
                      0.0)
    with pytest.raises(RewardError, match=r"^stage.rewards\[0\] \(test_grpo.broken_reward\) raised KeyError: "
                                          r"'missing' on a batch of 1 completions, the first prompts.jsonl:7") as err:
        rewards([record], ["x"], [False])
    assert "\n" not in str(err.value)
    with pytest.raises(Exception, match=r"stage.rewards\[0\]._target_=test_grpo.nothing_here: cannot import it"):
        locate("test_grpo.nothing_here", "stage.rewards[0]._target_")


def test_the_health_monitor_alerts_on_policy_entropy_collapse(tmp_path):
    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, policy_entropy_collapse=0.05))
    ctx = MonitorContext(model=tiny_policy(), out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"))
    monitor.on_train_start(ctx, 0)
    monitor.on_log(5, {"grpo/entropy": 0.4, "train/loss": 0.0})
    monitor.on_log(10, {"grpo/entropy": 0.01, "train/loss": 0.0})
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"], a["subject"]) for a in alerts] == [(10, "policy_entropy_collapse", "grpo/entropy")]


def test_the_loss_spike_rule_leaves_a_policy_gradient_loss_near_zero_alone(tmp_path):
    """GRPO's loss is a surrogate of either sign near 0: a z-score over it is noise (it fired on every run). Its
    gradient norm is still watched."""
    from llmlab.monitors.base import StepInfo

    monitor = HealthMonitor(HealthMonitorConfig(enabled=True, window=20, z_threshold=5.0, every=0))
    ctx = MonitorContext(model=tiny_policy(), out_dir=tmp_path, sinks=None, worker=BackgroundWorker(0),
                         alerts=AlertLog(tmp_path / "alerts.jsonl"))
    monitor.on_train_start(ctx, 0)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 50):
        loss = 0.02 if step == 30 else 1e-4 * torch.randn((), generator=gen).item()
        norm = 30.0 if step == 40 else 1.0 + 0.01 * torch.randn((), generator=gen).item()
        monitor.on_step_end(StepInfo(step, loss, norm, 1e-3, step))
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["step"], a["kind"], a["subject"]) for a in alerts] == [(40, "spike", "grad_norm")]


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
                          "stage.updates_per_batch=2", "stage.rewards=[{name:vowels,_target_:test_grpo.vowel_reward}]",
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
    with pytest.raises(Exception, match="stage=grpo data=chat needs a reward: stage.rewards="):
        Run(grpo_config(tmp_path / "none", start, [*common, "stage.rewards=[]"], data)).setup()
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
    (tmp_path / "my_rewards.py").write_text("def vowels(prompts, completions, records):\n"
                                            "    return [sum(c in 'aeiou' for c in c_) / 10 for c_ in completions]\n")
    args = ["+debug=fast", "device=cpu", "stage=grpo", *TASKS, f"stage.init_from={start}", "trainer.eval_batches=1",
            "trainer.batch_size=2", "stage.group_size=4", "stage.max_new_tokens=8", "trainer.max_steps=3",
            "trainer.log_every=1", "trainer.eval_every=3", "trainer.checkpoint_every=3", "trainer.threads=1",
            "monitors=none", "trainer.progress=false", "stage.rewards=[{name:vowels,_target_:my_rewards.vowels}]",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'ddp'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "llmlab.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["grpo/kl"] == 0.0 and "eval/task_accuracy" in rows[-1]
    assert (tmp_path / "ddp" / "checkpoints" / "step_3" / "model.safetensors").is_file()


# ---- through the command line: bad inputs are one line, nothing trains silently wrong -----------------------

REWARD_MODULES = {
    "nan_reward": "def f(prompts, completions, records):\n    return [float('nan')] * len(completions)\n",
    "huge_reward": "def f(prompts, completions, records):\n    return [1e40] * len(completions)\n",
    "exiting_reward": "import sys\ndef f(prompts, completions, records):\n    sys.exit(3)\n",
    "word_reward": "def f(prompts, completions, records):\n    return ['good'] * len(completions)\n",
    "syntax_reward": "def f(prompts, completions, records)\n    return 1\n",
    "raising_reward": "raise RuntimeError('no GPU here')\n",
}


@pytest.fixture(scope="module")
def cli_start(tmp_path_factory):
    """A byte-tokenizer start (as a pretrain run leaves it) and the reward modules, in one directory."""
    root = tmp_path_factory.mktemp("grpo_cli")
    for name, text in REWARD_MODULES.items():
        (root / f"{name}.py").write_text(text)
    return root, a_start(root)


def grpo_cli(root, start, name: str, extra: list[str], steps: int = 2):
    from conftest import run_cli

    args = ["+debug=fast", "device=cpu", "stage=grpo", *TASKS, f"stage.init_from={start}", "trainer.eval_batches=1",
            "trainer.batch_size=2", "stage.group_size=2", "stage.max_new_tokens=8", f"trainer.max_steps={steps}",
            "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=2", "trainer.threads=1",
            "monitors=none", "trainer.progress=false", f"cache_dir={root / 'cache'}",
            f"hydra.run.dir={root / name}", *extra]
    return run_cli("llmlab.run", args, root)


@pytest.mark.slow
@pytest.mark.parametrize("module,expected", [
    ("nan_reward", "stage.rewards[0] (nan_reward.f) returned nan (a reward must be a finite float32) on train task"),
    ("huge_reward", "stage.rewards[0] (huge_reward.f) returned 1e+40 (a reward must be a finite float32) on train"),
    ("exiting_reward", "stage.rewards[0] (exiting_reward.f) raised SystemExit: 3 on a batch of 4 completions, the "
                       "first train task"),
    ("word_reward", "stage.rewards[0] (word_reward.f) returned list"),
    ("syntax_reward", "stage.rewards[0]._target_=syntax_reward.f: cannot import it (SyntaxError: "),
    ("raising_reward", "stage.rewards[0]._target_=raising_reward.f: cannot import it (RuntimeError: no GPU here)"),
])
def test_a_reward_that_fails_in_any_way_is_one_line_naming_it(cli_start, module, expected):
    from test_trust import one_line_error

    root, start = cli_start
    result = grpo_cli(root, start, module, [f"stage.rewards=[{{name:r,_target_:{module}.f}}]"])
    line = one_line_error(result, expected)
    if "train task" in expected:
        assert "(completion '" in line or "completion " in line


@pytest.mark.slow
@pytest.mark.parametrize("override,expected", [
    ("stage.beta=nan", "stage.beta must be a finite number, got nan"),
    ("stage.format_reward=nan", "stage.format_reward must be a finite number, got nan"),
    ("stage.temperature=1e-50", "stage.temperature must be >= 0.001 (smaller overflows the logits"),
    ("stage.group_size=200000", "stage.group_size must be in [2, 4096]"),
    ("stage.group_size=4096", "need about"),
])
def test_grpo_fields_that_cannot_train_are_one_line(cli_start, override, expected):
    from test_trust import one_line_error

    root, start = cli_start
    extra = [override] + (["trainer.batch_size=200", "data.train_tasks=200"] if "4096" in override else [])
    one_line_error(grpo_cli(root, start, override.replace("=", "_"), extra), expected)


@pytest.mark.slow
def test_prompts_too_long_for_the_context_are_left_out_with_one_warning_never_cut(cli_start):
    root, start = cli_start
    result = grpo_cli(root, start, "long", ["stage.max_new_tokens=40"], steps=1)
    assert result.returncode == 0, result.stderr[-2000:]
    warning = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("warning: ")
               and "training prompts are longer than" in line]
    assert len(warning) == 1 and "model.context_length - stage.max_new_tokens = 56 tokens" in warning[0], warning
    dropped, total = (int(w) for w in warning[0].split()[1:4:2])
    stats = json.loads((root / "long" / "dataset_stats.json").read_text())
    assert 0 < dropped < total == 40 and stats["train_prompts"] == total - dropped


@pytest.mark.slow
def test_a_grpo_resume_whose_prompts_shrank_is_one_line(cli_start):
    from test_trust import one_line_error

    root, start = cli_start
    assert grpo_cli(root, start, "shrunk", [], steps=2).returncode == 0
    shrunk = ["data.train_tasks=20", "trainer.allow_config_change=true"]
    # the data's fingerprint refuses it first, before anything in the run directory is written
    one_line_error(grpo_cli(root, start, "shrunk", shrunk, steps=4), "the data changed since checkpoint")
    result = grpo_cli(root, start, "shrunk", [*shrunk, "trainer.allow_data_change=true"], steps=4)
    line = one_line_error(result, "prompts and this config gives")
    before, after = (int(w) for w in line.split("trained on ")[1].split(":")[0].split(" prompts and this config "
                                                                                      "gives "))
    assert after < before and "the GRPO data changed" in line
