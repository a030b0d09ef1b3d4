"""The monitor contract: when monitors are called, what they receive, and how their failures stay theirs.

The trainer calls a MonitorSet at fixed points (train start, after backward, on a non-finite step,
step end, eval end, train end) and knows nothing else. Each monitor decides on its own schedule
whether a step is a capture step; on other steps a call costs one integer comparison. A monitor
that raises is reported once and switched off; training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from llmlab.config.monitors import ProbeConfig
from llmlab.console import STDERR
from llmlab.monitors.models import ModelView, view_of
from llmlab.monitors.pool import FigurePool
from llmlab.monitors.worker import BackgroundWorker
from llmlab.sinks import Sink

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    """Capture every `every` steps (0 = never) plus the listed steps and epochs."""

    every: int = 0
    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    _extra: set[int] = field(default_factory=set, repr=False)

    def resolve(self, steps_per_epoch: float | None) -> None:
        self._extra = set(self.steps)
        if steps_per_epoch:
            self._extra |= {max(1, math.ceil(e * steps_per_epoch)) for e in self.epochs}

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self._extra


@dataclass
class StepInfo:
    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens_seen: int
    finite: bool = True

    @property
    def as_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr,
                "tokens_seen": self.tokens_seen}


class AlertLog:
    """alerts.jsonl, the console (once per kind and subject) and the sinks' text `alerts`."""

    def __init__(self, path: Path, sinks: Sink | None = None):
        self.path, self.sinks = path, sinks
        self._said: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def alert(self, step: int, kind: str, subject: str, message: str, level: str = "warning", **details) -> None:
        """level: warning (something may be wrong) or info (an event worth knowing, e.g. a circuit formed)."""
        row = {"step": step, "kind": kind, "subject": subject, "message": message, "level": level,
               "time": time.time(), **details}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if (kind, subject) not in self._said:
                self._said.add((kind, subject))
                tag = "[llmlab alert]" if level == "warning" else f"[llmlab {level}]"
                log.log(logging.WARNING if level == "warning" else logging.INFO, f"{tag} step {step}: {message}",
                        extra=STDERR)
            if self.sinks is not None:
                self.sinks.log_text(step, "alerts", f"{kind} ({subject}): {message}")


@dataclass
class ProbeResult:
    """One eval-mode forward of the probe batch, shared by every monitor that captures on that step."""

    step: int
    attention: list[torch.Tensor]  # per layer (B, H, T, T) probabilities
    mlp_peaks: list[torch.Tensor | None]  # per layer (ffn,) peak |activation| of each MLP unit; None: no dense MLP


@torch.no_grad()
def probe_forward(model: nn.Module, probe: torch.Tensor, step: int, view: ModelView | None = None) -> ProbeResult:
    view = view or view_of(model)
    if view.attention is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers with attention found to probe")
    peaks: dict[int, torch.Tensor] = {}

    def hook(i):
        def capture(module, inputs):
            peaks[i] = inputs[0].detach().abs().amax(dim=(0, 1))  # the MLP's hidden units, (ffn,)
        return capture

    hidden = view.hidden_units()
    handles = [module.register_forward_pre_hook(hook(i)) for i, module in enumerate(hidden) if module is not None]
    try:
        attention = view.attention(model, probe)
    finally:
        for handle in handles:
            handle.remove()
    return ProbeResult(step, attention, [peaks.get(i) for i in range(len(hidden))])


@dataclass
class MonitorContext:
    """What every monitor may use; built once per run by the Run."""

    model: nn.Module
    out_dir: Path  # <run>/monitors
    sinks: Sink | None  # the run's sinks for monitors: scalars, text, images, histograms (None: none kept)
    worker: BackgroundWorker
    alerts: AlertLog
    figures: FigurePool = field(default_factory=lambda: FigurePool(0))
    probe: torch.Tensor | None = None  # (B, T) token ids on the model's device, fixed for the run
    decode_token: Callable[[int], str] | None = None  # token id -> label for axes
    steps_per_epoch: float | None = None
    resume_step: int | None = None  # history rows past this step are from a run that crashed
    _probe: ProbeResult | None = field(default=None, repr=False)
    view: ModelView = field(init=False, repr=False)  # the model's layers, attention and MLPs, as monitors see them

    def __post_init__(self) -> None:
        self.view = view_of(self.model)

    def probe_forward(self, step: int) -> ProbeResult:
        """The probe forward of this step, run once however many monitors ask for it."""
        if self._probe is None or self._probe.step != step:
            self._probe = probe_forward(self.model, self.probe, step, self.view)
        return self._probe


