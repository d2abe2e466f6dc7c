"""SIGINT / SIGTERM during training: finish the step, save, then stop (a second Ctrl-C stops at once)."""

from __future__ import annotations

import signal
import threading


class TrainingStopped(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped the run; ``exit_code`` 130 or 143, as a shell reports them."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def install_stop_handlers(trainer) -> dict:
    """SIGINT/SIGTERM set ``trainer._stop_signal``, checked at step boundaries; a second SIGINT raises
    TrainingStopped at once. Returns the previous handlers for :func:`restore_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if trainer._stop_signal is not None and signum == signal.SIGINT:
            raise TrainingStopped("second SIGINT: stopped without saving; the last checkpoint "
                                  f"(step {trainer._written_step}) is kept", 130)
        trainer._stop_signal = signum

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(handlers: dict) -> None:
    for sig, previous in handlers.items():
        signal.signal(sig, previous)
