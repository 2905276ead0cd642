"""Helpers and pytest fixtures for testing tlplug plugins.

This module is also a pytest plugin, registered under the ``pytest11`` entry point ``tlplug``,
so wherever tlplug is installed a test can use its fixtures without a conftest::

    from tlplug.testing import make_engine, run_one_epoch

    def test_my_schedule_trains_the_head_first(tiny_images, tmp_path):
        engine = make_engine(my_plugin, schedule="my-schedule")
        assert run_one_epoch(engine, tiny_images, tmp_dir=tmp_path).trained_groups == ["head"]

``pytest -p no:tlplug`` turns the fixtures off. Nothing here replaces part of tlplug: the
engine, data loading and training are the real ones, made small enough to run in about a
second on a CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import torch

from tlplug.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlplug.engine import Engine, FitResult

#: A recipe that trains in about a second on a CPU; :func:`make_engine` starts from it.
FAST_RECIPE: dict[str, Any] = {
    "backbone": "timm:resnet10t",
    "pretrained": False,
    "img_size": 32,
    "batch_size": 8,
    "workers": 0,
    "epochs": 1,
    "plots": False,  # drawing takes longer than such a run
    "probe": "epochs",  # head stages take optimizer steps, so a plugin's strategy is exercised
}

#: The classes of :func:`write_images`, drawn with :func:`tlplug.data.synthetic.draw`.
CLASSES = ("checker", "dots", "stripes")


def make_engine(*plugins: Any, **recipe: Any) -> Engine:
    """An :class:`tlplug.Engine` with ``plugins`` and the built-ins registered, installed
    plugins left out, and :data:`FAST_RECIPE` overridden by ``recipe``."""
    from tlplug.engine import Engine

    return Engine.from_plugins(*plugins, entrypoints=False, **{**FAST_RECIPE, **recipe})


def run_cli(capsys: pytest.CaptureFixture, *args: Any) -> tuple[int, str, str]:
    """Run the ``tlplug`` command in-process, as a user's shell would; return (exit status,
    stdout, stderr). ``capsys`` is pytest's fixture of that name."""
    from tlplug.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_images(
    root: str | Path, classes: tuple[str, ...] = CLASSES, train: int = 8, val: int = 4
) -> Path:
    """Write ``root/train/<class>/`` and ``root/val/<class>/`` with ``train`` and ``val``
    drawn 48 px PNG images per class; return ``root``. ``classes`` are pattern names of
    :data:`tlplug.data.synthetic.CLASSES`."""
    from tlplug.data.synthetic import draw

    root = Path(root)
    for split, count in (("train", train), ("val", val)):
        for pattern in classes:
            folder = root / split / pattern
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = draw(pattern, random.Random(f"{split}/{pattern}/{index}"))
                image.resize((48, 48)).save(folder / f"{pattern}_{index}.png")
    return root


@attrs.frozen
class EpochResult:
    """What :func:`run_one_epoch` saw.

    ``groups``: every layer group, stem to head; ``trained_groups``: those of them with at
    least one parameter that changed; ``changed_params``: the full names of the parameters
    that changed; ``fit``: what :meth:`tlplug.Engine.fit` returned.
    """

    fit: FitResult
    groups: list[str]
    trained_groups: list[str]
    changed_params: list[str]

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.fit.run_dir

    @property
    def config(self) -> dict[str, Any]:
        """The run's config.json."""
        return json.loads((self.run_dir / "config.json").read_text())


def run_one_epoch(
    engine: Engine, data: str | Path | None = None, *, tmp_dir: str | Path
) -> EpochResult:
    """Train one epoch with ``engine`` into a new run directory under ``tmp_dir`` and report
    which layer groups trained, comparing every parameter bit for bit before and after.

    ``data`` is anything ``--data`` takes; None writes a tiny image folder under ``tmp_dir``.
    The run is a one-epoch run (the schedule is asked for a plan of one epoch), so a freeze
    schedule's first stage is what trains. Parameters are copied after every other plugin's
    ``tlplug_run_start`` and before any ``tlplug_run_end``.
    """
    tmp_dir = Path(tmp_dir)
    if data is None:
        data = write_images(tmp_dir / "images")
    out = _fresh(tmp_dir / "run")
    watch = _Watch()
    engine.plugins.pm.register(watch, name=f"tlplug.testing-{id(watch)}")
    try:
        fit = engine.fit(data, epochs=1, out=out, quiet=True)
    finally:
        engine.plugins.pm.unregister(watch)
    changed = [
        name for name, before in watch.before.items() if not _same(before, watch.after[name])
    ]
    trained = [g.name for g in watch.groups if set(g.params) & set(changed)]
    return EpochResult(fit, [g.name for g in watch.groups], trained, changed)


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``train/`` + ``val/`` image folder with three classes (8 + 4 images each), made
    once per test session with :func:`write_images`."""
    return write_images(tmp_path_factory.mktemp("tlplug-images"))


@pytest.fixture
def tlplug_recipe() -> dict[str, Any]:
    """A fresh copy of :data:`FAST_RECIPE`, the recipe that trains in about a second."""
    return dict(FAST_RECIPE)


class _Watch:
    """A lifecycle plugin that copies every parameter when the run starts and ends."""

    def __init__(self) -> None:
        self.groups: list[Any] = []
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    @hookimpl(trylast=True)
    def tlplug_run_start(self, run) -> None:
        self.groups = list(run.model.groups)
        self.before = _copy(run.model)

    @hookimpl(tryfirst=True)
    def tlplug_run_end(self, run, summary) -> None:
        self.after = _copy(run.model)


def _copy(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` hold the same bits (NaNs included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(_bits(a), _bits(b))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(-1).view(torch.uint8)


def _fresh(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist yet."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate
