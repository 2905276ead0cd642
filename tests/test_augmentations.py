"""The built-in augmentations: each runs in its phase and keeps shape and type; mixup and
cutmix give soft targets the loss takes; the engine runs them in a fixed order."""

import json
import random

import pytest
import torch
from torch import nn

from tlplug.builtin import augmentations
from tlplug.data.synthetic import draw
from tlplug.data.transforms import OneOf, build_transforms, normalize
from tlplug.engine import Engine
from tlplug.errors import OptionError
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.marks import phase_of as phase_of_strategy
from tlplug.train.loss import Batch, TrainingLoss

REGISTRY = PluginHost(entrypoints=False).registry("augmentations")
BUILTIN = [s.name for s in REGISTRY.strategies() if s.plugin == "augmentations"]


def phase_of(name: str) -> str:
    return getattr(REGISTRY.get(name).factory, "phase", "pixels")


def names_in(phase: str) -> list[str]:
    return [name for name in BUILTIN if phase_of(name) == phase]


def soft_batch(size: int = 4, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i`` filled with the value ``i``, its target one-hot class ``i``."""
    images = torch.arange(size, dtype=torch.float32).view(size, 1, 1, 1).expand(size, 3, 32, 32)
    targets = nn.functional.one_hot(torch.arange(size), classes).float()
    return images.contiguous(), targets


def test_builtins_declare_phase_order_and_description():
    expected = {
        "crop": ("pixels", 10),
        "flip": ("pixels", 20),
        "randaugment": ("pixels", 30),
        "trivialaugment": ("pixels", 30),
        "autoaugment": ("pixels", 30),
        "color-jitter": ("pixels", 30),
        "random-erasing": ("tensor", 50),
        "mixup": ("batch", 50),
        "cutmix": ("batch", 50),
    }
    assert sorted(BUILTIN) == sorted(expected)
    for name, (phase, order) in expected.items():
        strategy = REGISTRY.get(name)
        assert (strategy.factory.phase, strategy.factory.order) == (phase, order), name
        assert strategy.description and "\n" not in strategy.description


@pytest.mark.parametrize("name", names_in("pixels"))
def test_pixel_augmentation_on_a_tiny_image(name):
    torch.manual_seed(0)
    augment = REGISTRY.get(name).factory(32)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = augment(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_policies(policy):
    torch.manual_seed(0)
    augment = REGISTRY.get("autoaugment").factory(32, policy=policy)
    out = augment(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("name", names_in("tensor"))
def test_tensor_augmentation_on_a_normalized_image(name):
    torch.manual_seed(0)
    image = torch.randn(3, 32, 32)
    out = REGISTRY.get(name).factory(32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_random_erasing_noise_and_constant():
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 5.0)
    noisy = REGISTRY.get("random-erasing").factory(32, p=1.0)(image)
    erased = noisy != 5.0
    assert erased.any() and noisy[erased].std() > 0.5  # per-pixel normal noise
    assert torch.equal(image, torch.full((3, 32, 32), 5.0))  # the input is left alone
    flat = REGISTRY.get("random-erasing").factory(32, p=1.0, value=0.0)(image)
    assert (flat == 0).any() and set(flat.unique().tolist()) == {0.0, 5.0}


@pytest.mark.parametrize("name", names_in("batch"))
def test_batch_augmentation_gives_soft_targets_the_loss_takes(name):
    torch.manual_seed(0)
    images, targets = soft_batch()
    before = images.clone(), targets.clone()
    mixed, soft = REGISTRY.get(name).factory(32)(images, targets)
    assert mixed.shape == images.shape and mixed.dtype == torch.float32
    assert soft.shape == targets.shape and soft.dtype == torch.float32
    assert torch.equal(images, before[0]) and torch.equal(targets, before[1])
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert ((soft > 0).sum(1) == 2).all() and (soft.max(1).values < 1).all()  # not one-hot

    model = nn.Linear(3 * 32 * 32, 4)
    logits = model(mixed.flatten(1))
    loss = TrainingLoss(4, label_smoothing=0.1)(Batch(mixed, logits, logits, soft))
    loss.backward()
    assert torch.isfinite(loss) and model.weight.grad.abs().sum() > 0


def test_mixup_blends_images_and_targets_alike():
    torch.manual_seed(1)
    images, targets = torch.randn(4, 3, 8, 8), soft_batch()[1]
    mixed, soft = augmentations.mixup(8, alpha=0.4)(images, targets)
    lam = float(soft[0, 0])
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    assert soft[0, 3] == pytest.approx(1 - lam)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_cutmix_lam_is_the_pasted_area(alpha):
    cutmix = augmentations.cutmix(32, alpha=alpha)
    images, targets = soft_batch()
    pasted_any = False
    for seed in range(40):
        torch.manual_seed(seed)
        mixed, soft = cutmix(images, targets)
        for i in range(4):
            pasted = int((mixed[i, 0] == 3 - i).sum())  # pixels from the flipped partner
            assert (mixed[i, 0] == i).sum() + pasted == 32 * 32
            assert soft[i, 3 - i] * 32 * 32 == pytest.approx(pasted, abs=1e-3)
            assert soft[i, i] == pytest.approx(1 - pasted / (32 * 32), abs=1e-6)
            pasted_any |= pasted > 0
    assert pasted_any


def test_batch_augmentations_follow_torch_seed():
    choose = OneOf([augmentations.mixup(32), augmentations.cutmix(32)])
    images, targets = torch.randn(6, 3, 16, 16), torch.eye(6)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([choose(images, targets) for _ in range(5)])
    for (a_images, a_targets), (b_images, b_targets) in zip(*runs, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_targets, b_targets)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mixup", {"alpha": 0.0}, "'mixup' option 'alpha' must be greater than 0"),
        ("cutmix", {"alpha": -1.0}, "'cutmix' option 'alpha' must be greater than 0"),
        ("autoaugment", {"policy": "coco"}, "one of imagenet, cifar10, svhn, got 'coco'"),
        ("random-erasing", {"value": "noise"}, "'random' or a number"),
        ("random-erasing", {"p": 2.0}, "'p' must be in [0, 1]"),
        ("crop", {"scale": (0.5,)}, "needs two numbers MIN,MAX"),
        ("crop", {"ratio": (2.0, 1.0)}, "needs MIN <= MAX"),
    ],
)
def test_bad_options_are_clear_errors(name, options, message):
    with pytest.raises(OptionError) as caught:
        REGISTRY.get(name).factory(32, **options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_autoaugment_policy_checked_when_the_engine_is_made(tiny):
    with pytest.raises(OptionError, match="must be one of imagenet, cifar10, svhn"):
        Engine.from_plugins(
            entrypoints=False,
            **tiny,
            augment=("autoaugment",),
            augment_opts={"autoaugment": {"policy": "coco"}},
        )


def order(tiny, *names) -> list[str]:
    engine = Engine.from_plugins(entrypoints=False, **tiny, augment=names)
    return [c.strategy.name for c in engine.parts.augmentations]


def test_order_by_phase_and_order_not_by_command_line(tiny):
    assert order(tiny, "flip", "crop") == order(tiny, "crop", "flip") == ["crop", "flip"]
    given = ("cutmix", "mixup", "random-erasing", "color-jitter", "flip", "crop")
    want = ["crop", "flip", "color-jitter", "random-erasing", "cutmix", "mixup"]
    assert order(tiny, *given) == want
    # Ties (same phase and order) keep the order given.
    assert order(tiny, "randaugment", "color-jitter") == ["randaugment", "color-jitter"]
    assert order(tiny, "color-jitter", "randaugment") == ["color-jitter", "randaugment"]
    engine = Engine.from_plugins(entrypoints=False, **tiny, augment=given)
    phases = [phase_of_strategy(c.strategy) for c in engine.parts.augmentations]
    assert phases == ["pixels"] * 3 + ["tensor"] + ["batch"] * 2


def test_run_records_the_order_it_used(tiny, image_folder, tmp_path):
    engine = Engine.from_plugins(
        entrypoints=False,
        **tiny,
        augment=("random-erasing", "flip", "crop"),
        augment_opts={"flip": {"p": 1.0}},
    )
    engine.fit(image_folder, epochs=1, out=tmp_path / "r", quiet=True)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    recorded = config["resolved"]["augmentations"]
    assert [a["name"] for a in recorded] == ["crop", "flip", "random-erasing"]
    assert recorded[1]["options"] == {"p": 1.0}


def test_mixup_cutmix_and_label_smoothing_train(tiny, image_folder, tmp_path, monkeypatch):
    calls = {"MixUp": 0, "CutMix": 0}
    for cls in (augmentations.MixUp, augmentations.CutMix):

        def counted(self, images, targets, _call=cls.__call__, _name=cls.__name__):
            calls[_name] += 1
            return _call(self, images, targets)

        monkeypatch.setattr(cls, "__call__", counted)
    engine = Engine.from_plugins(
        entrypoints=False,
        **tiny,
        augment=("mixup", "cutmix", "crop"),
        augment_opts={"cutmix": {"alpha": 0.5}},
        label_smoothing=0.1,
    )
    result = engine.fit(image_folder, epochs=1, out=tmp_path / "r", quiet=True)
    record = result.history[0]
    assert torch.isfinite(torch.tensor([record["train_loss"], record["val_loss"]])).all()
    assert calls["MixUp"] + calls["CutMix"] == 36 // tiny["batch_size"]  # every training batch


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(96, 96), (300, 97), (61, 240), (73, 73), (40, 50), (64, 64)])
def test_base_transform_gives_torchvisions_pixels(shape, interpolation):
    from torchvision.transforms import InterpolationMode, v2

    from tlplug.data.transforms import base_transform

    config = DataConfig(interpolation=interpolation, crop_pct=0.875)
    image = draw("dots", random.Random(3)).resize(shape)
    mode = InterpolationMode(interpolation)
    reference = v2.Compose(
        [v2.Resize(73, interpolation=mode, antialias=True), v2.CenterCrop(64), v2.PILToTensor()]
    )
    assert torch.equal(base_transform(config, 64)(image), reference(image))


def test_train_and_eval_transforms():
    config = DataConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)
    flip = REGISTRY.get("flip").factory(32, p=1.0)
    base, train = build_transforms(config, 32, [flip])
    pixels = base(draw("stripes", random.Random(0)))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    assert build_transforms(config, 32)[1] is None  # nothing to apply without augmentation
    flipped = train(pixels)  # pixel augmentations keep uint8: normalizing is the device's job
    assert flipped.dtype == torch.uint8 and torch.equal(flipped, pixels.flip(-1))

    norm = normalize(config)
    batch = norm(torch.stack([pixels, flipped]))
    assert batch.dtype == torch.float32 and batch.min() >= -1.0 and batch.max() <= 1.0
    assert torch.equal(batch[0], norm(pixels))  # one image and a batch normalize alike
    assert torch.equal(norm(batch), batch)  # floats count as normalized already

    erase = REGISTRY.get("random-erasing").factory(32, p=0.0)
    _, train = build_transforms(config, 32, [flip], [erase])
    assert torch.equal(train(pixels), norm(flipped))  # a tensor phase needs normalized images


def test_a_batch_augmentation_marked_always_reaches_every_batch(image_folder, tmp_path):
    """The guide's gaussian noise runs on every batch, also while mixup takes its turns."""
    from test_docs import fit, load, recording

    module = load("augmentation")
    batches: list[int] = []
    module.gaussian_noise = recording(module.gaussian_noise, batches, lambda i, t: len(i))
    fit(module, image_folder, tmp_path, augment=["gaussian-noise", "mixup", "cutmix"], epochs=2)
    assert len(batches) == 2 * (36 // 8)
