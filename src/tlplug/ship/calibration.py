"""Calibration: whether a predicted 0.9 means right 90% of the time, and a temperature that
makes it so (Guo et al. 2017, "On calibration of modern neural networks").

A single temperature T divides the logits before the softmax: the predicted class never
changes, only how sure the probabilities say the model is. It is fitted by minimizing the
negative log-likelihood of held-out images: at the end of a run on its validation images,
or by ``tlplug eval --calibrate`` on the images evaluated. It is kept in the run directory
(calibration.json) and the model tlplug loads from a run divides its logits by it, so
predict, eval and every exporter give calibrated probabilities.

The expected calibration error (ECE) is the gap between confidence and accuracy averaged
over 15 equal-width confidence bins, weighted by the images in each.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tlplug.rundir import layout as rundir

CALIBRATION = "calibration.json"
BINS = 15
LOWEST, HIGHEST = 0.05, 20.0  # the temperatures a fit may choose


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T in [0.05, 20] minimizing the NLL of ``softmax(log_probs / T)``
    (log-probabilities or logits of shape (N, C)) against ``labels``."""
    scores = log_probs.double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scores / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(HIGHEST, max(LOWEST, math.exp(log_t.item()))))


def scaled(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``probs`` as they are with the logits divided by ``temperature``."""
    return F.softmax(probs.clamp_min(1e-12).log() / temperature, dim=1)


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``labels`` under ``probs``."""
    return F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per confidence bin: its range, images, mean confidence and accuracy."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).double()
    rows = []
    for index in range(bins):
        low, high = index / bins, (index + 1) / bins
        inside = (confidence > low) & (confidence <= high) if index else confidence <= high
        count = int(inside.sum())
        rows.append(
            {
                "low": low,
                "high": high,
                "images": count,
                "confidence": confidence[inside].double().mean().item() if count else None,
                "accuracy": correct[inside].mean().item() if count else None,
            }
        )
    return rows


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The ECE of ``probs``: |confidence - accuracy| averaged over the bins by images."""
    rows, total = reliability(probs, labels), max(1, len(labels))
    return (
        sum(r["images"] * abs(r["confidence"] - r["accuracy"]) for r in rows if r["images"]) / total
    )


def measured(probs: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    """ECE and NLL of ``probs`` as they are and with ``temperature`` applied."""
    after = scaled(probs, temperature)
    return {
        "temperature": temperature,
        "images": len(labels),
        "ece_before": expected_calibration_error(probs, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": nll(probs, labels),
        "nll_after": nll(after, labels),
    }


def read_temperature(run_dir: Path) -> float:
    """The temperature kept in ``run_dir`` (1.0: none)."""
    path = run_dir / CALIBRATION
    return float(rundir.read_json(path)["temperature"]) if path.is_file() else 1.0


def write_calibration(run_dir: Path, record: dict[str, Any]) -> None:
    """Keep ``record`` (:func:`measured`, plus where it was fitted) as the run's
    calibration."""
    rundir.write_json(run_dir / CALIBRATION, record)
