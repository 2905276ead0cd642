"""Each penalty against a computation by hand, on real tlplug models."""

from __future__ import annotations

import copy

import pytest
import torch
from tlplug_regularize import bss, default_layers, delta, l2_sp

from helpers import make_model
from tlplug import Batch, OptionError


@pytest.fixture(scope="module")
def resnet():
    """A timm resnet10t with a linear head for three classes, random weights."""
    return make_model()


@pytest.fixture
def model(resnet):
    """A fresh copy per test, so tests may change its weights."""
    return copy.deepcopy(resnet)


def batch_of(model, images=None, features=None) -> Batch:
    """A training step's :class:`Batch` as the engine builds it."""
    if features is None:
        features = model.backbone(images)
    logits = model.head(features)
    targets = torch.nn.functional.one_hot(torch.arange(len(logits)) % 3, 3).float()
    return Batch(images, features, logits, targets)


def sq(tensors) -> torch.Tensor:
    """``sum ||t||^2`` in float64, detached."""
    return sum(t.detach().double().pow(2).sum() for t in tensors)


def nudge(params, scale=0.01, seed=0) -> None:
    """Move every parameter by Gaussian noise of standard deviation ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=generator))


# --- l2-sp ------------------------------------------------------------------------------


def test_l2sp_is_exactly_zero_at_the_start_without_its_head_term(model):
    penalty = l2_sp(model, alpha=0.1, beta=0.0)
    assert penalty(None).item() == 0.0
    assert penalty.backbone_term().item() == 0.0


def test_l2sp_head_term_at_the_start_is_beta_half_the_squared_head_norm(model):
    penalty = l2_sp(model, alpha=0.1, beta=0.02)
    expected = 0.02 / 2 * sq(model.head.parameters())
    assert penalty(None).item() == pytest.approx(expected.item(), rel=1e-5)


def test_l2sp_after_weights_move_equals_the_formula(model):
    start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    penalty = l2_sp(model, alpha=0.5, beta=0.02)
    nudge(model.backbone.parameters())
    moved = [p - start[n] for n, p in model.backbone.named_parameters()]
    expected = 0.5 / 2 * sq(moved) + 0.02 / 2 * sq(model.head.parameters())
    value = penalty(None)
    assert value.item() > 0.02 / 2 * sq(model.head.parameters()).item()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_l2sp_grows_over_real_training_steps(model):
    penalty = l2_sp(model, alpha=0.01, beta=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randn(6, 3, 32, 32)
    values = [penalty(None).item()]
    for _ in range(3):
        batch = batch_of(model, images)
        loss = torch.nn.functional.cross_entropy(batch.logits, batch.targets)
        optimizer.zero_grad()
        (loss + penalty(batch)).backward()
        optimizer.step()
        values.append(penalty(None).item())
    assert values[0] == 0.0
    assert values[1] > 0.0
    assert values[-1] > values[1]


def test_l2sp_gradient_pulls_each_trainable_weight_toward_its_start(model):
    start = [p.detach().clone() for p in model.backbone.parameters()]
    penalty = l2_sp(model, alpha=0.3, beta=0.0)
    nudge(model.backbone.parameters())
    penalty(None).backward()
    for p, p0 in zip(model.backbone.parameters(), start, strict=True):
        torch.testing.assert_close(p.grad, 0.3 * (p.detach() - p0))


def test_l2sp_leaves_out_frozen_parameters(model):
    penalty = l2_sp(model, alpha=1.0, beta=0.0)
    stem = set(model.group_param_names("stem"))
    named = dict(model.named_parameters())
    nudge(model.parameters())
    for name in stem:
        named[name].requires_grad_(False)
    expected = 0.5 * sum(sq([p - p0]) for (p, p0) in penalty.anchored if p.requires_grad)
    value = penalty(None)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    everything = 0.5 * sq([p - p0 for p, p0 in penalty.anchored])
    assert value.item() < everything.item()


# --- bss --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_bss_equals_the_smallest_squared_singular_values(model, k):
    features = torch.randn(8, 512, dtype=torch.float64).float()
    penalty = bss(model, eta=0.5, k=k)
    singular = torch.linalg.svdvals(features.double())
    expected = 0.5 * singular.sort().values[:k].pow(2).sum()
    value = penalty(batch_of(model, features=features))
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bss_on_the_backbone_features_has_a_gradient_into_the_backbone(model):
    images = torch.randn(6, 3, 32, 32)
    batch = batch_of(model, images)
    expected = 0.001 * torch.linalg.svdvals(batch.features.detach()).min().pow(2)
    value = bss(model)(batch)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    value.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_bss_skips_a_batch_with_no_more_rows_than_k(model):
    penalty = bss(model, k=2)
    assert penalty(batch_of(model, features=torch.randn(2, 512))).item() == 0.0
    assert penalty(batch_of(model, features=torch.randn(3, 512))).item() > 0.0


def test_bss_takes_half_precision_features(model):
    features = torch.randn(8, 512)
    penalty = bss(model)
    logits = torch.zeros(8, 3, dtype=torch.bfloat16)
    value = penalty(Batch(None, features.bfloat16(), logits, torch.zeros(8, 3)))
    assert value.dtype == torch.float32
    expected = 0.001 * torch.linalg.svdvals(features.bfloat16().float()).min().pow(2)
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


# --- delta ------------------------------------------------------------------------------


def stage_outputs(net, images):
    """A timm ResNet's stem activation and layer1..4 outputs, computed step by step."""
    x = net.act1(net.bn1(net.conv1(images)))
    outputs = [x.clone()]
    x = net.maxpool(x)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


