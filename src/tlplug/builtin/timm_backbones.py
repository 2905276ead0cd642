"""The ``timm`` backbone provider: every model timm lists, weights from the Hugging Face hub."""

from __future__ import annotations

import fnmatch

from tlplug import hookimpl
from tlplug.errors import UnknownNameError, WeightsError, flag
from tlplug.model.backbone import (
    RANDOM_INIT,
    Backbone,
    DataConfig,
    groups_from_children,
    groups_from_lists,
)
from tlplug.model.pretrained_cache import (
    hf_cached_file,
    host_reachable,
    hub_offline,
    offline_message,
)

_HUB_FILES = ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"]


@hookimpl
def tlplug_register_backbones(register):
    register("timm", TimmProvider())


class TimmProvider:
    """timm image models (``timm:resnet50``, ``timm:vit_base_patch16_224.augreg_in21k``)."""

    def list_models(self, pattern: str | None = None) -> list[str]:
        """timm architecture names matching ``pattern``."""
        import timm

        names = timm.list_models()
        return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]

    def describe(self, model: str) -> str:
        """Which pretrained tags timm has for ``model``."""
        import timm

        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{model}.*")]
        if not tags:
            return "no pretrained weights"
        shown = ", ".join(tags[:3]) + (f" (+{len(tags) - 3})" if len(tags) > 3 else "")
        return f"pretrained: {shown}"

    def create(
        self,
        model: str,
        pretrained: bool,
        img_size: int | None,
        *,
        drop_rate: float | None = None,
        drop_path_rate: float | None = None,
    ) -> Backbone:
        """Build ``model`` without its classifier; ``drop_*`` set timm's dropout rates."""
        import timm
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        arch = model.partition(".")[0]
        if not timm.is_model(arch):
            raise UnknownNameError(
                "timm model",
                f"timm:{model}",
                [f"timm:{n}" for n in timm.list_models()],
                hint="see tlplug list backbones 'timm:*'",
            )
        try:
            cfg = get_pretrained_cfg(model)
        except RuntimeError:
            tags = timm.list_pretrained(f"{arch}.*")
            raise UnknownNameError(
                "timm pretrained tag", f"timm:{model}", [f"timm:{t}" for t in tags]
            ) from None
        kwargs: dict = {"num_classes": 0}
        if drop_rate is not None:
            kwargs["drop_rate"] = drop_rate
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        if img_size and cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = img_size
        weights = RANDOM_INIT
        if pretrained:
            kwargs["pretrained_cfg_overlay"] = _cached_weights(model, cfg)
            weights = f"timm pretrained {cfg.hf_hub_id or cfg.url}"
        net = _create(timm, model, pretrained, kwargs)
        data = resolve_data_config({}, model=net)
        classifier = cfg.classifier if cfg is not None else "fc"
        # head_hidden_size is the width after timm's pre-logits layers (MobileNetV3's conv_head)
        num_features = getattr(net, "head_hidden_size", None) or net.num_features
        if not hasattr(net, "reset_classifier"):
            num_features = _pool_encoder(net, img_size or data["input_size"][-1])
        return Backbone(
            module=net,
            num_features=num_features,
            groups=_groups(net),
            data_config=DataConfig(
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                input_size=data["input_size"][-1],
                interpolation=data["interpolation"],
                crop_pct=data["crop_pct"],
            ),
            classifier=tuple(classifier)
            if isinstance(classifier, (list, tuple))
            else (classifier,),
            weights=weights,
            pretrained=pretrained,
        )


def _create(timm, model: str, pretrained: bool, kwargs: dict):
    what = f"timm:{model}"
    try:
        try:
            return timm.create_model(model, pretrained=pretrained, **kwargs)
        except TypeError as exc:  # architectures with a fixed size that take no img_size
            if "img_size" not in kwargs or "img_size" not in str(exc):
                raise
            kwargs.pop("img_size")
            return timm.create_model(model, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise WeightsError(offline_message(what, str(exc).splitlines()[0][:160])) from None


def _cached_weights(model: str, cfg) -> dict:
    """Point timm at a cached weights file, or make sure a download can be tried."""
    what = f"timm:{model}"
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(
            f"timm has no pretrained weights for {what}; pass {flag('weights', 'FILE')} to "
            f"load a local file, or {flag('pretrained', False)}"
        )
    if cfg.file:
        return {}
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else _HUB_FILES
        cached = hf_cached_file(cfg.hf_hub_id, files)
        if cached:
            return {"file": cached}
        if hub_offline():
            raise WeightsError(
                offline_message(what, "HF_HUB_OFFLINE is set and they are not cached")
            )
        if not host_reachable("huggingface.co"):
            raise WeightsError(
                offline_message(what, "huggingface.co cannot be reached and they are not cached")
            )
    return {}


def _groups(net):
    """timm's own coarse layer grouping (stem, stages, final norm), named by module."""
    from timm.models import group_parameters

    for coarse in (True, False):  # a few architectures only implement the fine grouping
        try:
            matcher = net.group_matcher(coarse=coarse)
        except (AttributeError, AssertionError, NotImplementedError):
            continue
        return groups_from_lists(list(group_parameters(net, matcher).values()))
    return groups_from_children(net)


def _pool_encoder(net, size: int) -> int:
    """Make a feature encoder without a classifier (a VLM vision tower) return pooled features.

    Its token ``(B, N, C)`` or map ``(B, C, H, W)`` output is averaged by a forward hook, so
    the module and its state-dict keys stay timm's own. Returns the pooled width.
    """
    import torch

    def pool(module, args, output):
        if output.ndim == 3:
            return output.mean(1)
        return output.mean((2, 3)) if output.ndim == 4 else output

    net.register_forward_hook(pool)
    was_training = net.training
    with torch.no_grad():
        width = net.eval()(torch.zeros(1, 3, size, size)).shape[-1]
    net.train(was_training)
    return width
