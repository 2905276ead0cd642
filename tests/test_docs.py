"""docs/plugins.md works as written: every marked example runs as a plugin and takes effect,
and the hook reference covers exactly the hooks there are.

An example is a fenced ``python`` block right after a ``<!-- example: NAME -->`` line; it is
executed as a module called ``docs_NAME`` (the plugin's name when it is passed in) and its
``plugin`` attribute, or the module itself, is the plugin.
"""

from __future__ import annotations

import functools
import json
import random
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers import TINY
from tlplug import Engine, hookimpl
from tlplug.data.synthetic import draw
from tlplug.plugins import hookspecs
from tlplug.testing import FAST_RECIPE

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
EXAMPLE = re.compile(r"^<!-- example: ([\w-]+) -->\n```python\n(.*?)^```$", re.M | re.S)
EXPECTED = {
    "backbone",
    "head",
    "schedule",
    "lr-schedule",
    "augmentation",
    "data-source",
    "adapter",
    "regularizer",
    "distillation-loss",
    "lifecycle",
    "testing",
    "exporter",
    "logger",
    "kind",
    "command",
}


def examples() -> dict[str, str]:
    """Every marked example of the guide, by name."""
    found: dict[str, str] = {}
    for name, code in EXAMPLE.findall(GUIDE.read_text()):
        assert name not in found, f"two examples are called {name!r}"
        found[name] = code
    return found


def load(name: str) -> types.ModuleType:
    """Execute example ``name`` as a fresh module."""
    module = types.ModuleType(f"docs_{name.replace('-', '_')}")
    module.__file__ = f"{GUIDE}:{name}"
    exec(compile(examples()[name], module.__file__, "exec"), module.__dict__)
    return module


def plugin_of(module: types.ModuleType):
    return getattr(module, "plugin", module)


