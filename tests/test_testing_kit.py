"""tlplug.testing, used as a plugin author would: its fixtures come from the installed pytest
plugin (entry point ``pytest11``), with no conftest."""

from __future__ import annotations

from tlplug import Stage, hookimpl
from tlplug.testing import FAST_RECIPE, EpochResult, make_engine, run_one_epoch

pytest_plugins = ["pytester"]


class Schedules:
    """Two schedules, as a plugin under test would register them."""

    name = "kit-schedules"

    @hookimpl
    def tlplug_register_schedules(self, register):
        register("head-only", lambda groups, epochs: [Stage(0, groups[-1:])])
        register("everything", lambda groups, epochs: [Stage(0, groups)])


def test_fixtures_come_from_the_installed_pytest_plugin(pytestconfig, tiny_images, tlplug_recipe):
    import tlplug.testing

    assert pytestconfig.pluginmanager.get_plugin("tlplug") is tlplug.testing
    assert sorted(p.name for p in tiny_images.iterdir()) == ["train", "val"]
    assert sorted(p.name for p in (tiny_images / "train").iterdir()) == [
        "checker",
        "dots",
        "stripes",
    ]
    assert len(list((tiny_images / "val" / "dots").glob("*.png"))) == 4
    assert tlplug_recipe == FAST_RECIPE and tlplug_recipe is not FAST_RECIPE


def test_make_engine_registers_the_plugin_with_fast_defaults():
    engine = make_engine(Schedules(), schedule="head-only", epochs=3)
    assert engine.recipe.backbone == "timm:resnet10t" and engine.recipe.epochs == 3
    assert engine.parts.schedule.strategy.plugin == "kit-schedules"
    # installed plugins are off: only the built-ins and the plugin passed in
    assert {i.distribution for i in engine.plugins.infos.values()} == {"tlplug", "(passed in)"}


def test_head_only_schedule_trains_only_the_head(tiny_images, tmp_path):
    result = run_one_epoch(
        make_engine(Schedules(), schedule="head-only"), tiny_images, tmp_dir=tmp_path
    )
    assert isinstance(result, EpochResult)
    assert result.trained_groups == ["head"]
    assert result.groups == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert result.changed_params and all(n.startswith("head.") for n in result.changed_params)
    assert result.fit.history[0]["trainable_groups"] == ["head"]
    assert result.run_dir.parent == tmp_path
    assert result.config["resolved"]["schedule"]["name"] == "head-only"


def test_full_schedule_trains_every_group(tiny_images, tmp_path):
    engine = make_engine(Schedules(), schedule="everything", augment=[])
    result = run_one_epoch(engine, tiny_images, tmp_dir=tmp_path)
    assert result.trained_groups == result.groups
    # the same engine again: a second run directory, the probe gone from the engine
    again = run_one_epoch(engine, tiny_images, tmp_dir=tmp_path)
    assert again.run_dir != result.run_dir and again.trained_groups == result.groups
    assert [p for p in engine.plugins.pm.get_plugins() if type(p).__name__ == "_Watch"] == []


def test_changes_are_compared_per_parameter(tmp_path):
    """Without data, run_one_epoch writes its own images. A parameter that never trains
    (pinned here, as an adapter would) is not among the changed ones; its group still
    counts as trained when another of its parameters moved."""

    class PinHeadBias:
        name = "pin-head-bias"

        @hookimpl
        def tlplug_run_start(self, run):
            run.model.pinned = frozenset({"head.0.bias"})

    engine = make_engine(Schedules(), PinHeadBias(), schedule="head-only")
    result = run_one_epoch(engine, tmp_dir=tmp_path)
    assert (tmp_path / "images" / "train" / "dots").is_dir()
    assert result.trained_groups == ["head"]
    assert result.changed_params == ["head.0.weight"]


def test_a_plugin_test_suite_runs_with_no_conftest(pytester):
    pytester.makepyfile(
        test_my_plugin="""
        from tlplug import Stage, hookimpl
        from tlplug.testing import make_engine, run_one_epoch


        @hookimpl
        def tlplug_register_schedules(register):
            register("top2", lambda groups, epochs: [Stage(0, groups[-2:])])


        def test_top2(tiny_images, tmp_path, tlplug_recipe):
            import sys

            engine = make_engine(sys.modules[__name__], schedule="top2", augment=[])
            result = run_one_epoch(engine, tiny_images, tmp_dir=tmp_path)
            assert result.trained_groups == ["layer4", "head"]
            assert tlplug_recipe["epochs"] == 1
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