@dataclass
class Door:
    """How a monitor used in a user's own loop is set up: where it writes and what it shows."""

    save_dir: Path
    tensorboard: bool = False  # TensorBoard events in <save_dir>/tb
    decode_token: Callable[[int], str] | None = None  # token labels on attention maps
    max_workers: int = 2
    max_pending: int = 64


class Monitor:
    """Base monitor: every hook is a no-op. Subclasses keep `schedule` and override what they need.

    Two doors, one implementation: llmlab's trainer calls the on_* hooks through a MonitorSet; in any other
    loop the monitor is a context manager whose after_backward(model, step) and log(model, batch, step) build
    the same context on first use and call the same hooks, through a MonitorSet of its own.
    """

    name = "monitor"

    def __init__(self, schedule: Schedule, door: Door | None = None, probe_cfg: ProbeConfig | None = None):
        if door is not None and getattr(multiprocessing.current_process(), "_inheriting", False):
            # a figure process importing a script that has no `if __name__ == "__main__":` guard: it would train
            # the whole script again. It stops here; the run draws its figures itself and says why (FigurePool)
            raise SystemExit(0)
        self.schedule = schedule
        self.ctx: MonitorContext | None = None
        self.door = door
        self._own: MonitorSet | None = None
        self._last_step, self._tokens = -1, 0
        self.probe_cfg = probe_cfg  # a monitor that looks through a probe: how, in any loop, the first batch is cut

    def on_train_start(self, ctx: MonitorContext, step: int) -> None:
        self.ctx = ctx
        self.schedule.resolve(ctx.steps_per_epoch)

    def output_dir(self, ctx: MonitorContext) -> Path:
        return self.door.save_dir if self.door else ctx.out_dir / self.name

    def on_after_backward(self, step: int) -> None: ...

    def on_nonfinite(self, info: StepInfo) -> None: ...

    def on_step_end(self, info: StepInfo) -> None: ...

    def on_eval_end(self, step: int, val_loss: float) -> None: ...

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Every row the trainer logs (train/..., val/..., what the stage's objective reports): read, never changed."""

    def on_train_end(self, step: int) -> None: ...

    def submit(self, job: Callable[[], None]) -> None:
        self.ctx.worker.submit(self.name, job)

    # ---- the door for any PyTorch loop ------------------------------------------------------------
    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, model: nn.Module, step: int, batch=None) -> MonitorSet:
        if self._own is None:
            if self.door is None:
                raise ValueError(f"{type(self).__name__}: give save_dir=... to use it outside llmlab's trainer")
            door = self.door
            sinks = None
            if door.tensorboard:
                from llmlab.sinks.tensorboard import TensorBoardSink

                sinks = TensorBoardSink(door.save_dir / "tb")
            ctx = MonitorContext(model, out_dir=door.save_dir, sinks=sinks,
                                 worker=BackgroundWorker(door.max_workers, door.max_pending),
                                 alerts=AlertLog(door.save_dir / "alerts.jsonl", sinks),
                                 figures=FigurePool(door.max_workers), probe=self.probe_of(batch),
                                 decode_token=door.decode_token)
            self._own = MonitorSet([self], ctx)
            self._own.train_start(step - 1)
        return self._own

    def probe_of(self, batch) -> torch.Tensor | None:
        """The fixed probe a monitor takes from the first batch it is given: its first probe_cfg.sequences rows,
        cut to probe_cfg.tokens (None: it needs none)."""
        if batch is None or self.probe_cfg is None:
            return None
        return input_ids(batch)[: self.probe_cfg.sequences, : self.probe_cfg.tokens].detach()

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Call after loss.backward() and before optimizer.step(): gradients are read here."""
        self._start(model, step).after_backward(step)

    def log(self, model: nn.Module, batch=None, step: int = 0, loss: float | None = None) -> None:
        """Call once per step, after optimizer.step(): captures when the schedule says so."""
        own = self._start(model, step, batch)
        self._tokens += int(input_ids(batch).numel()) if batch is not None else 0
        self._last_step = step
        own.step_end(StepInfo(step, math.nan if loss is None else float(loss), math.nan, math.nan, self._tokens))

    def close(self) -> dict:
        """Flush what is pending (files, figures, TensorBoard); the summary of dropped and completed jobs."""
        if self._own is None:
            return {}
        own, self._own = self._own, None
        own.train_end(self._last_step)
        summary = own.close()
        if own.ctx.sinks is not None:
            own.ctx.sinks.close()
        return summary


def input_ids(batch) -> torch.Tensor:
    """The token ids of a batch: a tensor, a dict with input_ids, or a tuple/list whose first item they are."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and "input_ids" in batch:
        return batch["input_ids"]
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"a batch must be token ids, a dict with input_ids or an (input_ids, ...) tuple; "
                    f"got {type(batch).__name__}")


