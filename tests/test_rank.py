"""``tlplug rank``: backbones scored without fine-tuning, from one pass over the images."""

from __future__ import annotations

import json

import pytest

from helpers import TINY, tlplug
from tlplug import Engine

SETTINGS = ["--img-size", "32", "--batch-size", "16", "--workers", "0", "--no-pretrained"]


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    """resnet10t weights fine-tuned on the task: what a good source looks like."""
    out = tmp_path_factory.mktemp("rank-source") / "run"
    recipe = TINY | {"epochs": 4, "schedule": "full"}
    Engine.from_plugins(entrypoints=False, **recipe).fit(image_folder, out=out, quiet=True)
    return out / "model.safetensors"


def test_rank_puts_weights_trained_for_the_task_first(image_folder, trained, tmp_path, capsys):
    out = tmp_path / "rank"
    code, stdout, err = tlplug(
        capsys,
        "rank",
        "--data",
        image_folder,
        *SETTINGS,
        "--out",
        out,
        "--backbone",
        "timm:resnet10t",
        "--backbone",
        f"timm:resnet10t@{trained}",
        "--backbone",
        "timm:mobilenetv3_small_050",
    )
    assert code == 0, err
    rows = json.loads((out / "rank.json").read_text())["backbones"]
    assert rows[0]["backbone"] == f"timm:resnet10t@{trained}"
    assert [r["logme"] for r in rows] == sorted((r["logme"] for r in rows), reverse=True)
    best = rows[0]
    assert best["probe_val_acc"] >= max(r["probe_val_acc"] for r in rows[1:])
    assert {r["params"] > 0 and r["images_per_s"] > 0 for r in rows} == {True}
    assert (out / "rank.png").stat().st_size > 0
    table = stdout[stdout.index("backbone ") :].splitlines()
    assert table[1].startswith(f"timm:resnet10t@{trained}")


@pytest.mark.parametrize(
    ("backbone", "message"),
    [("timm:resnet10t@", "give the weights file after '@'"), ("timm:no_such_net", "no_such_net")],
)
def test_a_bad_candidate_is_one_line(backbone, message, image_folder, tmp_path, capsys):
    code, _, err = tlplug(
        capsys,
        "rank",
        "--data",
        image_folder,
        *SETTINGS,
        "--backbone",
        backbone,
        "--out",
        tmp_path / "rank",
    )
    assert code != 0 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "rank").exists()
