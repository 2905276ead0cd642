"""LogME: the evidence formula against a case worked by hand, the eigendecomposed fit
against the formula, its fixed point against its neighbours, and the ranking it gives."""

from __future__ import annotations

import math

import pytest
import torch

from tlplug.search.logme import evidence, fit_class, logme


def test_the_evidence_of_a_case_worked_by_hand():
    # F = [1, 2]^T, y = [1, 0], alpha = beta = 1: A = 1 + 5 = 6, m = F^T y / 6 = 1/6,
    # |y - F m|^2 = (5/6)^2 + (2/6)^2 = 29/36, |m|^2 = 1/36, D = 1, N = 2:
    # log p = -1/2 log 6 - 29/72 - 1/72 - log(2 pi)
    value, m = evidence(torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 0.0]), 1.0, 1.0)
    assert m.item() == pytest.approx(1 / 6)
    assert value == pytest.approx(-0.5 * math.log(6) - 30 / 72 - math.log(2 * math.pi))


def problem(seed: int, n: int = 60, d: int = 8):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=generator, dtype=torch.float64)
    target = (features[:, 0] + 0.5 * torch.randn(n, generator=generator) > 0).double()
    return features, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_is_the_formula_at_a_maximum(seed):
    f, y = problem(seed)
    eigen, vectors = torch.linalg.eigh(f.T @ f)
    per_image, alpha, beta = fit_class(vectors.T @ (f.T @ y), eigen, vectors, f, y)
    at_fit, _ = evidence(f, y, alpha, beta)
    assert per_image * len(y) == pytest.approx(at_fit, rel=1e-9)
    for da in (0.5, 0.8, 1.25, 2.0):
        for db in (0.5, 0.8, 1.25, 2.0):
            assert evidence(f, y, alpha * da, beta * db)[0] <= at_fit + 1e-9


def test_features_that_separate_the_classes_score_higher():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    noise = torch.randn(120, 16, generator=generator)
    separating = noise + 3 * torch.nn.functional.one_hot(labels, 16).float()
    assert logme(separating, labels) > logme(noise, labels) + 0.1
