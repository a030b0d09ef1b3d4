"""Ctrl-C and a scheduler's SIGTERM: finish the step, write a checkpoint, stop; a second signal exits at once.

Between steps a signal only sets a flag the loop reads after the step (under torchrun the ranks vote on it, so all
stop after the same step). Inside an `at_once` section (setting up a run, an evaluation in one process) it stops
the section where it is: what is cut short is redone or left out, never half-saved.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

log = logging.getLogger(__name__)

SECOND_SIGNAL = "a second signal"


class Interrupted(Exception):
    """A signal arrived inside an `at_once` section."""


class StopRequested:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}
        self._at_once = 0  # depth of at_once sections

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # second signal: the user means it
            raise KeyboardInterrupt(SECOND_SIGNAL)
        self.signal_name = signal.Signals(signum).name
        if self._at_once:
            raise Interrupted(self.signal_name)
        log.info(f"\n{self.signal_name} received: finishing this step and writing a checkpoint "
                 "(signal again to exit at once)")

    @contextlib.contextmanager
    def at_once(self, enabled: bool = True) -> Iterator[None]:
        """A section a signal ends where it is (Interrupted), also one that arrived just before it."""
        if enabled and self.signal_name is not None:
            raise Interrupted(self.signal_name)
        self._at_once += enabled
        try:
            yield
        finally:
            self._at_once -= enabled

    def __enter__(self):
        with contextlib.suppress(ValueError):  # signals can only be set from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
