"""Stopping a long run cleanly: SIGINT / SIGTERM end it after the current work, and reader processes
die with their parent.

>>> with GracefulStop() as stop:                    # doctest: +SKIP
...     for batch in batches:
...         work(batch)
...         if stop.signum is not None:
...             break
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

__all__ = ["GracefulStop", "Interrupted", "die_with_parent"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal after finishing its current work. ``exit_code`` is the shell's
    convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM); ``report`` what was done."""

    def __init__(self, signum: int, report=None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.report = signum, report

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """While active (in the main thread), the first SIGINT or SIGTERM only sets :attr:`signum`; the
    loop checks it between units of work. A second signal raises ``KeyboardInterrupt`` at once.
    Elsewhere than the main thread it does nothing (signals go to the main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def die_with_parent(parent_pid: int, worker_id: int | None = None) -> None:
    """In a child process (a ``DataLoader`` worker: ``worker_init_fn=partial(die_with_parent,
    os.getpid())``, which passes ``worker_id``, unused): be killed when the parent dies, even by
    ``kill -9`` (Linux ``PR_SET_PDEATHSIG``), and leave SIGINT to the parent, which stops the run cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
