"""``tlplug explain``: where in an image the evidence for a class lies, as Grad-CAM maps.

Grad-CAM (Selvaraju et al., 2017) weighs the activations of one layer by the gradient of
the class's logit, averaged over the layer's positions, and keeps the positive part: a map
of the positions whose features pushed that class's score up. The layer is found from the
model's layer groups, never by name (:func:`find_target`):

- a CNN: the output of the last module of the top-most stage whose output still has a
  spatial extent (``layer4`` of a ResNet, ``blocks.6+conv_head+bn2``'s ``bn2`` of an
  EfficientNet; at an input so small that the last stage is 1x1, the stage before it);
- a ViT: the patch tokens entering the last transformer block, laid out on the patch grid.
  Not the block's output: with a class-token head, the last block's patch tokens reach the
  logits through nothing, so their gradient is zero; entering the block they reach the
  class token through its attention.

The attribution itself is captum's ``LayerGradCam``, behind the ``explain`` extra.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from PIL import Image
from torch import nn

from tlplug.errors import TlplugError, UnknownNameError
from tlplug.model.backbone import module_paths
from tlplug.model.transfer import HEAD_GROUP
from tlplug.plotting import save_image
from tlplug.plugins.host import PluginHost
from tlplug.rundir import layout as rundir
from tlplug.version import __version__

EXTRA = "tlplug explain needs captum: pip install 'tlplug[explain]'"
REPORT = "explain.json"
ALPHA = 0.45  # how much of an overlay pixel is the map's colour
COLORMAP = "jet"
MIN_SIDE = 224  # overlays of smaller inputs are enlarged by a whole factor to at least this


def available() -> bool:
    """Whether the ``explain`` extra (captum) is installed."""
    try:
        import captum.attr  # noqa: F401
    except ImportError:
        return False
    return True


def _captum_attr():
    try:
        import captum.attr
    except ImportError:
        raise TlplugError(EXTRA) from None
    return captum.attr


@attrs.frozen
class Target:
    """The layer Grad-CAM reads: the module at ``path`` in the model, its output (a CNN's
    ``(B, C, H, W)``, ``kind`` "conv") or its input tokens (a ViT's ``(B, N, C)``, ``kind``
    "tokens", the first ``prefix`` of them class or register tokens, the rest the patch
    grid); ``grid`` is the map's native size (rows, columns)."""

    path: str
    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    @property
    def method(self) -> str:
        """The method and layer, one line for people."""
        where = "output of" if self.kind == "conv" else "patch tokens entering"
        return f"Grad-CAM on the {where} {self.path} ({self.grid[0]}x{self.grid[1]})"


