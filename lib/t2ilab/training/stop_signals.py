"""SIGTERM and Ctrl-C during training: finish the step, save a mid-epoch checkpoint, exit."""

from __future__ import annotations

import signal
import threading


class StopRequests:
    """While entered (main process, main thread), SIGTERM/SIGINT set `.signal` instead of killing the run."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal: int | None = None
        self._previous: dict = {}

    def _request(self, signum, frame) -> None:
        self.signal = signum

    def __enter__(self) -> "StopRequests":
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
