"""Predicting: unreadable files skipped, CSV output, folders in the Python API, errors in the
API's own words, and test-time augmentation."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from helpers import TINY, tlplug
from tlplug.compute.precision import Numerics
from tlplug.engine import Engine
from tlplug.errors import TlplugError
from tlplug.model.backbone import DataConfig
from tlplug.ship.evaluate import evaluate_run
from tlplug.ship.predict import Classifier
from tlplug.ship.tta import VIEWS, view_probs


@pytest.fixture(scope="module")
def run(image_folder, tmp_path_factory) -> Path:
    engine = Engine.from_plugins(
        entrypoints=False, **{**TINY, "epochs": 1, "schedule": "linear-probe", "augment": ["none"]}
    )
    return engine.fit(
        image_folder, out=tmp_path_factory.mktemp("predict") / "run", quiet=True
    ).run_dir


@pytest.fixture(scope="module")
def classifier(run) -> Classifier:
    return Engine.load(run, entrypoints=False)


@pytest.fixture
def mixed(image_folder, tmp_path) -> Path:
    """Two images and two files that do not decode."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(image_folder / "val" / "checker" / "checker_0.png", folder / "a.png")
    shutil.copy(image_folder / "val" / "dots" / "dots_0.jpg", folder / "b.jpg")
    (folder / "c.png").write_bytes(b"not an image")
    (folder / "d.jpg").write_bytes(b"")
    return folder


def test_unreadable_files_are_skipped_and_reported(run, mixed, capsys):
    code, out, err = tlplug(capsys, "predict", run, mixed, "--topk", "2")
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(mixed / "a.png"),
        str(mixed / "b.jpg"),
    ]
    assert err.splitlines() == [
        f"skipped: cannot read image {mixed / name} (cannot identify image file '{mixed / name}')"
        for name in ("c.png", "d.jpg")
    ]

    code, out, _ = tlplug(capsys, "predict", run, mixed, "--json")
    listed = json.loads(out)
    assert [bool(p.get("error")) for p in listed] == [False, False, True, True]
    assert [len(p["top"]) for p in listed] == [3, 3, 0, 0]

    code, _, err = tlplug(capsys, "predict", run, mixed / "c.png", mixed / "d.jpg")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "none of the 2 images could be read: cannot read image" in err


def test_a_missing_file_is_skipped_like_an_unreadable_one(run, mixed, capsys):
    a, b, missing = mixed / "a.png", mixed / "b.jpg", mixed / "missing.jpg"
    code, out, err = tlplug(capsys, "predict", run, a, missing, b, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [p["source"] for p in listed] == [str(a), str(missing), str(b)]
    assert [len(p["top"]) for p in listed] == [3, 0, 3]
    assert listed[1]["error"] == f"cannot read image {missing} (it does not exist)"
    assert err.splitlines() == [f"skipped: cannot read image {missing} (it does not exist)"]

    code, _, err = tlplug(capsys, "predict", run, missing)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "does not exist" in err


def test_csv_output(run, image_folder, capsys):
    code, out, err = tlplug(capsys, "predict", run, image_folder / "val", "--csv", "--topk", "2")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["source", "class1", "prob1", "class2", "prob2"]
    assert len(rows) == 13 and rows[1][0] == str(image_folder / "val" / "checker" / "checker_0.png")
    for row in rows[1:]:
        assert {row[1], row[3]} <= {"checker", "dots", "stripes"} and row[1] != row[3]
        assert 1 >= float(row[2]) >= float(row[4]) >= 0
    code, _, err = tlplug(capsys, "predict", run, image_folder / "val", "--csv", "--json")
    assert code == 2 and "give --json or --csv, not both" in err


def test_api_takes_folders_files_and_pil_images(classifier, image_folder):
    file = image_folder / "val" / "dots" / "dots_1.jpg"
    with Image.open(file) as image:
        predictions = classifier.predict([image_folder / "val", str(file), image], topk=3)
    assert len(predictions) == 14
    assert [p.source for p in predictions[-2:]] == [str(file), "<image>"]
    assert predictions[-1].top == predictions[-2].top
    dots = classifier.predict(image_folder / "val" / "dots")  # a folder alone, in a batch of 4
    assert [p.source for p in dots] == [p.source for p in predictions[4:8]]
    for alone, together in zip(dots, predictions[4:8], strict=True):
        assert [c for c, _ in alone.top] == [c for c, _ in together.top]
        assert [v for _, v in alone.top] == pytest.approx([v for _, v in together.top], abs=1e-5)


def test_api_errors_name_its_arguments(classifier, run, mixed):
    for call, said in (
        (lambda: classifier.predict([mixed / "a.png"], topk=0), "topk=0"),
        (lambda: classifier.predict([mixed / "a.png"], batch_size=0), "batch_size=0"),
        (lambda: evaluate_run(run, batch_size=0), "batch_size=0"),
    ):
        with pytest.raises(TlplugError, match=said) as caught:
            call()
        assert "--" not in str(caught.value)
    with pytest.raises(TlplugError, match="cannot read image .*c.png"):
        classifier.predict(mixed)  # skip_unreadable is the CLI's choice
    skipped = classifier.predict(mixed, skip_unreadable=True)
    assert [p.ok for p in skipped] == [True, True, False, False]
    if not torch.cuda.is_available():
        with pytest.raises(TlplugError, match="device='cuda'") as caught:
            Engine.load(run, device="cuda", entrypoints=False)
        assert "--device" not in str(caught.value)


def test_tta_predictions_are_deterministic(classifier, run, image_folder, capsys):
    files = sorted((image_folder / "val" / "stripes").iterdir())[:2]
    first = classifier.predict(files, topk=3, tta=True)
    assert first != classifier.predict(files, topk=3)  # the views change the average
    for p in first:
        assert sum(prob for _, prob in p.top) == pytest.approx(1.0, abs=1e-5)
    code, out, err = tlplug(capsys, "predict", run, *files, "--tta", "--json", "--topk", "3")
    assert code == 0, err
    assert json.loads(out) == [p.to_json() for p in first]  # a second pass, the same bits


class MirrorBlind(nn.Module):
    """Averages each row of pixels, so a horizontal mirror changes nothing and a vertical
    one does."""

    def __init__(self, size: int):
        super().__init__()
        self.mix = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4 * size, 3)

    def forward(self, images):
        return self.fc(torch.relu(self.mix(images)).mean(3).flatten(1))


def test_flip_views_agree_for_a_mirror_blind_model(image_folder):
    torch.manual_seed(0)
    classifier = Classifier(MirrorBlind(32), ("a", "b", "c"), DataConfig(), 32, {})
    with Image.open(image_folder / "val" / "stripes" / "stripes_0.png") as image:
        views = classifier.views(image.convert("RGB"))
    assert views.shape == (len(VIEWS), 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views[1], views[0].flip(-1))
    numerics = Numerics(None, False, classifier.normalize)
    batch = torch.stack([views, views.flip(-2)])  # the image and its vertical mirror
    probs = view_probs(classifier.model, batch, numerics, torch.device("cpu"))
    assert probs.shape == (2, len(VIEWS), 3)
    torch.testing.assert_close(probs[:, 0], probs[:, 1])
    assert not torch.allclose(probs[0, 0], probs[1, 0])  # the model is not blind to all flips
    assert not torch.allclose(probs[0, 0], probs[0, 2])  # a crop is another view
