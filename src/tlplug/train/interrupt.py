"""Stopping a run cleanly on SIGINT or SIGTERM.

The first signal asks the training loop to stop after the optimizer step in progress; the
loop then ends the run with :class:`Interrupted`, leaving the resume state of the last
finished epoch in place. A second signal exits at once: every file of the run is written
through a rename, so even then the last good checkpoint is whole.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from tlplug.errors import TlplugError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(TlplugError):
    """The run stopped on a signal; ``exit_code`` is 128 plus the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """A context manager that turns SIGINT/SIGTERM into ``requested`` (the signal's name)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            sys.stderr.write("\nStopped at once; the last finished epoch's state is kept.\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested, self.signum = signal.Signals(signum).name, signum
        sys.stderr.write(
            f"\n{self.requested}: stopping after this step (send it again to stop at once)\n"
        )
        sys.stderr.flush()