def test_delta_compares_timm_feature_stages_by_default(model):
    assert default_layers(model) == ("act1", "layer1", "layer2", "layer3", "layer4")


def test_delta_falls_back_to_each_groups_last_module():
    model = make_model("torchvision:resnet18")
    assert not hasattr(model.backbone, "feature_info")
    assert default_layers(model) == ("bn1", "layer1", "layer2", "layer3", "layer4")


def test_delta_is_zero_at_the_start_and_matches_the_formula_after_a_change(model):
    model.eval()  # same BatchNorm behaviour as the frozen copy
    start = copy.deepcopy(model.backbone)
    penalty = delta(model, alpha=2.0, beta=0.0)
    images = torch.randn(4, 3, 32, 32)
    assert penalty(batch_of(model, images)).item() == pytest.approx(0.0, abs=1e-12)
    nudge(model.backbone.layer3.parameters(), scale=0.05)
    value = penalty(batch_of(model, images))
    with torch.no_grad():
        now, then = stage_outputs(model.backbone, images), stage_outputs(start, images)
    expected = 2.0 * sum((a - b).pow(2).mean() for a, b in zip(now, then, strict=True))
    assert value.item() > 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)
    assert (now[1] - then[1]).abs().max() == 0  # layer1 did not move: only layer3 and up count


def test_delta_gradient_reaches_the_model_and_never_the_frozen_copy(model):
    penalty = delta(model, alpha=1.0, beta=0.01)
    assert penalty.needs_images
    nudge(model.backbone.parameters(), scale=0.05)
    penalty(batch_of(model, torch.randn(4, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert all(not p.requires_grad and p.grad is None for p in penalty.source.parameters())
    assert not penalty.source.training


def test_delta_keeps_nothing_from_passes_without_grad_and_can_be_removed(model):
    penalty = delta(model, layers=("layer2",))
    with torch.no_grad():
        model.backbone(torch.randn(2, 3, 32, 32))
    assert not penalty._live
    model.backbone(torch.randn(2, 3, 32, 32))
    assert set(penalty._live) == {"layer2"}
    penalty.remove()
    assert not penalty._live
    model.backbone(torch.randn(2, 3, 32, 32))
    assert not penalty._live


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "options", "words"),
    [
        (l2_sp, {"alpha": -0.1}, "'l2-sp' option 'alpha' must be at least 0, got -0.1"),
        (l2_sp, {"beta": -1.0}, "'l2-sp' option 'beta'"),
        (bss, {"eta": -1.0}, "'bss' option 'eta'"),
        (bss, {"k": 0}, "'bss' option 'k' must be at least 1, got 0"),
        (delta, {"alpha": -1.0}, "'delta' option 'alpha'"),
        (delta, {"layers": ("layer9",)}, "no module 'layer9'; its stages are act1, layer1"),
    ],
)
def test_bad_option_values_are_one_line_option_errors(model, factory, options, words):
    with pytest.raises(OptionError) as error:
        factory(model, **options)
    assert words in str(error.value)
    assert "\n" not in str(error.value)
