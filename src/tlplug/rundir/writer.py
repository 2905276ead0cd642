"""Writing checkpoints while training goes on.

A checkpoint is snapshotted (tensors copied, metadata serialised) at the end of an epoch
and written to disk on a background thread, so the next epoch does not wait for
serialisation and fsync. Writes run one at a time. When epochs end faster than files can be
written, a newer snapshot of a file replaces an older one still waiting, so the disk holds
the newest state that could be written, never a mix. :meth:`wait` blocks until everything
submitted is on disk and raises a write's error. Every write goes through a temporary file
and a rename, so an interrupted write leaves the previous file whole.

Tensors declared still with :meth:`BackgroundWriter.hold_still` (a stage's frozen
parameters, which no optimizer step touches) are copied once and the copy is shared by
every snapshot until the next declaration: a linear probe's checkpoints copy the head, not
the whole backbone, every epoch.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from tlplug.errors import TlplugError


class BackgroundWriter:
    """Runs file writes on a background thread, newest snapshot per file first."""

    def __init__(self) -> None:
        self._pending: dict[Path, Callable[[], None]] = {}
        self._lock = threading.RLock()  # held by together() while it queues writes
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._still: dict[int, torch.Tensor] = {}  # data_ptr -> a tensor that holds still
        self._copies: dict[int, torch.Tensor] = {}  # data_ptr -> its shared copy
        self._submitted: set[Path] = set()
        self.generation: str | None = None  # names the current set of still tensors

    def hold_still(self, tensors: Iterable[torch.Tensor]) -> None:
        """Declare ``tensors`` unchanged until the next call; snapshots until then share one
        copy of each. The caller guarantees it: nothing may write them in between."""
        self._still = {t.data_ptr(): t for t in tensors}
        self._copies = {}
        self.generation = uuid.uuid4().hex[:16]

    def holds_still(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is (a view equal to) one declared still."""
        still = self._still.get(tensor.data_ptr())
        return still is not None and _same_view(still, tensor)

    def submitted(self, path: Path) -> bool:
        """Whether a write of ``path`` was ever submitted to this writer."""
        return path in self._submitted

    def snapshot(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Contiguous CPU copies of ``state``'s tensors, safe to write while training goes on."""
        copies = {}
        for key, tensor in state.items():
            pointer = tensor.data_ptr()
            if not self.holds_still(tensor):
                copies[key] = _copy(tensor)
                continue
            if pointer not in self._copies:
                self._copies[pointer] = _copy(tensor)
            copies[key] = self._copies[pointer]
        return copies

    def submit(self, write: Callable[[], None], path: Path) -> None:
        """Queue ``write`` (which writes ``path``), replacing a queued write of ``path``."""
        self._raise()
        self._submitted.add(path)
        with self._lock:
            self._pending.pop(path, None)
            self._pending[path] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, daemon=True)
                self._thread.start()

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Hold the writes submitted in the block until it ends, so the thread never picks up
        one of them before the rest are queued: a resume state naming a new best epoch is
        never written ahead of those best weights."""
        with self._lock:
            yield

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


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.device == b.device
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.storage_offset() == b.storage_offset()
    )
