"""The console of a run: library code logs through `logging` (a logger under "llmlab"), and this module decides
where a line goes.

- One handler on the "llmlab" logger writes each line as it always read: information to stdout, warnings, errors
  and lines logged with `extra=STDERR` (progress notes) to stderr, through tqdm so that a progress bar is redrawn
  below the line instead of being broken by it. It works wherever llmlab is imported: the CLI, a test, a notebook.
- Lines propagate to the root logger, where the CLI's Hydra config (conf/hydra/job_logging/llmlab.yaml) keeps
  run.log in the run directory: the console's lines, each with its time. In a multirun every job's run.log holds
  its own lines.
- Only rank 0 speaks: under torchrun the other ranks log errors alone.
"""

from __future__ import annotations

import logging
import os
import sys

STDERR = {"console": "stderr"}  # extra= for an information line that belongs on stderr (progress, not output)
LOGGER = "llmlab"


class ConsoleHandler(logging.Handler):
    """A line to stdout (information) or stderr (warnings, errors, extra=STDERR), written around any tqdm bar.
    The streams are looked up at each line, so a redirected sys.stdout (pytest, a notebook) receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # here: importing llmlab (and its config layer) stays light

        try:
            to_stderr = record.levelno >= logging.WARNING or getattr(record, "console", None) == "stderr"
            tqdm.write(self.format(record), file=sys.stderr if to_stderr else sys.stdout)
            (sys.stderr if to_stderr else sys.stdout).flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


class NotLlmlab(logging.Filter):
    """For a root console handler: the lines of other libraries (llmlab's own reach the console through its
    handler already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == LOGGER or record.name.startswith(LOGGER + "."))


def setup() -> None:
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        return
    logger.addHandler(ConsoleHandler())
    # rank 0 (or a single process) says what happens; the other ranks would say the same again
    logger.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.ERROR)


setup()
