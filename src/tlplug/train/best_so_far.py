"""The best-so-far tally of a run: what the best epoch scored, and the time and skipped
batches spent so far; saved in the resume state so a resumed run keeps counting."""

from __future__ import annotations

import math
from typing import Any

import attrs


@attrs.define
class Tally:
    """The best validation result so far and the run's running totals."""

    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0  # 0: no epoch validated yet
    per_class_correct: list[int] = attrs.field(factory=list)  # of the best epoch
    per_class_count: list[int] = attrs.field(factory=list)
    confusion: list[list[int]] = attrs.field(factory=list)  # of the best epoch
    best_source: str = "model"  # or "ema": whose weights scored best
    stale: int = 0  # validations since the best one
    stopped_early: bool = False  # --patience ended the run
    seconds: float = 0.0  # training time, across resumes
    skipped_nonfinite: int = 0

    def offer(self, epoch: int, val: Any, source: str = "model") -> bool:
        """Take epoch ``epoch``'s validation (an :class:`~tlplug.train.step.Evaluation` of
        ``source``'s weights) if it beats the best (higher accuracy, then lower loss);
        return whether it did."""
        acc, loss = val.stats.acc, val.stats.loss
        if (acc, -loss) <= (self.best_acc, -self.best_loss):
            self.stale += 1
            return False
        self.best_acc, self.best_loss, self.best_epoch = acc, loss, epoch
        self.per_class_correct, self.per_class_count = val.correct, val.count
        self.confusion, self.best_source, self.stale = val.confusion.tolist(), source, 0
        return True

    @property
    def validated(self) -> bool:
        """Whether any epoch was validated (a run with ``--val-split 0`` never is)."""
        return self.best_acc >= 0

    def per_class(self, classes) -> dict[str, float | None]:
        """The best epoch's accuracy per class name; None for a class with no images."""
        if not self.validated:
            return {}
        return per_class(classes, self.per_class_correct, self.per_class_count)

    def to_json(self) -> dict[str, Any]:
        """Return the tally as a JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Tally:
        """The tally of a finished run, as its summary.json tells it."""
        confusion = summary.get("confusion_matrix") or []
        best = summary.get("best_val_acc")
        return cls(
            best_acc=-1.0 if best is None else best,
            best_epoch=summary["best_epoch"],
            per_class_correct=[row[i] for i, row in enumerate(confusion)],
            per_class_count=[sum(row) for row in confusion],
            confusion=confusion,
            best_source=summary.get("best_source", "model"),
            seconds=summary.get("seconds", 0.0),
            skipped_nonfinite=summary.get("skipped_nonfinite", 0),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        """Rebuild a tally from :meth:`to_json` output, or from the dict of runs saved
        before the tally was a class (``best_acc``, ``per_class: [correct, count]``...)."""
        data = dict(data)
        if "per_class" in data:
            data["per_class_correct"], data["per_class_count"] = data.pop("per_class")
        return cls(**data)


def per_class(classes, correct: list[int], count: list[int]) -> dict[str, float | None]:
    """Accuracy per class name; None for a class with no images."""
    return {
        name: (c / n if n else None) for name, c, n in zip(classes, correct, count, strict=True)
    }
