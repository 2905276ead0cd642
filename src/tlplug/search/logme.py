"""LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning"): how well a backbone's features suit a labelled data set, with no
training.

For each class c, the one-hot column y_c is modelled as Bayesian linear regression on the
features F (N x D): y = F w + noise, w ~ N(0, 1/alpha I), noise ~ N(0, 1/beta). The
evidence p(y | F, alpha, beta) has a closed form,

    log p = D/2 log alpha + N/2 log beta - 1/2 sum_i log(alpha + beta s_i)
            - beta/2 |y - F m|^2 - alpha/2 |m|^2 - N/2 log 2 pi,

with s_i the eigenvalues of F^T F and m = beta (alpha I + beta F^T F)^-1 F^T y, and alpha
and beta are set by MacKay's fixed point (gamma = sum beta s_i / (alpha + beta s_i);
alpha = gamma / |m|^2; beta = (N - gamma) / |y - F m|^2). LogME is the evidence per image,
averaged over the classes: higher is better. It needs one eigendecomposition of the D x D
matrix F^T F, so scoring a backbone costs little more than extracting its features.
"""

from __future__ import annotations

import math

import torch

ITERATIONS = 100
TOLERANCE = 1e-4


def evidence(
    features: torch.Tensor, target: torch.Tensor, alpha: float, beta: float
) -> tuple[float, torch.Tensor]:
    """The log evidence of ``target`` (N,) given ``features`` (N, D) at ``alpha`` and
    ``beta``, and the posterior mean m, computed from the matrices as written (for checks
    and small problems; :func:`logme` uses the eigendecomposition)."""
    f, y = features.double(), target.double()
    n, d = f.shape
    a = alpha * torch.eye(d, dtype=torch.float64) + beta * f.T @ f
    m = beta * torch.linalg.solve(a, f.T @ y)
    residual = (y - f @ m).pow(2).sum()
    value = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * torch.linalg.slogdet(a)[1]
        - beta / 2 * residual
        - alpha / 2 * m.pow(2).sum()
        - n / 2 * math.log(2 * math.pi)
    )
    return float(value), m


def fit_class(
    projected: torch.Tensor,
    eigen: torch.Tensor,
    vectors: torch.Tensor,
    f: torch.Tensor,
    y: torch.Tensor,
) -> tuple[float, float, float]:
    """(evidence per image, alpha, beta) at the fixed point for one class's target ``y``;
    ``eigen``/``vectors`` decompose F^T F and ``projected`` is V^T F^T y."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    for _ in range(ITERATIONS):
        weight = beta / (alpha + beta * eigen)
        m = vectors @ (weight * projected)
        gamma = float((beta * eigen / (alpha + beta * eigen)).sum())
        residual = float((y - f @ m).pow(2).sum())
        alpha_new = gamma / max(float(m.pow(2).sum()), 1e-12)
        beta_new = (n - gamma) / max(residual, 1e-12)
        converged = abs(alpha_new / beta_new - alpha / beta) <= TOLERANCE * (alpha / beta)
        alpha, beta = alpha_new, beta_new
        if converged:
            break
    m = vectors @ (beta / (alpha + beta * eigen) * projected)
    residual = float((y - f @ m).pow(2).sum())
    value = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * float(torch.log(alpha + beta * eigen.clamp_min(0)).sum())
        - beta / 2 * residual
        - alpha / 2 * float(m.pow(2).sum())
        - n / 2 * math.log(2 * math.pi)
    )
    return value / n, alpha, beta


def logme(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The LogME score of ``features`` (N, D) for integer ``labels`` (N,): the mean over
    classes of the maximized evidence per image of each class's one-hot target."""
    f = features.double()
    eigen, vectors = torch.linalg.eigh(f.T @ f)
    eigen = eigen.clamp_min(0)
    scores = []
    for label in labels.unique().tolist():
        y = (labels == label).double()
        projected = vectors.T @ (f.T @ y)
        scores.append(fit_class(projected, eigen, vectors, f, y)[0])
    return sum(scores) / len(scores)
