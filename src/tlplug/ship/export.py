"""Exporting a run's model to another format, checked against the PyTorch model.

An exporter (``tlplug_register_exporters``) writes the file and returns a function that
runs it. :func:`export_run` gives it a temporary path beside the target, runs the written
file and the run's own model on the same sample images, refuses the export when they
disagree, and only then renames the file into place, with a sidecar JSON holding what a
user of the file needs to prepare images: size, mean, std, interpolation, class names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from tlplug.errors import TlplugError, one_line
from tlplug.plugins.host import PluginHost
from tlplug.plugins.resolve import choose
from tlplug.rundir import layout as rundir
from tlplug.ship.predict import Classifier, load_classifier

TOLERANCE = 1e-3  # largest difference allowed, relative to the largest logit (at least 1)


@attrs.frozen
class Exported:
    """An export that passed its check: the file, its sidecar and the largest difference
    between the file's logits and the PyTorch model's on the sample images."""

    path: Path
    sidecar: Path
    format: str
    max_diff: float

    def line(self) -> str:
        """One line for the console."""
        return (
            f"wrote {self.path} ({self.format}); checked against the PyTorch model on sample "
            f"images: max |difference| of logits {self.max_diff:.2e}; preprocessing and "
            f"classes in {self.sidecar}"
        )


def export_run(
    run_dir: str | os.PathLike,
    name: str,
    options: Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    plugins: PluginHost | None = None,
) -> Exported:
    """Export the best model of ``run_dir`` with the exporter called ``name``."""
    run_dir = Path(run_dir)
    plugins = plugins or PluginHost()
    classifier = load_classifier(run_dir, plugins, "cpu").eval()
    choice = choose(plugins, "exporters", name, dict(options or {}))
    suffix = getattr(choice.strategy.factory, "suffix", "")
    out = Path(out) if out is not None else run_dir / f"model{suffix}"
    if out.resolve() == (run_dir / rundir.WEIGHTS).resolve():
        raise TlplugError(f"--out {out} is the run's own weights file; choose another name")
    sidecar = out.with_name(out.name + ".json")
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise TlplugError(f"{path} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise TlplugError(f"--out {out} is a folder; name a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial{suffix}")
    try:
        runner = choice.strategy.factory(classifier, partial, **choice.options)
        diff = _check(classifier, runner)
        os.replace(partial, out)
    except TlplugError:
        raise
    except Exception as exc:
        raise TlplugError(f"export to {name} failed: {one_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
    rundir.write_json(sidecar, describe(classifier, name, out.name, diff))
    return Exported(out, sidecar, name, diff)


def sample_images(classifier: Classifier, count: int = 2) -> torch.Tensor:
    """Normalized images to check an export with: random pixels, the same every time."""
    size = classifier.config["resolved"]["img_size"]
    seeded = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 3, size, size), generator=seeded, dtype=torch.uint8)
    return classifier.normalize(pixels)


def describe(classifier: Classifier, format_name: str, file: str, diff: float) -> dict[str, Any]:
    """The sidecar JSON: what to feed the exported file and what its outputs mean."""
    resolved = classifier.config["resolved"]
    return {
        "file": file,
        "format": format_name,
        "input": {
            "shape": [None, 3, resolved["img_size"], resolved["img_size"]],
            "layout": "NCHW float32, RGB, resized and center-cropped, then normalized",
            **{k: v for k, v in resolved["data_config"].items() if k != "input_size"},
        },
        "output": classifier.outputs,
        "classes": list(classifier.classes),
        "backbone": classifier.config["recipe"]["backbone"],
        "check_max_abs_diff": diff,
    }


def _check(classifier: Classifier, runner: Any) -> float:
    if not callable(runner):
        raise TlplugError("the exporter returned no function that runs the exported file")
    images = sample_images(classifier)
    with torch.no_grad():
        expected = classifier(images).float()
        got = torch.as_tensor(runner(images)).float()
    if got.shape != expected.shape:
        raise TlplugError(
            f"the exported file gives logits of shape {tuple(got.shape)}, the model "
            f"{tuple(expected.shape)}"
        )
    diff = float((got - expected).abs().max())
    limit = TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= limit:
        raise TlplugError(
            f"the exported file's logits differ from the model's by {diff:.2e} (more than "
            f"{limit:.1e}); the export does not compute what the run's model does"
        )
    return diff
