"""``tlplug rank``: backbones scored without fine-tuning, from one pass over the images."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import TINY, tlplug
from tlplug import Engine
from tlplug.console import Console
from tlplug.plugins.host import PluginHost
from tlplug.recipe import Recipe
from tlplug.search.feature_store import ENV
from tlplug.search.rank import Candidate, rank_backbones

SETTINGS = ["--img-size", "32", "--batch-size", "16", "--workers", "0", "--no-pretrained"]


@pytest.fixture(autouse=True)
def feature_store(tmp_path, monkeypatch):
    """Each test's own feature store, not the user's."""
    monkeypatch.setenv(ENV, str(tmp_path / "features"))
    return tmp_path / "features"


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
    [
        ("timm:resnet10t@", "give the weights file after '@'"),
        ("timm:no_such_net", "no_such_net"),
        ("timm:*", "add --top N"),
        ("timm:resnet1*@w.safetensors", "a weights file belongs to one backbone"),
        ("timm:zzz*", "no backbone matches 'timm:zzz*'"),
    ],
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


def test_a_pattern_with_top_ranks_the_smallest(image_folder, tmp_path, capsys):
    out = tmp_path / "rank"
    code, _, err = tlplug(
        capsys,
        "rank",
        "--data",
        image_folder,
        *SETTINGS,
        "--backbone",
        "timm:mobilenetv3_small_*",
        "--backbone",
        "timm:resnet10t",
        "--top",
        "1",
        "--out",
        out,
    )
    assert code == 0, err
    rows = json.loads((out / "rank.json").read_text())["backbones"]
    assert [r["backbone"] for r in rows] == ["timm:mobilenetv3_small_050"]


def test_weights_for_another_model_are_one_line(image_folder, tmp_path, capsys):
    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    code, _, err = tlplug(
        capsys,
        "rank",
        "--data",
        image_folder,
        *SETTINGS,
        "--backbone",
        f"timm:mobilenetv3_small_050@{weights}",
        "--out",
        tmp_path / "rank",
    )
    assert code != 0 and err.count("\n") == 1 and "another architecture" in err


def test_a_second_rank_reads_the_features_and_runs_no_forward_pass(
    image_folder, tmp_path, feature_store
):
    host = PluginHost([], entrypoints=False)
    recipe = Recipe(pretrained=False, img_size=32, batch_size=16, workers=0)
    candidates = [Candidate("timm:resnet10t")]
    forwards = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: forwards.append(type(module).__name__)
    )
    try:
        first = rank_backbones(
            host, image_folder, candidates, recipe, tmp_path / "a", Console(True), feature_store
        )
        computed = len(forwards)
        second = rank_backbones(
            host, image_folder, candidates, recipe, tmp_path / "b", Console(True), feature_store
        )
    finally:
        hook.remove()
    # the first rank ran the backbone; the second only the probe's head (a Linear)
    assert "Conv2d" in forwards[:computed] and set(forwards[computed:]) <= {"Linear"}
    assert [r["features"] for r in first + second] == ["computed", "cached"]
    same = ("logme", "probe_held_out_acc", "probe_val_acc", "params", "num_features")
    assert [first[0][k] for k in same] == [second[0][k] for k in same]
    assert len(list(feature_store.glob("*.safetensors"))) == 1
