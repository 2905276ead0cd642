"""What a run prints: plain lines on stdout, a batch progress bar on an interactive stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Console:
    """Prints run progress unless ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._said: set[str] = set()

    def say(self, message: str) -> None:
        """Print one line."""
        if not self.quiet:
            print(message, flush=True)

    def say_once(self, message: str) -> None:
        """Print one line unless this console printed it before."""
        if message not in self._said:
            self._said.add(message)
            self.say(message)

    def progress(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Iterate ``items`` with a transient progress bar when stderr is a terminal."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=label, leave=False, unit="batch", file=sys.stderr)
