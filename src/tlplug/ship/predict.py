"""A trained model rebuilt from its run directory alone, ready to classify images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import nn

from tlplug.compute.device import pick_device
from tlplug.compute.precision import Numerics, autocast_dtype
from tlplug.data.folders import list_images
from tlplug.data.images import DECODE_ERRORS, open_rgb, to_rgb
from tlplug.data.transforms import base_transform, eval_transform, normalize
from tlplug.errors import OptionError, TlplugError, UnknownNameError, WeightsError
from tlplug.model.backbone import DataConfig
from tlplug.plugins.host import PluginHost
from tlplug.plugins.kinds import split_backbone
from tlplug.plugins.resolve import build_backbone, build_model, choose
from tlplug.rundir import layout as rundir
from tlplug.rundir.config_record import read_saved_run
from tlplug.rundir.weights import load_state, mismatched_keys, read_state_dict, some
from tlplug.ship.calibration import read_temperature
from tlplug.ship.tta import view_probs, views_transform

CHECK = "; check the file"  # ends the error of an unreadable image


@attrs.frozen
class Prediction:
    """The top classes for one image, most probable first; for an image that could not be
    read (``skip_unreadable``), no classes and the ``error`` that says why."""

    source: str
    top: list[tuple[str, float]]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was read and classified."""
        return self.error is None

    def to_json(self) -> dict:
        """Return the prediction as a JSON-ready dict (with ``error`` when it has one)."""
        data = {"source": self.source, "top": [{"class": c, "prob": p} for c, p in self.top]}
        return data if self.error is None else {**data, "error": self.error}


class Classifier(nn.Module):
    """A trained model with its classes and preprocessing; call it on tensors or use predict."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        data_config: DataConfig,
        img_size: int,
        config: dict,
    ):
        super().__init__()
        self.model = model.eval()
        self.classes = tuple(classes)
        self.config = config
        self.transform = eval_transform(data_config, img_size)
        self.normalize = normalize(data_config)  # uint8 image batches to model inputs
        self.base = base_transform(data_config, img_size)  # PIL image to uint8 pixels
        self.views = views_transform(data_config, img_size)  # the TTA views, uint8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of already normalized images."""
        return self.model(images)

    @property
    def outputs(self) -> str:
        """What the network's outputs are, for an exported file's description."""
        temperature = getattr(self.model, "temperature", 1.0)
        if temperature == 1.0:
            return "logits, one per class; softmax gives probabilities"
        return (
            f"logits, one per class, divided by the run's temperature {temperature:.4g} "
            "(calibrated); softmax gives probabilities"
        )

    def run_numerics(self) -> Numerics:
        """How the run computed its validation batches (precision, memory layout, the
        normalization of uint8 batches), for this classifier's device; puts the model's
        weights in channels-last when the run had them so. A run trained in fp16 on a GPU
        computes in fp32 on a CPU."""
        resolved = self.config.get("resolved", {})
        precision, channels_last = resolved.get("precision", "fp32"), resolved.get("channels_last")
        device = next(self.parameters()).device
        try:
            dtype = autocast_dtype(precision, device)
        except OptionError:
            dtype = None
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        return Numerics(dtype, bool(channels_last), self.normalize)

    @torch.no_grad()
    def predict(
        self,
        images: Iterable[str | Path | Image.Image] | str | Path | Image.Image,
        topk: int = 5,
        batch_size: int = 32,
        *,
        tta: bool = False,
        skip_unreadable: bool = False,
    ) -> list[Prediction]:
        """Classify images and return the ``topk`` classes of each, in order.

        ``images`` are image files, folders (their images, found as ``tlplug predict``
        finds them: recursively, sorted) and PIL images, or one of those. With ``tta`` the
        softmax is averaged over the views of :mod:`tlplug.ship.tta`. A file that cannot be read
        raises :class:`~tlplug.errors.TlplugError`, or with ``skip_unreadable`` gives a
        :class:`Prediction` with no classes and its ``error``. Computes in fp32."""
        if not isinstance(topk, Integral) or topk < 1:
            raise TlplugError(f"predict: topk must be an integer >= 1, got topk={topk!r}")
        if not isinstance(batch_size, Integral) or batch_size < 1:
            raise TlplugError(
                f"predict: batch_size must be an integer >= 1, got batch_size={batch_size!r}"
            )
        self.eval()
        device = next(self.parameters()).device
        numerics = Numerics(None, False, self.normalize)
        items = expand_images(images)
        results = []
        k = min(topk, len(self.classes))
        for start in range(0, len(items), batch_size):
            pixels, read = [], []
            for item in items[start : start + batch_size]:
                try:
                    pixels.append((self.views if tta else self.base)(_open(item)))
                except TlplugError as exc:
                    if not skip_unreadable:
                        raise
                    error = str(exc).removesuffix(CHECK)
                    results.append(Prediction(_source(item), [], error))
                    continue
                read.append(len(results))
                results.append(Prediction(_source(item), []))
            if not pixels:
                continue
            batch = torch.stack(pixels)
            if tta:
                probs = view_probs(self.model, batch, numerics, device).mean(1)
            else:
                probs = self.model(numerics.inputs(batch, device)).float().softmax(1)
            values, indices = probs.topk(k, dim=1)
            for index, vals, idxs in zip(read, values.tolist(), indices.tolist(), strict=True):
                top = [(self.classes[i], v) for i, v in zip(idxs, vals, strict=True)]
                results[index] = attrs.evolve(results[index], top=top)
        return results


