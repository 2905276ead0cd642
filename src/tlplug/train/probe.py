"""A linear probe fit to convergence on cached features: the standard linear-evaluation
protocol (logistic regression on frozen features, its L2 strength chosen on held-out data).

While a stage trains only a linear head on cached features, the problem is convex and
small: full-batch L-BFGS solves it in seconds, where epochs of the optimizer at the run's
learning rate stop wherever the epochs run out. The L2 strength is picked from
:data:`L2_GRID` by accuracy on a fifth of the training images held out (stratified,
seeded; every augmented view of an image on the same side; see :func:`choose_l2`), then
the head is fit on all of them, starting from the chosen one. The loss is the run's:
cross-entropy with its label smoothing and class weights.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import attrs
import torch
from torch import nn
from torch.nn import functional

from tlplug.train.feature_cache import Features

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # on the mean loss, scaled features: l2/2 ||W||^2
HELD_OUT = 0.2
MAX_ITER = 100
MAX_ELEMENTS = 2**28  # larger caches train epoch by epoch instead


@attrs.frozen
class ProbeFit:
    """What fitting the probe found: the L2 strength, its held-out accuracy, and the loss
    and accuracy of the fit head on every cached training view."""

    l2: float
    held_out_acc: float
    loss: float
    acc: float
    images: int
    iterations: int
    seconds: float

    def to_json(self) -> dict:
        """JSON-ready record for metrics.jsonl."""
        return attrs.asdict(self)


def linear_layer(head: nn.Module) -> nn.Linear | None:
    """The head's one linear layer when the head is that layer (after dropout, if any)."""
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        rest = [m for m in head if not isinstance(m, (nn.Linear, nn.Dropout))]
        if len(linears) == 1 and not rest and head[-1] is linears[0]:
            return linears[0]
    return None


def fits(features: Features) -> bool:
    """Whether the cached training features are small enough to solve full-batch."""
    return features.values.numel() <= MAX_ELEMENTS


def fit_run_probe(run: Any, features: Features, final: bool) -> ProbeFit:
    """Fit ``run``'s linear head to ``features`` with the run's seed and loss (label
    smoothing, class weights), as a converged head stage does; ``final`` when no stage
    fine-tunes from it (see :func:`choose_l2`)."""
    loss = run.loss
    return fit_probe(
        linear_layer(run.model.head),
        features,
        seed=run.recipe.seed,
        label_smoothing=loss.label_smoothing,
        class_weights=loss.class_weights,
        final=final,
    )


def fit_probe(
    layer: nn.Linear,
    features: Features,
    *,
    seed: int,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    device: torch.device | None = None,
    final: bool = True,
) -> ProbeFit:
    """Fit ``layer`` to the cached ``features`` (every view) and return what was found;
    ``final`` when the head is the end product, not the start of fine-tuning."""
    started = time.perf_counter()
    device = device or layer.weight.device
    values = features.values.to(device, torch.float32)
    views, count = features.views, len(features.labels)
    raw = values.reshape(-1, values.shape[-1])
    each = features.weights if features.weights is not None else torch.ones(views)
    w = each.to(device, torch.float32).repeat_interleave(count)  # each row's view's weight
    share = (w / w.sum())[:, None]
    # Centred and scaled by one number, so the L2 grid means the same for every backbone.
    # Not per feature: that would give a near-constant feature a large weight, which the
    # fine-tuning stages after a probe would see blow up once that feature starts to move.
    mean = (raw * share).sum(0)
    std = ((raw - mean).pow(2) * share).sum().div(raw.shape[1]).sqrt().clamp_min(1e-6)
    x = (raw - mean) / std
    y = features.labels.to(device).repeat(views)
    images = torch.arange(count, device=device).repeat(views)
    held = _held_out(features.labels, seed).to(device)[images]
    solve = _Solver(layer.out_features, label_smoothing, class_weights, device)
    start = (layer.weight.detach().float(), layer.bias.detach().float())
    start = (start[0] * std, start[1] + start[0] @ mean)  # the layer, on scaled features
    scores, warm = [], start
    for l2 in sorted(L2_GRID, reverse=True):  # each from the stronger one's solution
        weight, bias, _ = solve(x[~held], y[~held], w[~held], l2, warm)
        warm = (weight, bias)
        scores.append(Scored(l2, *_scores(x[held] @ weight.T + bias, y[held], w[held]), warm))
    chosen = choose_l2(scores, int(held[:count].sum()), final)
    weight, bias, iterations = solve(x, y, w, chosen.l2, chosen.head)
    with torch.no_grad():
        loss, acc = _scores(x @ weight.T + bias, y, w)
        layer.weight.copy_(weight / std)  # back to the features as they are
        layer.bias.copy_(bias - (weight / std) @ mean)
    seconds = time.perf_counter() - started
    return ProbeFit(chosen.l2, chosen.acc, loss, acc, count, iterations, seconds)


class Scored(NamedTuple):
    """A head fit with L2 strength ``l2`` without the held-out images, and its held-out
    loss and accuracy."""

    l2: float
    loss: float
    acc: float
    head: tuple[torch.Tensor, torch.Tensor]  # weight and bias, on the scaled features


def choose_l2(scores: list[Scored], held: int, final: bool = True) -> Scored:
    """For a head that is the end product (``final``): the best held-out accuracy, equal
    ones to the lower held-out loss. For a head that fine-tuning starts from: the strongest
    L2 within one of the ``held`` held-out images of the best accuracy, whose smaller
    logits move the unfrozen layers less at the switch (measured: 3 points better after
    fine-tuning on bench/quality.py's digits, where the best-accuracy head is 5 points
    better as a probe)."""
    if final:
        return max(scores, key=lambda s: (s.acc, -s.loss))
    top = max(s.acc for s in scores)
    return max((s for s in scores if s.acc >= top - 1 / max(1, held)), key=lambda s: s.l2)


class _Solver:
    """Full-batch L-BFGS on cross-entropy plus an L2 term on the weights (not the bias)."""

    def __init__(self, classes: int, smoothing: float, weights, device) -> None:
        self.classes, self.smoothing = classes, smoothing
        self.weights = weights.to(device) if weights is not None else None

    def __call__(self, x, y, w, l2: float, start):
        """Minimize the ``w``-weighted loss of ``(x, y)`` from ``start``: (weight, bias, steps)."""
        # The mean reduction divides by the rows' class weights; each row counts ``w`` times.
        scale = w / (w * (self.weights[y] if self.weights is not None else 1.0)).sum()
        weight = start[0].clone().requires_grad_(True)
        bias = start[1].clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=MAX_ITER,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )

        def closure():
            optimizer.zero_grad()
            each = functional.cross_entropy(
                x @ weight.T + bias,
                y,
                weight=self.weights,
                label_smoothing=self.smoothing,
                reduction="none",
            )
            loss = (each * scale).sum()
            loss = loss + l2 / 2 * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
        return weight.detach(), bias.detach(), iterations


def _scores(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """The ``w``-weighted mean cross-entropy and accuracy of ``logits`` for labels ``y``."""
    with torch.no_grad():
        loss = (functional.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
        acc = ((logits.argmax(1) == y).float() * w).sum() / w.sum()
    return loss.item(), acc.item()


def _held_out(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded, stratified fifth of the images (a class of one image keeps it)."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        count = round(len(members) * HELD_OUT) if len(members) > 1 else 0
        chosen = members[torch.randperm(len(members), generator=generator)[:count]]
        held[chosen] = True
    return held