def fit(plugin, folder, out: Path, **recipe):
    """Train with ``plugin`` (installed plugins off) on the tiny recipe, one epoch unless
    ``recipe`` says otherwise; return the FitResult and config.json."""
    engine = Engine.from_plugins(plugin, entrypoints=False, **{**TINY, "epochs": 1, **recipe})
    result = engine.fit(folder, out=out, quiet=True)
    return result, json.loads((out / "config.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Snapshot:
    """A lifecycle plugin keeping the live model and a copy of its parameters at the start."""

    name = "snapshot"

    @hookimpl
    def tlplug_run_start(self, run):
        self.model = run.model
        self.start = {n: p.detach().clone() for n, p in run.model.named_parameters()}


def recording(factory, calls: list, what):
    """Wrap an augmentation or regularizer factory so that each call of what it makes is
    recorded as ``what(*args)``; options, phase and order stay as they were."""

    @functools.wraps(factory)
    def make(*args, **options):
        made = factory(*args, **options)

        def run(*inputs):
            calls.append(what(*inputs))
            return made(*inputs)

        return run

    return make


# --- the guide as a whole --------------------------------------------------------------------


def test_every_example_is_there_and_compiles():
    found = examples()
    assert set(found) == EXPECTED
    blocks = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    for code in blocks:  # marked or not, every Python block is valid Python
        compile(code, str(GUIDE), "exec")


def test_hook_reference_covers_exactly_the_hooks():
    documented = set(re.findall(r"^### `(tlplug_\w+)`$", GUIDE.read_text(), re.M))
    hooks = {
        name
        for name, spec in vars(hookspecs).items()
        if name.startswith("tlplug_") and hasattr(spec, "tlplug_spec")
    }
    assert not hooks - documented, f"hooks without a reference section: {hooks - documented}"
    assert not documented - hooks, f"documented hooks that do not exist: {documented - hooks}"


def test_schedule_example_is_short():
    lines = examples()["schedule"].rstrip("\n").splitlines()
    assert len(lines) <= 35, f"the schedule example has {len(lines)} lines"


# --- each example, run -------------------------------------------------------------------------


def test_backbone_example(image_folder, tmp_path):
    module = load("backbone")
    provider = module.MiniCNN()
    assert provider.list_models("*16") == ["w16"]
    _, config = fit(
        module,
        image_folder,
        tmp_path,
        backbone="minicnn:w8",
        backbone_opts={"depth": "3"},
        schedule="full",
    )
    resolved = config["resolved"]
    assert [g["name"] for g in resolved["groups"]] == ["stem", "stage1", "stage2", "stage3", "head"]
    assert resolved["backbone"]["provider"]["plugin"] == "docs_backbone"
    assert resolved["backbone"]["num_features"] == 8
    classifier = Engine.load(tmp_path, module, entrypoints=False)
    with torch.no_grad():
        assert classifier(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_head_example(image_folder, tmp_path):
    module = load("head")
    _, config = fit(module, image_folder, tmp_path, head="cosine-head", head_opts={"scale": "16"})
    assert config["resolved"]["head"] == {
        "name": "cosine-head",
        "plugin": "docs_head",
        "options": {"scale": 16.0},
    }
    head = Engine.load(tmp_path, module, entrypoints=False).model.head
    assert type(head).__name__ == "CosineHead" and head.scale == 16.0


def test_schedule_example(image_folder, tmp_path):
    module = load("schedule")
    assert [s.name for s in module.chain_thaw(["stem", "a", "b", "head"], 9)] == [
        "head",
        "b",
        "a",
        "stem",
        "all",
    ]
    result, config = fit(
        module, image_folder, tmp_path, schedule="chain-thaw", epochs=2, augment=[]
    )
    assert config["resolved"]["plan"] == [
        {
            "start": 0,
            "name": "head",
            "trainable": ["head"],
            "biases": [],
            "lr_scale": 1.0,
            "warmup": 0.0,
        },
        {
            "start": 1,
            "name": "layer4",
            "trainable": ["layer4"],
            "biases": [],
            "lr_scale": 1.0,
            "warmup": 0.0,
        },
    ]
    assert [h["trainable_groups"] for h in result.history] == [["head"], ["layer4"]]


def test_lr_schedule_example(image_folder, tmp_path):
    module = load("lr-schedule")
    result, config = fit(
        module,
        image_folder,
        tmp_path,
        schedule="linear-probe",  # with no augmentation the head trains on cached features
        augment=[],
        epochs=2,
        lr=0.01,
        lr_schedule="linear-decay",
        lr_schedule_opts={"end_ratio": "0.5"},
    )
    assert config["resolved"]["lr_schedule"]["plugin"] == "docs_lr_schedule"
    # 36 training images in batches of 8: 4 steps an epoch, 8 in all; decay to half by the end
    assert [h["lr"]["head"] for h in result.history] == pytest.approx([0.0075, 0.005])


def test_augmentation_example(image_folder, tmp_path):
    module = load("augmentation")
    pixels, batches = [], []
    module.channel_shuffle = recording(
        module.channel_shuffle, pixels, lambda image: (image.dtype, tuple(image.shape))
    )
    module.gaussian_noise = recording(
        module.gaussian_noise,
        batches,
        lambda images, targets: (images.dtype, tuple(images.shape), tuple(targets.shape)),
    )
    _, config = fit(
        module,
        image_folder,
        tmp_path,
        augment=["gaussian-noise", "channel-shuffle"],
        augment_opts={"channel-shuffle": {"p": "1"}},
    )
    # pixel phase first whatever the order given
    assert [a["name"] for a in config["resolved"]["augmentations"]] == [
        "channel-shuffle",
        "gaussian-noise",
    ]
    assert set(pixels) == {(torch.uint8, (3, 32, 32))} and len(pixels) >= 32
    assert set(batches) == {(torch.float32, (8, 3, 32, 32), (8, 3))} and len(batches) == 4
    image = torch.arange(3, dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    shuffled = module.ChannelShuffle(1.0)(image)
    assert sorted(shuffled[:, 0, 0].tolist()) == [0, 1, 2]


def test_adapter_example(image_folder, tmp_path):
    module = load("adapter")
    snapshot = Snapshot()
    recipe = {**TINY, "epochs": 1, "schedule": "full", "adapter": "channel-scale"}
    Engine.from_plugins(module, snapshot, entrypoints=False, **recipe).fit(
        image_folder, out=tmp_path, quiet=True
    )
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resolved"]["adapter"]["name"] == "channel-scale"
    assert config["resolved"]["pinned_params"] > 0
    model = snapshot.model
    now = dict(model.named_parameters())
    pinned = [n for n in now if n in model.pinned]
    scales = [n for n in now if n.endswith(".scale")]
    assert pinned and scales
    assert all(torch.equal(now[n], snapshot.start[n]) for n in pinned)
    assert any(not torch.equal(now[n], snapshot.start[n]) for n in scales)
    # the saved weights have the scales folded in: a plain model without the adapter loads
    # them and computes the same logits
    classifier = Engine.load(tmp_path, entrypoints=False)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(images) / classifier.model.temperature  # loaded: calibrated
        assert torch.allclose(classifier.eval()(images), expected, atol=1e-5)


def test_regularizer_example(image_folder, tmp_path):
    module = load("regularizer")
    values = []
    module.anchor_l2 = recording(module.anchor_l2, values, lambda batch: batch)
    _, config = fit(
        module,
        image_folder,
        tmp_path,
        schedule="full",
        regularizer=["anchor-l2"],
        regularizer_opts={"anchor-l2": {"alpha": "0.5"}},
    )
    assert config["resolved"]["regularizers"] == [
        {"name": "anchor-l2", "plugin": "docs_regularizer", "options": {"alpha": 0.5}}
    ]
    assert len(values) == 4  # once per training step
    penalty = module.anchor_l2.__wrapped__  # the factory itself, on a model of our own
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    term = penalty(model, alpha=2.0)
    batch = types.SimpleNamespace(logits=torch.zeros(1, 2))
    assert term(batch).item() == 0.0
    with torch.no_grad():
        model.backbone.weight.add_(1.0)
    assert term(batch).item() == pytest.approx(4.0)  # alpha / 2 * four squared ones


def test_distillation_loss_example(image_folder, tmp_path):
    """The example's loss is called at every step of a student of a finished run, with the
    teacher's logits, and is the cross-entropy on the teacher's top class."""
    module = load("distillation-loss")
    fit(module, image_folder, tmp_path / "teacher")
    seen = []
    module.hard_teacher = recording(module.hard_teacher, seen, lambda *args: args)
    _, config = fit(
        module,
        image_folder,
        tmp_path / "student",
        schedule="full",
        teacher=str(tmp_path / "teacher"),
        distill_loss="hard-teacher",
    )
    assert config["resolved"]["distill_loss"]["name"] == "hard-teacher"
    assert len(seen) == 4  # once per training step
    logits, teacher_logits, hard = seen[0]
    loss = module.hard_teacher.__wrapped__(weight=1.0)(logits, teacher_logits, hard)
    expected = torch.nn.functional.cross_entropy(logits, teacher_logits.argmax(1))
    assert loss.item() == pytest.approx(expected.item())


def test_lifecycle_example(image_folder, tmp_path):
    module = load("lifecycle")
    _, config = fit(
        plugin_of(module), image_folder, tmp_path, schedule="gradual", epochs=2, augment=[]
    )
    assert config["progress"] == {"started_after_epoch": 0}
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert all("val_acc_gain" in m for m in metrics) and len(metrics) == 2
    assert metrics[0]["val_acc_gain"] == pytest.approx(metrics[0]["val_acc"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages_seen"] == ["head", "layer4..head"]


def test_testing_example(tmp_path, tiny_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "chain_thaw", load("schedule"))
    sys.modules["chain_thaw"].__name__ = "chain_thaw"
    module = load("testing")
    module.test_first_epoch_trains_only_the_head(tiny_images, tmp_path / "a")
    module.test_second_epoch_trains_the_top_group_alone(
        tiny_images, tmp_path / "b", dict(FAST_RECIPE)
    )


def test_data_source_example(tmp_path):
    module = load("data-source")
    folder = tmp_path / "flat"
    folder.mkdir()
    for pattern in ("checker", "dots", "stripes"):
        for i in range(10):
            image = draw(pattern, random.Random(f"{pattern}/{i}")).resize((40, 40))
            image.save(folder / f"{pattern}-{i}.png")
    (folder / "notes.txt").write_text("not an image")
    _, config = fit(
        module,
        f"flat:{folder}",
        tmp_path / "run",
        data_opts={"sep": "-"},
        val_split=0.25,
    )
    data = config["resolved"]["data"]
    assert config["resolved"]["classes"] == ["checker", "dots", "stripes"]
    assert (data["kind"], data["files"], data["sep"]) == ("flat", 30, "-")
    assert (data["num_train"], data["num_val"]) == (22, 8)
    assert data["source"] == "flat"