def expand_images(
    images: Iterable[str | Path | Image.Image] | str | Path | Image.Image,
) -> list[Path | Image.Image]:
    """``images`` with every folder replaced by the image files under it (recursively,
    sorted, hidden ones skipped); a folder without images is an error."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    items: list[Path | Image.Image] = []
    for item in images:
        if isinstance(item, Image.Image):
            items.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise TlplugError(f"folder {path} holds no images")
            items += found
        else:
            items.append(path)
    return items


def load_classifier(run_dir: str | Path, plugins: PluginHost, device: str = "cpu") -> Classifier:
    """Rebuild the model of ``run_dir`` from config.json and model.safetensors."""
    run_dir = Path(run_dir)
    try:
        target = pick_device(device)
    except TlplugError:
        raise TlplugError(
            f"device={device!r} was asked for but no CUDA GPU is available; use device='cpu'"
        ) from None
    saved = read_saved_run(run_dir, plugins.recipe_type, strict=False)
    weights = run_dir / rundir.WEIGHTS
    if not weights.is_file():
        aside = run_dir / rundir.REPLACED
        kept = (
            f"; the run it replaces (--overwrite) is in {aside} until this one keeps an epoch"
            if aside.is_dir()
            else ""
        )
        raise TlplugError(
            f"{run_dir} has no {rundir.WEIGHTS}; the run ended before its first epoch{kept}"
        )
    # Only the parts that make the network: a run trained with a schedule or augmentation
    # plugin can be used for prediction without that plugin.
    recipe = saved.recipe
    try:
        provider = choose(
            plugins, "backbones", split_backbone(recipe.backbone)[0], recipe.backbone_opts
        )
        head = choose(plugins, "heads", recipe.head, recipe.head_opts)
    except UnknownNameError as exc:
        raise TlplugError(
            f"{exc}; {run_dir} was trained with plugin(s) {', '.join(saved.plugins_used())}, "
            "install them to use it"
        ) from None
    bare = attrs.evolve(recipe, pretrained=False, weights=None, img_size=saved.img_size)
    backbone, _ = build_backbone(provider, bare)
    model = build_model(head, backbone, len(saved.classes))
    state = read_state_dict(weights)
    differing = mismatched_keys(state, model.state_dict())
    if differing:
        raise WeightsError(
            f"{weights} does not match the model described in config.json "
            f"({some(differing)}); was the file replaced?"
        )
    load_state(model, state)
    model.temperature = read_temperature(run_dir)  # probabilities as calibrated
    classifier = Classifier(model, saved.classes, saved.data_config, saved.img_size, saved.config)
    return classifier.to(target)


def _source(item: Path | Image.Image) -> str:
    return "<image>" if isinstance(item, Image.Image) else str(item)


def _open(item: Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    try:
        return open_rgb(item)
    except FileNotFoundError:
        raise TlplugError(f"cannot read image {item} (it does not exist){CHECK}") from None
    except DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TlplugError(f"cannot read image {item} ({reason}){CHECK}") from None
