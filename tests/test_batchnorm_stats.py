"""A backbone without pretrained weights gets BatchNorm statistics from the training images
before training, so frozen BatchNorm (running statistics) normalises as training BatchNorm
(batch statistics) does; weights a user gives keep theirs."""

from __future__ import annotations

import torch

from helpers import TINY
from tlplug import Engine, hookimpl
from tlplug.console import Console
from tlplug.train.assemble import assemble
from tlplug.train.norm_stats import estimate_batchnorm, fresh_batchnorms


class AtStart:
    """Keeps the run as it starts training."""

    name = "at-start"
    run = None

    @hookimpl
    def tlplug_run_start(self, run):
        self.run = run


def test_a_random_backbone_starts_with_the_statistics_of_its_training_images(
    image_folder, tmp_path, capsys
):
    spy = AtStart()
    recipe = TINY | {"schedule": "linear-probe", "epochs": 1, "augment": (), "precision": "fp32"}
    Engine.from_plugins(spy, entrypoints=False, **recipe).fit(image_folder, out=tmp_path / "run")
    out = capsys.readouterr().out
    assert "layers had none (weights not pretrained); estimated from 36 training images" in out
    run = spy.run
    assert not fresh_batchnorms(run.model)
    # The first BatchNorm's input does not depend on another BatchNorm: its statistics are
    # the mean and variance, per channel, of the first convolution's outputs.
    conv, norm = run.model.backbone.conv1[0], run.model.backbone.conv1[1]
    images = torch.cat([run.numerics.inputs(x, run.device) for x, _ in run.loaders.plain])
    with torch.no_grad():
        outputs = conv(images).transpose(0, 1).flatten(1)  # channels x (images, pixels)
    torch.testing.assert_close(norm.running_mean, outputs.mean(1), rtol=0.05, atol=0.02)
    torch.testing.assert_close(norm.running_var, outputs.var(1), rtol=0.1, atol=0.01)


def test_the_estimate_leaves_the_random_generators_and_other_weights_alone(image_folder, tmp_path):
    engine = Engine.from_plugins(entrypoints=False, **(TINY | {"augment": ("flip",)}))
    run = assemble(
        engine.plugins, engine.parts, engine.recipe, image_folder, tmp_path, Console(quiet=True)
    )
    fresh = fresh_batchnorms(run.model)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    generator = torch.get_rng_state()
    assert estimate_batchnorm(run) == len(fresh) > 0
    assert torch.equal(torch.get_rng_state(), generator)
    after = run.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed
    )
    assert all(layer.momentum == 0.1 for layer in fresh) and run.model.training
    assert estimate_batchnorm(run) == 0  # nothing fresh is left
