"""`python -m llmlab.run` with one fault injected, for the fault-injection tests.

    python tests/fault_driver.py FAULT STEP [run overrides...]

kill        SIGKILL (kill -9) the process right after optimizer step STEP
kill_write  SIGKILL halfway through writing the checkpoint of step STEP (weights written, state.pt half)
sigterm     SIGTERM during step STEP
sigint      SIGINT during step STEP
sigint2     SIGINT during step STEP, and a second SIGINT halfway through the checkpoint that first one asks for
sigterm_rank1  under torchrun: SIGTERM to rank 1 alone during step STEP
sigterm_setup  SIGTERM while the run is being set up, before step 1
sigterm_eval   SIGTERM after the first validation batch of the evaluation at step STEP (of 200 batches); prints
               how many validation batches ran after it
sigterm_split  SIGTERM after the first batch of the final scoring of the whole validation split (made 100 times
               longer); prints how many of its batches ran after it (STEP is not used)
enospc      the disk is full while the checkpoint of step STEP is written
eacces      the run directory cannot be written (as a read-only directory would answer a user who is not root)

The faults live here, not in llmlab: the driver patches the trainer and torch.save, then runs the real CLI.
"""

from __future__ import annotations

import atexit
import errno
import io
import os
import signal
import sys

import torch

FAULT, STEP = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], *sys.argv[3:]]

import llmlab.run as run_module  # noqa: E402  (after argv is rewritten for Hydra)
import llmlab.runner as runner_module  # noqa: E402
from llmlab.train import run_dir as run_dir_module  # noqa: E402
from llmlab.train import split_eval as split_eval_module  # noqa: E402
from llmlab.train import trainer as trainer_module  # noqa: E402

SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigint2": signal.SIGINT, "kill": signal.SIGKILL,
           "sigterm_rank1": signal.SIGTERM}
signalled = FAULT != "sigterm_rank1" or os.environ.get("RANK") == "1"
original_train_step = trainer_module.Trainer.train_step
original_save = torch.save


def train_step(self, *args):
    info = original_train_step(self, *args)
    if self.state.step == STEP and FAULT in SIGNALS and signalled:
        os.kill(os.getpid(), SIGNALS[FAULT])  # Python runs the handler before the next bytecode
    return info


def save(obj, f, *args, **kwargs):
    step = obj.get("trainer", {}).get("step") if isinstance(obj, dict) else None
    if step == STEP and FAULT in ("kill_write", "sigint2"):
        buffer = io.BytesIO()
        original_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL if FAULT == "kill_write" else signal.SIGINT)
    return original_save(obj, f, *args, **kwargs)


def no_space(obj, f, *args, **kwargs):
    step = obj.get("trainer", {}).get("step") if isinstance(obj, dict) else None
    if step == STEP:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return original_save(obj, f, *args, **kwargs)


def signal_in_setup(self):
    os.kill(os.getpid(), signal.SIGTERM)
    return original_setup(self)


after_signal = []


def slow_evaluate(self):
    """The evaluation at STEP over 200 batches, SIGTERM after the first: how many more run is printed at exit."""
    if self.state.step == STEP:
        self.val_batches = list(self.val_batches) * 100
        original_loss = self.objective.loss

        def loss(model, batch, record=None):
            if after_signal:
                after_signal.append(1)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
                after_signal.append(0)
            return original_loss(model, batch, record)

        self.objective.loss = loss
        atexit.register(lambda: print(f"validation batches after the signal: {sum(after_signal)}", file=sys.stderr))
    return original_evaluate(self)


def slow_split_windows(*args, **kwargs):
    """The whole split's windows 100 times over, SIGTERM after the first batch: how many more run is printed."""
    atexit.register(lambda: print(f"split batches after the signal: {sum(after_signal)}", file=sys.stderr))
    batches = list(original_split_windows(*args, **kwargs)) * 100
    for n, batch in enumerate(batches):
        if n == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next bytecode
        after_signal.append(int(n >= 1))
        yield batch


def unwritable(self, out_dir):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out_dir / ".lock"))


original_setup = runner_module.Run._setup
original_split_windows = split_eval_module.split_windows
original_evaluate = trainer_module.Trainer.evaluate
trainer_module.Trainer.train_step = train_step
torch.save = {"enospc": no_space}.get(FAULT, save)
if FAULT == "sigterm_setup":
    runner_module.Run._setup = signal_in_setup
if FAULT == "sigterm_eval":
    trainer_module.Trainer.evaluate = slow_evaluate
if FAULT == "sigterm_split":
    split_eval_module.split_windows = slow_split_windows
if FAULT == "eacces":
    run_dir_module.RunDirLock.__init__ = unwritable
run_module.main()
