"""SIGTERM and Ctrl-C during training: a flag the trainer reads at the end of each step.

A job scheduler's SIGTERM (or one Ctrl-C) lets the step finish; the trainer then writes a
checkpoint and returns, and ``fourm train`` exits with 143 (130) so that the job can be requeued
with ``--resume auto``. A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class StopSignals:
    """Turns SIGTERM / SIGINT into a flag read at the end of each step (a second Ctrl-C interrupts)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
