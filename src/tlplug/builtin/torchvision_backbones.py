"""The ``torchvision`` backbone provider: every classification model torchvision lists.

Weights come from the torch hub cache (``TORCH_HOME``), downloaded there only when missing.
Layer groups follow each family's stages; a family this module does not know yet is
grouped by its top-level children.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import TYPE_CHECKING

from tlplug import hookimpl
from tlplug.errors import TlplugError, UnknownNameError
from tlplug.model.backbone import RANDOM_INIT, Backbone, DataConfig, groups_by_prefix, has_params
from tlplug.model.pretrained_cache import torch_hub_file

if TYPE_CHECKING:
    from torch import nn

_SIZE_ARG = {"VisionTransformer": "image_size", "MaxVit": "input_size"}


@hookimpl
def tlplug_register_backbones(register):
    register("torchvision", TorchvisionProvider())


class TorchvisionProvider:
    """torchvision classifiers (``torchvision:resnet50``, ``torchvision:vgg16.IMAGENET1K_V1``)."""

    def list_models(self, pattern: str | None = None) -> list[str]:
        """torchvision classification model names matching ``pattern``."""
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def describe(self, model: str) -> str:
        """Which weights torchvision has for ``model``."""
        from torchvision.models import get_model_weights

        return "weights: " + ", ".join(w.name for w in get_model_weights(model))

    def create(
        self, model: str, pretrained: bool, img_size: int | None, *, pre_logits: bool = True
    ) -> Backbone:
        """Build ``model`` without its final classifier layer.

        ``pre_logits=False`` also drops the hidden layers of a multi-layer classifier (VGG's
        and AlexNet's 4096-wide fc layers), so a new head sees the pooled conv features.
        """
        from torchvision.models import get_model, get_model_weights

        arch, _, tag = model.partition(".")
        known = self.list_models()
        if arch not in known:
            raise UnknownNameError(
                "torchvision model",
                f"torchvision:{model}",
                [f"torchvision:{n}" for n in known],
                hint="see tlplug list backbones 'torchvision:*'",
            )
        enum = get_model_weights(arch)
        if tag and tag not in enum.__members__:
            raise UnknownNameError(
                "torchvision weights",
                f"torchvision:{model}",
                [f"torchvision:{arch}.{w}" for w in enum.__members__],
            )
        weights = enum[tag] if tag else getattr(enum, "DEFAULT", next(iter(enum)))
        kwargs = {}
        if arch in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            if not pretrained:
                kwargs["init_weights"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if pretrained:
                torch_hub_file(weights.url, f"torchvision:{model}")
            net = get_model(arch, weights=weights if pretrained else None, **kwargs)
            net = _resize(net, arch, img_size, kwargs)
        num_features, removed = _drop_classifier(
            net, num_classes=len(weights.meta["categories"]), keep_pre_logits=pre_logits
        )
        preset = weights.transforms()
        resize = preset.resize_size[0]
        crop = preset.crop_size[0]
        return Backbone(
            module=net,
            num_features=num_features,
            groups=groups_by_prefix(net, _group_spec(net)),
            data_config=DataConfig(
                mean=tuple(preset.mean),
                std=tuple(preset.std),
                input_size=crop,
                interpolation=preset.interpolation.value,
                crop_pct=round(crop / resize, 4),
            ),
            classifier=tuple(removed),
            weights=f"torchvision {weights}" if pretrained else RANDOM_INIT,
            pretrained=pretrained,
        )


def _resize(net: nn.Module, arch: str, img_size: int | None, kwargs: dict) -> nn.Module:
    """Rebuild a fixed-size architecture (ViT, MaxViT) for ``img_size``, keeping its weights."""
    from torchvision.models import get_model
    from torchvision.models.vision_transformer import interpolate_embeddings

    size_arg = _SIZE_ARG.get(type(net).__name__)
    native = getattr(net, "image_size", None)
    if size_arg is None or not img_size or img_size == native:
        return net
    if size_arg == "image_size" and img_size % net.patch_size:
        raise TlplugError(
            f"torchvision:{arch} needs --img-size divisible by its patch size {net.patch_size}"
        )
    value = img_size if size_arg == "image_size" else (img_size, img_size)
    resized = get_model(arch, weights=None, **{size_arg: value}, **kwargs)
    state = net.state_dict()
    if size_arg == "image_size":
        state = interpolate_embeddings(img_size, net.patch_size, state)
    resized.load_state_dict(state)
    return resized


def _drop_classifier(net: nn.Module, num_classes: int, keep_pre_logits: bool):
    """Replace the final classifier layer with Identity; return (num_features, removed keys)."""
    from torch import nn

    final = None
    for path, module in net.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes) or (
            isinstance(module, nn.Conv2d) and module.out_channels == num_classes
        ):
            final = path
    if final is None:
        raise TlplugError(f"cannot find the classifier of {type(net).__name__}")
    parent_path, _, leaf = final.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    layer = getattr(parent, leaf) if not leaf.isdigit() else parent[int(leaf)]
    num_features = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    removed = [final]
    if not keep_pre_logits and isinstance(parent, nn.Sequential):
        linears = [i for i, m in enumerate(parent) if isinstance(m, nn.Linear)]
        first = linears[0]
        num_features = parent[first].in_features
        removed = [
            f"{parent_path}.{i}" for i, m in enumerate(parent) if i >= first and has_params(m)
        ]
        _replace(net, parent_path, nn.Sequential(*list(parent)[:first]))
    else:
        _replace(net, final, nn.Identity())
    return num_features, removed


def _replace(net: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def _group_spec(net: nn.Module) -> list[tuple[str, list[str]]]:
    """Stages of a torchvision classifier, stem to top, as (group name, module prefixes)."""
    from torch import nn

    family = type(net).__name__
    children = [n for n, c in net.named_children() if has_params(c)]
    pre_logits = [("pre_logits", ["classifier"])] if "classifier" in children else []
    if family == "ResNet":
        return [("stem", ["conv1", "bn1"])] + [(n, [n]) for n in children if n.startswith("layer")]
    if family in ("VGG", "AlexNet", "SqueezeNet"):
        return _split_at_pools(net.features, "features") + pre_logits
    if family == "DenseNet":
        blocks = [n for n, _ in net.features.named_children() if n.startswith("denseblock")]
        return [("stem", ["features.conv0", "features.norm0"])] + [
            (b, [f"features.{b}", f"features.{b.replace('denseblock', 'transition')}"])
            for b in blocks
        ]
    if family in ("GoogLeNet", "Inception3"):
        return _by_name_stem(children)
    if family in ("MobileNetV2", "MobileNetV3"):
        return _merge_same_width(net.features, "features") + pre_logits
    if family == "EfficientNet":
        return _each_child(net.features, "features") + pre_logits
    if family == "MNASNet":
        stages = [i for i, m in enumerate(net.layers) if isinstance(m, nn.Sequential)]
        spec = [("stem", [f"layers.{i}" for i in range(stages[0])])]
        spec += [(f"layers.{i}", [f"layers.{i}"]) for i in stages]
        spec += [("head_conv", [f"layers.{i}" for i in range(stages[-1] + 1, len(net.layers))])]
        return spec
    if family == "RegNet":
        return [("stem", ["stem"]), *_each_child(net.trunk_output, "trunk_output")]
    if family in ("ConvNeXt", "SwinTransformer"):
        # features: stem, stage, downsample, stage, ...; a downsample joins the stage after it
        spec = [("stem", ["features.0"]), ("stage1", ["features.1"])]
        for i in range(2, len(net.features), 2):
            spec.append((f"stage{i // 2 + 1}", [f"features.{i}", f"features.{i + 1}"]))
        return spec
    if family == "VisionTransformer":
        layers = [n for n, _ in net.encoder.layers.named_children()]
        return [("stem", ["class_token", "conv_proj", "encoder.pos_embedding"])] + [
            (f"block{i}", [f"encoder.layers.{n}"]) for i, n in enumerate(layers)
        ]
    if family == "MaxVit":
        return [("stem", ["stem"]), *_each_child(net.blocks, "blocks"), *pre_logits]
    if family == "ShuffleNetV2":
        return [("stem", ["conv1"])] + [(n, [n]) for n in children[1:]]
    return _by_name_stem(children)


def _split_at_pools(features: nn.Sequential, prefix: str) -> list[tuple[str, list[str]]]:
    from torch import nn

    spec, current = [], []
    for i, module in enumerate(features):
        current.append(f"{prefix}.{i}")
        if isinstance(module, nn.MaxPool2d):
            spec.append((f"block{len(spec) + 1}", current))
            current = []
    if current:
        spec.append((f"block{len(spec) + 1}", current))
    spec[0] = ("stem", spec[0][1])
    return spec


def _each_child(container: nn.Module, prefix: str) -> list[tuple[str, list[str]]]:
    spec = [(f"{prefix}.{n}", [f"{prefix}.{n}"]) for n, _ in container.named_children()]
    if prefix == "features":
        spec[0] = ("stem", spec[0][1])
    return spec


def _merge_same_width(features: nn.Sequential, prefix: str) -> list[tuple[str, list[str]]]:
    """One group per run of blocks with the same output width, as timm groups MobileNets."""
    spec: list[tuple[str, list[str]]] = [("stem", [f"{prefix}.0"])]
    last_width = None
    for i in range(1, len(features)):
        width = getattr(features[i], "out_channels", None)
        if width is not None and width == last_width:
            spec[-1][1].append(f"{prefix}.{i}")
        else:
            spec.append((f"{prefix}.{i}", [f"{prefix}.{i}"]))
        last_width = width
    return spec


def _by_name_stem(children: list[str]) -> list[tuple[str, list[str]]]:
    """Group top-level children; leading plain convs form the stem, then by name family."""
    spec: list[tuple[str, list[str]]] = []
    for name in children:
        family = name.rstrip("abcdefghijklmnopqrstuvwxyz").rstrip("_")
        if spec and (
            spec[-1][0] == family or (len(spec) == 1 and name.startswith(("conv", "Conv")))
        ):
            spec[-1][1].append(name)
        else:
            spec.append((family, [name]))
    if spec:
        spec[0] = ("stem", spec[0][1])
    return spec
