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
from tlplug.data.transforms import eval_transform, normalize
from tlplug.device import pick_device
from tlplug.errors import TlplugError, UnknownNameError, WeightsError
from tlplug.kinds import split_backbone
from tlplug.plugins import PluginHost
from tlplug.runconfig import read_saved_run
from tlplug.weights import load_state, mismatched_keys, read_state_dict, some


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
        self.normalize = normalize(data_config)  # uint8 image batches to model inputs

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
    saved = read_saved_run(run_dir, plugins.recipe_type, strict=False)
    weights = run_dir / rundir.WEIGHTS
    if not weights.is_file():
        raise TlplugError(
            f"{run_dir} has no {rundir.WEIGHTS}; the run ended before its first epoch"
        )
    # Only the parts that make the network: a run trained with a schedule or augmentation
    # plugin can be used for prediction without that plugin.
    recipe = saved.recipe
    try:
        provider = choose(plugins, "backbones", split_backbone(recipe.backbone)[0],
                          recipe.backbone_opts)  # fmt: skip
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
    classifier = Classifier(model, saved.classes, saved.data_config, saved.img_size, saved.config)
    return classifier.to(pick_device(device))


def _open(item: str | Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    try:
        return open_rgb(Path(item))
    except DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise TlplugError(f"cannot read image {item} ({reason}); check the file") from None