class MonitorSet:
    """Fans each trainer event out to the monitors, isolating failures; owns the worker's lifetime."""

    def __init__(self, monitors: list[Monitor], ctx: MonitorContext | None = None):
        self.monitors = monitors
        self.ctx = ctx
        self.disabled: dict[str, str] = {}
        if ctx is not None:
            ctx.worker.on_error = self._job_failed

    def __bool__(self) -> bool:
        return bool(self.monitors)

    def _call(self, method: str, *args) -> None:
        for monitor in self.monitors:
            if monitor.name in self.disabled:
                continue
            try:
                getattr(monitor, method)(*args)
            except Exception as exc:
                step = args[0] if isinstance(args[0], int) else getattr(args[0], "step", -1)
                self._disable(monitor.name, exc, step)

    def _job_failed(self, owner: str, exc: BaseException) -> None:
        self._disable(owner, exc, -1)

    def _disable(self, name: str, exc: BaseException, step: int) -> None:
        if name in self.disabled:
            return
        self.disabled[name] = f"{type(exc).__name__}: {exc}"
        detail = "".join(traceback.format_exception(exc)[-3:]).strip()
        message = f"monitor '{name}' raised {type(exc).__name__}: {exc}; it is disabled, training continues"
        if self.ctx is not None:
            self.ctx.alerts.alert(step, "monitor_error", name, message, traceback=detail)
        else:
            log.warning(f"[llmlab] {message}")

    def train_start(self, step: int) -> None:
        for monitor in self.monitors:
            try:
                monitor.on_train_start(self.ctx, step)
            except Exception as exc:
                self._disable(monitor.name, exc, step)

    def after_backward(self, step: int) -> None:
        self._call("on_after_backward", step)

    def nonfinite(self, info: StepInfo) -> None:
        self._call("on_nonfinite", info)

    def step_end(self, info: StepInfo) -> None:
        self._call("on_step_end", info)
        if self.ctx is not None:
            self.ctx._probe = None  # its attention maps are large; each step probes afresh

    def eval_end(self, step: int, val_loss: float) -> None:
        self._call("on_eval_end", step, val_loss)

    def logged(self, step: int, metrics: dict[str, float]) -> None:
        self._call("on_log", step, metrics)

    def train_end(self, step: int) -> None:
        self._call("on_train_end", step)

    def _drain(self, progress: bool) -> None:
        worker = self.ctx.worker
        self.ctx.figures.hurry()  # training is over: figures need not wait for idle CPU any more
        queued = worker.pending()
        if not queued:
            return
        log.info(f"monitors: writing {queued} queued jobs (figures, statistics, TensorBoard images) into "
                 f"{self.ctx.out_dir}")
        with tqdm(total=queued, desc="monitors", unit="job", disable=not progress, dynamic_ncols=True) as bar:
            while not worker.flush(timeout=0.5):
                bar.update(max(queued - worker.pending() - bar.n, 0))
            bar.update(queued - bar.n)

    def close(self, progress: bool = False) -> dict:
        """Flush every pending job (end of run, interruption or exception) and say what was lost. Jobs still
        queued when training ends (monitors=full draws hundreds of figures) are announced on one line with the
        folder they go to, and counted down on a bar when progress is on: the process is not silently stuck."""
        if self.ctx is None:
            return {}
        self._drain(progress)
        self.ctx.worker.close()
        self.ctx.figures.close()
        summary = {"dropped_jobs": self.ctx.worker.dropped, "completed_jobs": self.ctx.worker.completed,
                   "disabled": self.disabled}
        if self.ctx.worker.dropped:
            self.ctx.alerts.alert(-1, "queue_full", "worker",
                                  f"{self.ctx.worker.dropped} monitor jobs dropped because the queue was full "
                                  "(raise monitors.max_pending or capture less often)")
        return summary
