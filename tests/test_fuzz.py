"""Fuzzing the recipe and CLI layer: whatever a user types, no traceback reaches them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlplug.cli import main
from tlplug.errors import TlplugError
from tlplug.recipe import Recipe

# Options a user may get wrong. Size and length (--backbone, --img-size, --epochs) stay
# fixed so that a valid draw trains for seconds, not minutes.
OPTIONS = [
    "--lr",
    "--lr-decay",
    "--lr-mult",
    "--batch-size",
    "--schedule",
    "--schedule-opt",
    "--head",
    "--head-opt",
    "--lr-schedule",
    "--lr-schedule-opt",
    "--augment",
    "--augment-opt",
    "--optimizer",
    "--weight-decay",
    "--momentum",
    "--seed",
    "--device",
    "--val-split",
    "--bn-policy",
    "--max-groups",
    "--skip-nonfinite",
    "--backbone-opt",
    "--weights",
    "--resume",
    "--bogus",
    "--lr-decay-typo",
]
WORDS = [
    "gradual",
    "lp-ft",
    "bitfit",
    "mlp",
    "cosine",
    "plateau",
    "flip",
    "crop",
    "none",
    "a=b",
    "epochs_per_stage=2",
    "hidden=8",
    "crop.scale=0.5,1",
    "x.y=z",
    "k=",
    "=",
    ",",
    "1,2,3",
    "0",
    "-1",
    "1e9",
    "nan",
    "inf",
    "cuda",
    "cpu",
    "timm:resnet10t",
    "..",
]
VALUES = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-3, 64).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=10),
)
FIXED = [
    "--backbone",
    "timm:resnet10t",
    "--no-pretrained",
    "--img-size",
    "32",
    "--epochs",
    "1",
    "--workers",
    "0",
    "--quiet",
]


def run_cli(capsys, argv):
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pairs=st.lists(st.tuples(st.sampled_from(OPTIONS), VALUES), max_size=3))
@pytest.mark.slow
def test_any_command_line_ends_in_success_or_one_error_line(
    pairs, image_folder, tmp_path_factory, capsys
):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    argv = ["run", "--data", image_folder, "--out", out, *FIXED]
    argv += [item for pair in pairs for item in pair]
    code, err = run_cli(capsys, argv)
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), err
        assert "Traceback" not in err and "unexpected" not in err, err
        assert not out.exists() or not any(out.iterdir()), "a failed start left files"
    else:  # a run that started finished: its weights and records are there
        for name in ("config.json", "metrics.jsonl", "summary.json", "model.safetensors"):
            assert (out / name).is_file(), f"{name} missing after a successful run"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(["lr", "epochs", "lr_mult", "bn_policy", "augment"]), st.text()),
        st.one_of(st.text(), st.integers(), st.floats(), st.lists(st.integers()), st.none()),
        max_size=3,
    )
)
def test_recipe_accepts_or_refuses_with_a_one_line_error(values):
    try:
        Recipe.from_kwargs(**values)
    except TlplugError as exc:
        assert "\n" not in str(exc)
