"""One training loop for every stage: accumulate, clip, step, log, evaluate, checkpoint.

The loop reads as ``fit()`` (loop -> log, evaluate, save on their intervals) and ``train_step()``. What it
trains comes from a stage, what it evaluates besides the validation loss from evaluators, where it saves from a
Checkpointer; monitors are called at fixed points. Everything that decides what happens next (weights,
optimizer, RNGs, data position, step) is checkpointed, so on CPU an interrupted and resumed run ends bitwise
equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from llmlab.config.errors import ConfigError
from llmlab.config.schema import TrainerConfig
from llmlab.data.batch import IGNORE, Batch, BatchSource
from llmlab.monitors.base import MonitorSet, StepInfo
from llmlab.rundir.summary import perplexity
from llmlab.sinks import MetricSinks
from llmlab.train import distributed
from llmlab.train.bits_per_byte import TextBytes, bits_per_byte, scored_bytes
from llmlab.train.checkpointer import Checkpointer, NonFiniteWeights
from llmlab.train.distributed import SINGLE, Distributed
from llmlab.train.evaluators import Evaluator
from llmlab.train.objectives import Objective
from llmlab.train.optim import build_optimizer, peak_lrs
from llmlab.train.schedule import scheduled_lr
from llmlab.train.signals import Interrupted, StopRequested
from llmlab.train.timing import Timings

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str  # completed | interrupted | failed | paused
    steps: int
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    wall_s: float
    tokens_per_s: float
    message: str = ""
    timing: dict | None = None  # Timings.summary(): where the time outside training steps went


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens_seen: int = 0
    wall_s: float = 0.0  # training time accumulated across resumes
    best_val_loss: float = math.inf
    # the running train-loss mean since the last log step, so a resumed run logs the same means
    interval_loss_sum: float = 0.0
    interval_steps: int = 0
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient
    evals_without_improvement: int = 0  # for early stopping
    consecutive_skips: int = 0


class Trainer:
    """model: what trains (compiled, DDP-wrapped or FSDP-sharded: checkpoints hold the model inside). The
    optimizer is the trainer config's (AdamW with weight decay on matrices only, or Muon and AdamW: train/optim.py).
    Without a checkpointer nothing is saved; without sinks nothing is logged. text_bytes (ids -> the UTF-8 bytes
    they decode to) adds val/bpb to each evaluation when the objective's loss is a mean over its scored tokens."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        train_batches: BatchSource,
        val_batches: Sequence[Batch],
        cfg: TrainerConfig,
        place: Distributed = SINGLE,
        sinks: MetricSinks | None = None,
        checkpointer: Checkpointer | None = None,
        evaluators: Sequence[Evaluator] = (),
        monitors: MonitorSet | None = None,
        text_bytes: TextBytes | None = None,
        val_objective: Objective | None = None,
    ):
        self.model, self.objective, self.cfg, self.place = model, objective, cfg, place
        self.val_objective = val_objective or objective
        self.train_batches, self.val_batches = train_batches, val_batches
        self.sinks, self.checkpointer = sinks or MetricSinks([]), checkpointer
        self.evaluators, self.monitors = list(evaluators), monitors or MonitorSet([])
        self.timings = Timings()  # seconds outside training steps: metrics.json's timing block
        self.device = next(model.parameters()).device
        self.optimizer = build_optimizer(model, cfg, self.device)
        self.peak_lrs = peak_lrs(self.optimizer, cfg)  # one per param group: Muon's and AdamW's differ
        self.flops_per_token = distributed.unwrap(model).flops_per_token()
        self.objective_metrics: dict[str, list[torch.Tensor]] = {}  # what the objective reports, since the last log
        self.val_metrics: dict[str, list[torch.Tensor]] = {}  # ... and at the last evaluation
        self.state = TrainState()
        self.agreed_stop: str | None = None  # under torchrun: the stop all ranks voted for at the last step
        self.last_val_loss: float | None = None
        self.last_train_loss: float | None = None
        self.last_val_bpb: float | None = None
        # per validation batch: (scored tokens, bytes of their text), counted once; None: no bits per byte
        self.val_text = [(int((b.targets != IGNORE).sum()), scored_bytes(b, text_bytes)) for b in val_batches
                         ] if text_bytes is not None and self.val_objective.mean_over_tokens else None
        self._val_losses: torch.Tensor | None = None  # the last evaluation's batch means
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What resumes the loop exactly, besides the weights and the optimizer (the Checkpointer saves those)."""
        state = {
            "data": self.train_batches.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "trainer": asdict(self.state),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if objective_state := self.objective.state_dict():  # absent for the objectives that keep none
            state["objective"] = objective_state
        if self.objective_metrics:  # what the objective reported since the last log: the next log's means need it
            state["metrics"] = {k: [v.detach().cpu() for v in values] for k, values in self.objective_metrics.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.train_batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state.get("objective", {}))
        self.objective_metrics = {k: [v.to(self.device) for v in values]
                                  for k, values in state.get("metrics", {}).items()}
        self.state = TrainState(**state["trainer"])

    def save(self) -> None:
        if self.checkpointer is not None:
            with self.timings.measure("checkpoint"):
                self.checkpointer.save(self.state.step, self.model, self.optimizer, self.state_dict())

    def resume(self, path: Path) -> None:
        """Continue from a verified checkpoint whose weights are in the model already (Checkpointer.load_weights,
        before the model was wrapped)."""
        state = self.checkpointer.restore(path, self.model, self.optimizer)
        try:
            self.load_state_dict(state)
        except ConfigError:  # a part that says itself why it cannot continue (GRPO's prompts changed)
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"checkpoint file {path / 'state.pt'} is not a trainer state of this run "
                              f"({type(e).__name__}: {e})") from None

    # ---- the loop --------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, stop: StopRequested | None = None) -> StepInfo:
        """One optimizer step over grad_accum_steps micro-batches, skipped if loss or gradients are not finite.

        Under torchrun the ranks also agree here on whether to stop: a signal reaches each at its own moment, and
        a rank that stopped alone would leave the others waiting in a collective."""
        cfg, step = self.cfg, self.state.step + 1
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
            group["lr"] = scheduled_lr(self.state.step, peak, cfg)
        lr = scheduled_lr(self.state.step, cfg.lr, cfg)  # AdamW's: the lr logged (train/lr)
        total_loss = torch.zeros((), device=self.device)
        tokens = 0
        batches = [self.train_batches.next().to(self.device) for _ in range(cfg.grad_accum_steps)]
        weights = self.micro_batch_weights(batches)
        for micro, (batch, weight) in enumerate(zip(batches, weights, strict=True)):
            with distributed.no_gradient_sync(self.model, micro == cfg.grad_accum_steps - 1):
                with self.autocast():  # the forward only: backward runs in the forward's dtypes by itself
                    loss = self.objective.loss(self.model, batch, self.objective_metrics) / cfg.grad_accum_steps
                    if weight != 1.0:
                        loss = loss * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total_loss += loss.detach()
            # as if every rank's batch held as many tokens as this one: exact for token windows, near for chat
            tokens += self.objective.tokens_in(batch) * self.place.world_size
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(grad_norm, "full_tensor"):  # FSDP: each rank holds a shard of every gradient, the norm a DTensor
            grad_norm = grad_norm.full_tensor()
        self.monitors.after_backward(step)
        values = [total_loss.float(), grad_norm.float()]
        asked = stop is not None and stop.signal_name is not None
        if self.place.enabled:  # the loss averaged as the gradients are, and whether any rank was asked to stop
            values[0], vote = distributed.mean_over_ranks(
                torch.stack([values[0], torch.tensor(float(asked), device=self.device)]), self.place)
            values.append(vote)
        # the one host sync per step: decides whether this update may be applied
        loss_value, norm_value, *stop_votes = torch.stack(values).tolist()
        if self.place.enabled:  # decided together: a signal arriving after the vote counts at the next step
            self.agreed_stop = (stop.signal_name if asked else "a signal to another rank") if stop_votes[0] else None
        # under fp16 an overflowing gradient is the scaler's business: it skips the step and lowers the scale
        finite = math.isfinite(loss_value) and (self.scaler is not None or math.isfinite(norm_value))
        info = StepInfo(step, loss_value, norm_value, lr, self.state.tokens_seen + tokens, finite)
        if finite:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        else:
            self.monitors.nonfinite(info)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step, self.state.tokens_seen = step, info.tokens_seen
        return info

    def micro_batch_weights(self, batches: list) -> list[float]:
        """Each micro-batch's loss is a mean over its own targets (objective.targets_in); weighted by its share of
        the step's targets, over every micro-batch and rank, the step's gradient is that of the mean over all of
        them, however the batch was split. Equal counts (pretraining windows) weigh exactly 1."""
        counts = [self.objective.targets_in(b) for b in batches]
        total = sum(counts)
        if self.place.enabled:  # the global count: one small collective per step
            total = int(distributed.sum_over_ranks(torch.tensor(total, device=self.device), self.place))
        if total == 0:
            return [1.0] * len(batches)
        parts = len(batches) * self.place.world_size
        return [n * parts / total for n in counts]

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss; what the objective reports on the way is kept for eval_row."""
        self.model.eval()
        losses, self.val_metrics = [], {}
        try:
            for batch in self.val_batches:
                with self.autocast():
                    losses.append(self.val_objective.loss(self.model, batch.to(self.device),
                                                          self.val_metrics).float())
        finally:
            self.model.train()
        self._val_losses = torch.stack(losses)
        return self._val_losses.mean().item()

    def val_bpb(self) -> float | None:
        """The last evaluation's loss in bits per byte: each batch's mean loss times its scored tokens, summed,
        over the bytes of their text (batches score unequal numbers of tokens in SFT)."""
        if self.val_text is None or self._val_losses is None:
            return None
        tokens, n_bytes = (torch.tensor(column, dtype=torch.float64) for column in zip(*self.val_text, strict=True))
        return bits_per_byte(float((self._val_losses.double().cpu() * tokens).sum()), int(n_bytes.sum()))

    def fit(self, stop: StopRequested | None = None, until: int | None = None) -> TrainResult:
        """Train to cfg.max_steps, or pause after step `until` (status "paused": benchmarks interleave runs)."""
        cfg, step0 = self.cfg, self.state.step
        last = cfg.max_steps if until is None else min(until, cfg.max_steps)
        self.model.train()
        stop = stop or StopRequested()
        self.bar = bar = tqdm(total=cfg.max_steps, initial=step0, dynamic_ncols=True, desc="train",
                              disable=not (cfg.progress and self.place.is_main))
        self._interval_start, self._interval_tokens_start = time.perf_counter(), self.state.tokens_seen
        status, message = "completed", self.early_stop_reason() or ""  # a resumed run that had stopped early
        self.monitors.train_start(step0)
        try:
            with stop:
                while self.state.step < last and not message:
                    info = self.train_step(stop)
                    status, message = self.after_step(info, stop)
                    bar.update(1)
        finally:
            bar.close()
            self.monitors.train_end(self.state.step)
            self.sinks.flush()
        if status == "completed" and self.state.step < cfg.max_steps and not message:
            status = "paused"
        if self.last_val_loss is None and status == "completed":
            self.last_val_loss = self.evaluate()
            self.last_val_bpb = self.val_bpb()
        wall = self.state.wall_s
        return TrainResult(status, self.state.step, self.state.tokens_seen, self.last_train_loss,
                           self.last_val_loss, wall, self.state.tokens_seen / wall if wall else 0.0,
                           message, self.timings.summary())

    def after_step(self, info: StepInfo, stop: StopRequested) -> tuple[str, str]:
        """The step's bookkeeping, in order: non-finite policy, monitors, log, evaluate, checkpoint; the run's
        status and, when it must end here, why."""
        cfg, step, state = self.cfg, info.step, self.state
        failure = self.nonfinite_policy(info)
        if failure:
            log.info(f"stopping: {failure}")
            return "failed", failure
        if info.finite:
            state.interval_loss_sum += info.loss
            state.interval_steps += 1
        self.monitors.step_end(info)  # before logging, so its cost counts as training time
        row: dict[str, float] = {}
        if every(step, cfg.log_every, cfg.max_steps):
            row.update(self.log_row(info, self._interval_start))
            self.bar.set_postfix(loss=f"{row['train/loss']:.4f}", tok_s=f"{row['perf/tokens_per_s']:,.0f}")
        early_stop = None
        if every(step, cfg.eval_every, cfg.max_steps):
            # one process stops within a batch or a generated token; ranks finish it together (collectives)
            try:
                with stop.at_once(not self.place.enabled):
                    row.update(self.eval_row(step))
                early_stop = self.early_stop_reason()
            except Interrupted:
                self.model.train()  # generation may have been cut short in eval mode
                log.info(f"the evaluation at step {step} was cut short and is not logged")
        if row:
            self.sinks.log_scalars(step, row)
            self.monitors.logged(step, row)
        stopping = self.agreed_stop if self.place.enabled else stop.signal_name
        if every(step, cfg.checkpoint_every, cfg.max_steps) or stopping or early_stop:
            self.sinks.flush()
            try:
                self.save()
            except NonFiniteWeights as bad:  # a finite loss can still leave NaN weights (an lr too large)
                log.info(f"stopping: {bad}")
                return "failed", str(bad)
        if row:
            self._interval_start = time.perf_counter()  # time spent logging/saving is not training
        if early_stop:
            log.info(early_stop)
            return "completed", early_stop
        if stopping:
            return "interrupted", f"{stopping} at step {step}; checkpoint written"
        return "completed", ""

    def early_stop_reason(self) -> str | None:
        early = self.cfg.early_stopping
        if early.patience and self.state.evals_without_improvement >= early.patience:
            return (f"early stopping at step {self.state.step}: no val/loss improvement > {early.min_delta} in "
                    f"{early.patience} evaluations (best {self.state.best_val_loss:.4f})")
        return None

    def nonfinite_policy(self, info: StepInfo) -> str | None:
        """Count a skipped step; the failure message when the policy says the run must end."""
        state, cfg = self.state, self.cfg
        if info.finite:
            state.consecutive_skips = 0
            return None
        state.skipped_steps += 1
        state.consecutive_skips += 1
        what = f"non-finite loss ({info.loss}) or gradient norm ({info.grad_norm}) at step {info.step}"
        if cfg.on_nonfinite == "stop":
            return f"{what} (trainer.on_nonfinite=stop); the last checkpoint is from before it"
        if state.consecutive_skips > cfg.max_nonfinite_skips:
            return (f"{what}: {state.consecutive_skips} consecutive non-finite steps exceed "
                    f"trainer.max_nonfinite_skips={cfg.max_nonfinite_skips}")
        log.info(f"step {info.step}: {what}; update skipped ({state.consecutive_skips} in a row)")
        return None

    def log_row(self, info: StepInfo, interval_start: float) -> dict[str, float]:
        """Interval means since the last log step; a resumed run continues the interval it was in."""
        state = self.state
        elapsed = time.perf_counter() - interval_start
        state.wall_s += elapsed
        tokens = state.tokens_seen - self._interval_tokens_start
        self._interval_tokens_start = state.tokens_seen
        train_loss = state.interval_loss_sum / max(state.interval_steps, 1)
        tps = tokens / max(elapsed, 1e-9)
        self.last_train_loss = train_loss
        state.interval_loss_sum, state.interval_steps = 0.0, 0
        reported = mean_metrics(self.objective_metrics)
        self.objective_metrics.clear()
        return {
            **reported,
            "train/loss": train_loss,
            "train/lr": info.lr,
            # Muon trains the blocks' matrices at its own rate: logged beside AdamW's so the plots show both
            **({"train/lr_muon": scheduled_lr(info.step - 1, self.cfg.muon.lr, self.cfg)}
               if self.cfg.optimizer == "muon" else {}),
            "train/grad_norm": info.grad_norm,
            "train/skipped_steps": float(state.skipped_steps),
            "perf/tokens_per_s": tps,
            "perf/wall_s": state.wall_s,  # training time so far: the x axis for loss against time
            "perf/flops": state.tokens_seen * self.flops_per_token,  # training compute so far: the x axis for loss
            # against compute, so a bigger model is not credited for the FLOPs it spent
            "perf/mfu": tps * self.flops_per_token / (self.cfg.peak_flops * self.place.world_size),
        }

    def eval_row(self, step: int) -> dict[str, float]:
        """val/loss (and what the objective reports on the way), then each evaluator's metrics."""
        start = time.perf_counter()
        with self.timings.measure("val_loss"):
            val_loss = self.evaluate()
        self.last_val_loss = val_loss
        state, early = self.state, self.cfg.early_stopping
        if val_loss < state.best_val_loss and self.cfg.keep_best and self.checkpointer is not None:
            self.checkpointer.save_best(step, self.model, self.optimizer)
        if val_loss < state.best_val_loss - early.min_delta:
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        state.best_val_loss = min(state.best_val_loss, val_loss)
        row = {"val/loss": val_loss, "val/ppl": perplexity(val_loss)}
        self.last_val_bpb = self.val_bpb()
        if self.last_val_bpb is not None:
            row["val/bpb"] = self.last_val_bpb
        row.update({f"val/{k}": v for k, v in mean_metrics(self.val_metrics).items()})
        for evaluator in self.evaluators:
            with self.timings.measure(getattr(evaluator, "timing", type(evaluator).__name__)):
                row.update(evaluator(step, row))
        self.monitors.eval_end(step, val_loss)
        self.timings.evals.append(time.perf_counter() - start)
        return row


def every(step: int, n: int, last: int) -> bool:
    """Whether an interval of n steps ends at this step; the last step ends one too."""
    return step % n == 0 or step == last


def mean_metrics(record: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Means of what an objective recorded, in one host transfer."""
    if not record:
        return {}
    means = torch.stack([torch.stack(v).float().mean() for v in record.values()]).tolist()
    return dict(zip(record, means, strict=True))
