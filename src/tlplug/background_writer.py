"""Writing checkpoints while training goes on.

A checkpoint is snapshotted (tensors copied, metadata serialised) at the end of an epoch
and written to disk on a background thread, so the next epoch does not wait for
serialisation and fsync. Writes run one at a time. When epochs end faster than files can be
written, a newer snapshot of a file replaces an older one still waiting, so the disk holds
the newest state that could be written, never a mix. :meth:`wait` blocks until everything
submitted is on disk and raises a write's error. Every write goes through a temporary file
and a rename, so an interrupted write leaves the previous file whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tlplug.errors import TlplugError


class BackgroundWriter:
    """Runs file writes on a background thread, newest snapshot per file first."""

    def __init__(self) -> None:
        self._pending: dict[Path, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], None], path: Path) -> None:
        """Queue ``write`` (which writes ``path``), replacing a queued write of ``path``."""
        self._raise()
        with self._lock:
            self._pending.pop(path, None)
            self._pending[path] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, daemon=True)
                self._thread.start()

    def wait(self) -> None:
        """Block until every submitted write is done; raise the first failure."""
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                break
            thread.join()
        self._raise()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending or self._error is not None:
                    self._pending.clear()
                    self._thread = None
                    return
                path = next(iter(self._pending))
                write = self._pending.pop(path)
            try:
                write()
            except OSError as exc:
                self._error = TlplugError(
                    f"could not write {path} ({exc.strerror or exc}); free some disk space and "
                    f"resume with: tlplug run --resume {path.parent}"
                )
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
