"""`python -m llmlab.run` with one fault injected, for the fault-injection tests.

    python tests/fault_driver.py FAULT STEP [run overrides...]

kill        SIGKILL (kill -9) the process right after optimizer step STEP
kill_write  SIGKILL halfway through writing the checkpoint of step STEP (weights written, state.pt half)
sigterm     SIGTERM during step STEP
sigint      SIGINT during step STEP
sigint2     SIGINT during step STEP, and a second SIGINT halfway through the checkpoint that first one asks for
sigterm_rank1  under torchrun: SIGTERM to rank 1 alone during step STEP

The faults live here, not in llmlab: the driver patches the trainer and torch.save, then runs the real CLI.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

FAULT, STEP = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], *sys.argv[3:]]

import llmlab.run as run_module  # noqa: E402  (after argv is rewritten for Hydra)
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


trainer_module.Trainer.train_step = train_step
torch.save = save
run_module.main()