def find_target(model: nn.Module, img_size: int) -> Target:
    """The layer of ``model`` (a :class:`~tlplug.model.transfer.TransferModel`) to explain
    at ``img_size`` px: found by running an image through it and watching the modules that
    make up its layer groups (see the module's docstring)."""
    groups = [g for g in model.groups if g.name != HEAD_GROUP]
    paths = module_paths([g.params for g in groups])
    modules = dict(model.named_modules())
    seen: list[tuple[str, int, tuple, tuple]] = []  # (path, group, input shape, output shape)

    def watch(path: str, group: int):
        def hook(module, args, output):
            first = output[0] if isinstance(output, (tuple, list)) else output
            given = args[0].shape if args and torch.is_tensor(args[0]) else ()
            seen.append((path, group, tuple(given), tuple(getattr(first, "shape", ()))))

        return hook

    handles = [
        modules[path].register_forward_hook(watch(path, index))
        for index, group_paths in enumerate(paths)
        for path in group_paths
        if path in modules  # not a bare parameter (a ViT's class token)
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    prefix = getattr(model.backbone, "num_prefix_tokens", None)
    maps = [s for s in seen if _spatial(s[3]) or _grid(s[3], prefix)]
    if not maps:
        raise TlplugError(
            f"no layer of this model keeps a spatial map at {img_size} px to explain; "
            "Grad-CAM needs a CNN stage or ViT patch tokens"
        )
    path, group, _, shape = maps[-1]
    if _spatial(shape):
        return Target(path, "conv", (shape[2], shape[3]))
    entering = next(s for s in maps if s[1] == group and len(s[2]) == 3 and _grid(s[2], prefix))
    grid, first = _grid(entering[2], prefix)
    return Target(entering[0], "tokens", grid, first)


def _spatial(shape: tuple) -> bool:
    return len(shape) == 4 and shape[2] > 1 and shape[3] > 1


def _grid(shape: tuple, prefix: int | None) -> tuple[tuple[int, int], int] | None:
    """For tokens ``(B, N, C)``: the square patch grid and the tokens before it, or None."""
    if len(shape) != 3:
        return None
    tokens = shape[1]
    side = math.isqrt(tokens - (prefix or 0))
    first = tokens - side * side if prefix is None else prefix
    if side < 2 or first + side * side != tokens:
        return None
    return (side, side), first


class _TokenGrid(nn.Module):
    """The patch tokens ``(B, N, C)`` as a map ``(B, C, rows, cols)``: the layer captum
    watches for a ViT (run from a pre-hook on the target block, outside the model)."""

    def __init__(self, target: Target):
        super().__init__()
        self.target = target

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows, cols = self.target.grid
        patches = tokens[:, self.target.prefix :]
        return patches.transpose(1, 2).reshape(len(tokens), -1, rows, cols)


class Explainer:
    """Grad-CAM maps for a classifier (:class:`~tlplug.ship.predict.Classifier`)."""

    def __init__(self, classifier):
        self.attr = _captum_attr()
        self.classifier = classifier
        self.target = find_target(classifier.model, classifier.base.size)

    def maps(self, pixels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Grad-CAM of class ``classes[i]`` for the uint8 image ``pixels[i]`` (``(B, 3, S,
        S)``, as the classifier's base transform gives): ``(B, S, S)``, zero or above, not
        scaled (see :func:`normalized`)."""
        model = self.classifier.model.eval()
        device = next(model.parameters()).device
        inputs = self.classifier.normalize(pixels.to(device))
        modules = dict(model.named_modules())
        block, handle = modules[self.target.path], None
        if self.target.kind == "conv":
            layer = block
        else:
            layer = _TokenGrid(self.target)

            def regrid(module, args):
                tokens = args[0]
                patches = layer(tokens).flatten(2).transpose(1, 2)
                return (torch.cat([tokens[:, : self.target.prefix], patches], 1), *args[1:])

            handle = block.register_forward_pre_hook(regrid)
        try:
            cam = self.attr.LayerGradCam(model, layer).attribute(
                inputs, target=torch.as_tensor(list(classes), device=device), relu_attributions=True
            )
        finally:
            if handle is not None:
                handle.remove()
        size = tuple(pixels.shape[-2:])
        up = self.attr.LayerAttribution.interpolate(cam.detach().float(), size, "bilinear")
        return up[:, 0].clamp_min(0).cpu()


def normalized(heat: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, H, W)`` scaled to [0, 1] each by its own maximum (an all-zero map stays 0)."""
    top = heat.flatten(1).amax(1).clamp_min(1e-12)
    return heat / top.view(-1, 1, 1)


def overlays(pixels: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """The maps ``heat`` ``(B, H, W)`` coloured and blended on the uint8 images ``pixels``:
    ``(B, 3, H, W)`` floats in [0, 1]."""
    from matplotlib import colormaps

    colours = colormaps[COLORMAP](normalized(heat).numpy())[..., :3]
    colour = torch.from_numpy(colours).float().permute(0, 3, 1, 2)
    return (1 - ALPHA) * pixels.float() / 255 + ALPHA * colour


def mass_in(heat: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The share of each map's total ``heat`` ``(B, H, W)`` inside the boolean ``region``
    ``(H, W)``: 1 when all of the attribution is there; a uniform map gives the region's
    share of the image."""
    total = heat.flatten(1).sum(1).clamp_min(1e-12)
    return (heat * region).flatten(1).sum(1) / total


@attrs.frozen
class Explained:
    """One image explained: its predicted class and probability and, per explained class,
    that class's probability and the overlay file written."""

    source: str
    predicted: str
    prob: float
    maps: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "source": self.source,
            "predicted": self.predicted,
            "prob": self.prob,
            "maps": self.maps,
        }


def explain_run(
    run_dir: str | Path,
    images: Iterable[str | Path],
    out: str | Path,
    classes: Sequence[str] = (),
    *,
    plugins: PluginHost | None = None,
    device: str = "cpu",
) -> list[Explained]:
    """Write to ``out`` an overlay PNG of the Grad-CAM map of each image (files or folders)
    for its predicted class and for each of ``classes``, and explain.json listing them;
    return what was written. The model is the run's best, its probabilities calibrated."""
    from tlplug.ship.predict import _open, _source, expand_images, load_classifier

    _captum_attr()
    plugins = plugins or PluginHost()
    classifier = load_classifier(run_dir, plugins, device)
    known = classifier.classes
    for name in classes:
        if name not in known:
            raise UnknownNameError("class", name, known, f"the run's classes: {', '.join(known)}")
    items = expand_images(images)
    opened = [(_source(item), _open(item)) for item in items]  # an unreadable file: an error
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TlplugError(f"{out} is a file; the maps go to a folder")
    out.mkdir(parents=True, exist_ok=True)
    explainer = Explainer(classifier)
    on = next(classifier.parameters()).device
    taken: set[str] = set()
    results = []
    for source, image in opened:
        pixels = classifier.base(image)[None]
        with torch.no_grad():
            probs = classifier.model(classifier.normalize(pixels.to(on))).float().softmax(1)[0]
        best = int(probs.argmax())
        wanted = [best, *(known.index(c) for c in classes if known.index(c) != best)]
        heat = explainer.maps(pixels.expand(len(wanted), -1, -1, -1), wanted)
        shown = _enlarged(overlays(pixels.expand(len(wanted), -1, -1, -1), heat))
        maps = {}
        for index, overlay in zip(wanted, shown, strict=True):
            name = _file_name(Path(source).stem, known[index], taken)
            save_image(_to_pil(overlay), out / name)
            maps[known[index]] = {"prob": float(probs[index]), "file": str(out / name)}
        results.append(Explained(source, known[best], float(probs[best]), maps))
    rundir.write_json(
        out / REPORT,
        {
            "tlplug_explain": __version__,
            "run": str(run_dir),
            "method": explainer.target.method,
            "images": [r.to_json() for r in results],
        },
    )
    return results


def _enlarged(images: torch.Tensor) -> torch.Tensor:
    scale = -(-MIN_SIDE // images.shape[-1])
    if scale <= 1:
        return images
    return torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _file_name(stem: str, class_name: str, taken: set[str]) -> str:
    """``STEM_CLASS.png``, made safe for a file name and not ``taken`` before."""
    base = re.sub(r"[^\w.-]+", "_", f"{stem}_{class_name}")
    name, count = f"{base}.png", 1
    while name in taken:
        count += 1
        name = f"{base}_{count}.png"
    taken.add(name)
    return name
