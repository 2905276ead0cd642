"""The converged linear probe (tlplug.train.probe) reaches the optimum of its objective."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional

from helpers import TINY
from tlplug import Engine, hookimpl
from tlplug.train.feature_cache import Features
from tlplug.train.probe import Scored, choose_l2, fit_probe


def _problem(views: int = 2, images: int = 60, dim: int = 12, classes: int = 3):
    """Overlapping Gaussian classes (not separable), features with an offset and uneven
    scales as a backbone's are, ``views`` noisy draws of each image."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(images) % classes
    centres = torch.randn(classes, dim, generator=generator)
    base = centres[labels] + 1.5 * torch.randn(images, dim, generator=generator)
    draws = base + 0.3 * torch.randn(views, images, dim, generator=generator)
    scales = torch.linspace(0.1, 5.0, dim)
    return Features(draws * scales + 3.0, labels, views=views), classes


def _objective(x, y, weight, bias, l2, smoothing):
    """What the probe minimises, on scaled features: mean cross-entropy + l2/2 ||W||^2."""
    logits = x @ weight.T + bias
    loss = functional.cross_entropy(logits, y, label_smoothing=smoothing)
    return loss + l2 / 2 * weight.pow(2).sum()


def _reference(x, y, classes, l2, smoothing, steps=20000):
    """A slow, independent solver: full-batch gradient descent in float64 from zero."""
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        _objective(x, y, weight, bias, l2, smoothing).backward()
        optimizer.step()
    return _objective(x, y, weight, bias, l2, smoothing).item()


@pytest.mark.slow
def test_the_probe_reaches_the_optimum_of_a_reference_solver():
    features, classes = _problem()
    layer = nn.Linear(features.values.shape[-1], classes)
    smoothing = 0.1
    fit = fit_probe(layer, features, seed=0, label_smoothing=smoothing)

    raw = features.values.reshape(-1, features.values.shape[-1]).double()
    y = features.labels.repeat(features.views)
    mean = raw.mean(0)
    std = (raw - mean).pow(2).mean().sqrt()
    x = (raw - mean) / std  # the probe's own scaling: one number for every feature
    # The fit layer acts on raw features; on scaled ones its weight is W * std.
    weight = layer.weight.detach().double() * std
    bias = layer.bias.detach().double() + layer.weight.detach().double() @ mean
    assert torch.allclose(
        raw @ layer.weight.double().T + layer.bias.double(), x @ weight.T + bias, atol=1e-4
    )
    found = _objective(x, y, weight, bias, fit.l2, smoothing).item()
    best = _reference(x, y, classes, fit.l2, smoothing)
    assert found <= best + 1e-4, (found, best)
    assert fit.acc > 0.6  # the classes overlap; a fit that learned nothing scores 1/3


def test_the_same_seed_fits_the_same_head_bit_for_bit():
    features, classes = _problem(views=1, images=90)
    layers = [nn.Linear(features.values.shape[-1], classes) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    fits = [fit_probe(layer, features, seed=3) for layer in layers]
    assert fits[0].l2 == fits[1].l2 and fits[0].held_out_acc == fits[1].held_out_acc
    assert torch.equal(layers[0].weight, layers[1].weight)
    assert torch.equal(layers[0].bias, layers[1].bias)


def test_weighted_views_fit_as_the_views_repeated_in_proportion():
    """Views with probabilities (every outcome of an augmentation, cached once) fit the
    head that equally likely views, each repeated in proportion, fit."""
    drawn, classes = _problem(views=2)
    weighted = Features(drawn.values, drawn.labels, views=2, weights=torch.tensor([0.25, 0.75]))
    first, second = drawn.values
    repeated = Features(torch.stack([first, second, second, second]), drawn.labels, views=4)
    layers = [nn.Linear(drawn.values.shape[-1], classes) for _ in range(3)]
    for layer in layers[1:]:
        layer.load_state_dict(layers[0].state_dict())
    fits = [fit_probe(layers[0], weighted, seed=0), fit_probe(layers[1], repeated, seed=0)]
    assert fits[0].l2 == fits[1].l2 and fits[0].held_out_acc == fits[1].held_out_acc
    assert fits[0].acc == pytest.approx(fits[1].acc) and fits[0].loss == pytest.approx(
        fits[1].loss, rel=1e-4
    )
    torch.testing.assert_close(layers[0].weight, layers[1].weight, rtol=1e-3, atol=1e-3)
    fit_probe(layers[2], drawn, seed=0)  # the same views equally likely: another head
    assert not torch.allclose(layers[0].weight, layers[2].weight, rtol=1e-3, atol=1e-3)


def test_a_final_probe_takes_the_best_l2_and_a_starting_one_the_strongest_close_to_it():
    head = (torch.zeros(1), torch.zeros(1))
    scores = [
        Scored(1e-1, loss=0.30, acc=0.90, head=head),  # one held-out image (of 10) below
        Scored(1e-2, loss=0.20, acc=1.00, head=head),
        Scored(1e-3, loss=0.10, acc=1.00, head=head),  # as accurate, lower loss
        Scored(1e-4, loss=0.40, acc=0.80, head=head),
    ]
    assert choose_l2(scores, held=10, final=True).l2 == 1e-3
    assert choose_l2(scores, held=10, final=False).l2 == 1e-1
    assert choose_l2(scores, held=20, final=False).l2 == 1e-2  # now two images below


class Anchor:
    """A regularizer plugin: an L2 pull of the backbone towards its start, constant while
    the backbone is frozen; ``keeps`` says so to tlplug (``keeps_probe``)."""

    def __init__(self, keeps: bool):
        self.keeps = keeps

    @hookimpl
    def tlplug_register_regularizers(self, register):
        keeps = self.keeps

        def anchor(model, *, alpha: float = 0.01):
            """Pull the backbone towards its starting weights."""
            start = [p.detach().clone() for p in model.backbone.parameters()]

            def penalty(batch):
                pairs = zip(model.backbone.parameters(), start, strict=True)
                moved = [(p - p0).pow(2).sum() for p, p0 in pairs if p.requires_grad]
                return alpha / 2 * sum(moved, torch.zeros(()))

            penalty.keeps_probe = keeps
            return penalty

        register("anchor", anchor)


@pytest.mark.parametrize("keeps", [True, False])
def test_a_regularizer_keeps_the_probe_only_when_it_says_it_may(
    keeps, image_folder, tmp_path, capsys
):
    recipe = {**TINY, "probe": "converge", "schedule": "linear-probe", "epochs": 1}
    Engine.from_plugins(Anchor(keeps), entrypoints=False, regularizer=("anchor",), **recipe).fit(
        image_folder, out=tmp_path / "run", quiet=False
    )
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["feature_cache"] is True
    assert ("probe" in record) is keeps
    said = "the head trains epoch by epoch, not by the converged probe: regularizer anchor"
    assert (said in out) is not keeps
