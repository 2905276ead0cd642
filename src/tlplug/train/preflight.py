"""What a run says before it trains when the recipe will not do what it looks like: groups
a schedule never reaches, a head trained on random features, images blown up many times."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from PIL import Image

from tlplug.errors import flag
from tlplug.train.stages import Stage

SAMPLED = 16  # images whose size is looked at


def unreached_groups(
    plan: Sequence[Stage], planned: Sequence[Stage], groups: Sequence[str], epochs: int
) -> str | None:
    """The groups that never train because the run ends before the schedule reaches them."""
    trained = {g for stage in plan for g in stage.training}
    never = [g for g in groups if g not in trained]
    later = [stage for stage in planned if stage.start >= epochs]
    if not never or not later:
        return None
    first = next((s for s in later if groups[0] in s.training), later[-1])
    return (
        f"{', '.join(never)} never train: the run ends at epoch {epochs}, before the schedule "
        f"reaches them; {flag('epochs', first.start + 1)} or more unfreezes "
        f"{'every group' if first is later[-1] else groups[0]}"
    )


def random_features(plan: Sequence[Stage], trained: bool, head: str) -> str | None:
    """A head-only stage on a backbone that starts from random weights (not ``trained``)."""
    if trained:
        return None
    heads = [stage.name for stage in plan if tuple(stage.trainable) == (head,) and not stage.biases]
    if not heads:
        return None
    return (
        f"the backbone starts from random weights, and stage '{heads[0]}' trains only the "
        f"head on its random features; use pretrained weights ({flag('pretrained', True)}, "
        f"{flag('weights')}) or a schedule that trains the backbone ({flag('schedule', 'full')})"
    )


def upscaled(images, img_size: int, source_size: int | None, asked: int | None) -> str | None:
    """Images much smaller than the size the backbone's default blows them up to."""
    if asked or source_size or len(images) == 0:
        return None
    step = max(1, len(images) // SAMPLED)
    sizes = []
    paths = getattr(images, "paths", None)
    for index in range(0, len(images), step)[:SAMPLED]:
        try:
            if paths is not None:  # the header is enough
                with Image.open(paths[index]) as image:
                    sizes.append(max(image.size))
            else:
                sizes.append(max(images.load(index).size))
        except Exception:  # an unreadable image is reported where it is trained on
            continue
    if not sizes:
        return None
    typical = int(statistics.median(sizes))
    if typical * 1.5 > img_size:
        return None
    work = round((img_size / typical) ** 2)
    return (
        f"the images are about {typical}px and are upscaled to {img_size}px, the backbone's "
        f"default ({work}x the pixels to compute); {flag('img_size', max(32, typical))} trains at "
        "their own size"
    )
