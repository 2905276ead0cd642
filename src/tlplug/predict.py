"""A trained model rebuilt from its run directory alone, ready to classify images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import torch
from PIL import Image
from torch import nn

from tlplug import rundir
from tlplug.backbone import DataConfig
from tlplug.build import build_backbone, build_model, choose
from tlplug.data.images import DECODE_ERRORS, open_rgb, to_rgb
from tlplug.data.transforms import eval_transform
from tlplug.engine import pick_device
from tlplug.errors import TlplugError, UnknownNameError, WeightsError
from tlplug.plugins import PluginHost
from tlplug.recipe import Recipe
from tlplug.registry import split_backbone
from tlplug.weights import read_state_dict


@attrs.frozen
class Prediction:
    """The top classes for one image, most probable first."""

    source: str
    top: list[tuple[str, float]]

    def to_json(self) -> dict:
        """Return the prediction as a JSON-ready dict."""
        return {"source": self.source, "top": [{"class": c, "prob": p} for c, p in self.top]}


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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of already normalized images."""
        return self.model(images)

    @torch.no_grad()
    def predict(
        self, images: Iterable[str | Path | Image.Image], topk: int = 5, batch_size: int = 32
    ) -> list[Prediction]:
        """Classify image files or PIL images; return the ``topk`` classes of each."""
        self.eval()
        device = next(self.parameters()).device
        items = list(images)
        results = []
        k = min(topk, len(self.classes))
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = torch.stack([self.transform(_open(item)) for item in chunk]).to(device)
            probs = self.model(batch).float().softmax(1)
            values, indices = probs.topk(k, dim=1)
            for item, vals, idxs in zip(chunk, values.tolist(), indices.tolist(), strict=True):
                source = str(item) if not isinstance(item, Image.Image) else "<image>"
                results.append(
                    Prediction(
                        source, [(self.classes[i], v) for i, v in zip(idxs, vals, strict=True)]
                    )
                )
        return results


def load_classifier(run_dir: Path, plugins: PluginHost, device: str = "cpu") -> Classifier:
    """Rebuild the model of ``run_dir`` from config.json and model.safetensors."""
    config = rundir.read_json(run_dir / rundir.CONFIG)
    try:
        recipe = Recipe.from_json(config["recipe"])
        resolved = config["resolved"]
        classes = resolved["classes"]
        img_size = resolved["img_size"]
        data_config = DataConfig(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in resolved["data_config"].items()
            }
        )
    except (KeyError, TypeError) as exc:
        raise TlplugError(f"{run_dir / rundir.CONFIG} is incomplete ({exc} missing)") from None
    weights = run_dir / rundir.WEIGHTS
    if not weights.is_file():
        raise TlplugError(
            f"{run_dir} has no {rundir.WEIGHTS}; the run ended before its first epoch"
        )
    # Only the parts that make the network: a run trained with a schedule or augmentation
    # plugin can be used for prediction without that plugin.
    provider_name = split_backbone(recipe.backbone)[0]
    try:
        provider = choose(plugins, "backbones", provider_name, recipe.backbone_opts)
        head = choose(plugins, "heads", recipe.head, recipe.head_opts)
    except UnknownNameError as exc:
        used = {resolved["backbone"]["provider"]["plugin"], resolved["head"]["plugin"]}
        raise TlplugError(
            f"{exc}; {run_dir} was trained with plugin(s) {', '.join(sorted(used))}, "
            "install them to use it"
        ) from None
    bare = attrs.evolve(recipe, pretrained=False, weights=None, img_size=img_size)
    backbone, _ = build_backbone(provider, bare)
    model = build_model(head, backbone, len(classes))
    state = read_state_dict(weights)
    own = model.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        differing = sorted(set(state) ^ set(own)) or [
            k for k in own if state[k].shape != own[k].shape
        ]
        raise WeightsError(
            f"{weights} does not match the model described in config.json "
            f"({', '.join(differing[:3])}); was the file replaced?"
        )
    model.load_state_dict(state)
    classifier = Classifier(model, classes, data_config, img_size, config)
    return classifier.to(pick_device(device))


def _open(item: str | Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    try:
        return open_rgb(Path(item))
    except DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TlplugError(f"cannot read image {item} ({reason}); check the file") from None
