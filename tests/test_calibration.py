"""Calibration: the temperature fit, the ECE, and a run's temperature used by predict, eval
and export."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY, tlplug
from tlplug import Engine
from tlplug.plugins.host import PluginHost
from tlplug.ship.calibration import (
    expected_calibration_error,
    fit_temperature,
    measured,
)
from tlplug.ship.predict import load_classifier


def overconfident(count: int, seed: int, factor: float = 3.0):
    """Labels drawn from softmax(z) (a calibrated model's logits z) and the logits of a
    model ``factor`` times too sure: ``factor * z``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, 5, generator=generator) * 1.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits * factor, labels


def test_the_fit_finds_the_temperature_that_undoes_overconfidence():
    logits, labels = overconfident(20000, seed=0, factor=3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.06)
    assert fit_temperature(logits / 3.0, labels) == pytest.approx(1.0, rel=0.06)


def test_ece_by_hand():
    # two images at confidence 0.9 (one right: accuracy 0.5), two at 0.6 (both right)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(
        2 / 4 * abs(0.9 - 0.5) + 2 / 4 * abs(0.6 - 1.0)
    )


def test_a_temperature_fitted_on_some_images_lowers_ece_on_others():
    fit_logits, fit_labels = overconfident(3000, seed=1)
    held_logits, held_labels = overconfident(3000, seed=2)
    temperature = fit_temperature(fit_logits, fit_labels)
    record = measured(held_logits.softmax(1), held_labels, temperature)
    assert record["ece_after"] < record["ece_before"] / 3
    assert record["nll_after"] < record["nll_before"]


def test_a_run_is_calibrated_and_predict_eval_use_its_temperature(image_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    recipe = TINY | {"epochs": 3, "schedule": "full"}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=run_dir, quiet=True)
    calibration = json.loads((run_dir / "calibration.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["calibration"] == calibration and calibration["fitted_on"] == "validation"
    temperature = calibration["temperature"]
    assert temperature != 1.0 and calibration["nll_after"] <= calibration["nll_before"]

    classifier = load_classifier(run_dir, PluginHost(entrypoints=False))
    images = torch.randn(4, 3, 32, 32)
    calibrated = classifier(images)
    classifier.model.temperature = 1.0
    torch.testing.assert_close(calibrated, classifier(images) / temperature)

    code, out, err = tlplug(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["calibration"]["temperature"] == pytest.approx(temperature)
    assert report["calibration"]["fitted"] is False
    assert report["ece"] == pytest.approx(report["calibration"]["ece_before"])  # the model's own
    assert (run_dir / "eval" / "reliability.png").is_file()

    code, out, err = tlplug(
        capsys, "eval", run_dir, image_folder / "train", "--calibrate", "--out", tmp_path / "e"
    )
    assert code == 0, err
    assert "kept in the run" in out
    kept = json.loads((run_dir / "calibration.json").read_text())
    assert kept["fitted_on"] != "validation" and kept["temperature"] != temperature
