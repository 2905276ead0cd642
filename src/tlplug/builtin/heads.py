"""Built-in classification heads: ``linear`` and ``mlp``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tlplug import hookimpl

if TYPE_CHECKING:
    from torch import nn

_ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}


@hookimpl
def tlplug_register_heads(register):
    register("linear", linear)
    register("mlp", mlp)


def linear(num_features: int, num_classes: int, *, dropout: float = 0.0) -> nn.Module:
    """One linear layer on the backbone's pooled features, with optional dropout before it."""
    from torch import nn

    layers = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(num_features, num_classes))


def mlp(
    num_features: int,
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (512,),
    dropout: float = 0.5,
    activation: Literal["relu", "gelu", "silu"] = "relu",
) -> nn.Module:
    """Hidden linear layers (``hidden=4096,4096``), each followed by activation and dropout."""
    from torch import nn

    layers: list[nn.Module] = []
    width = num_features
    for size in hidden:
        layers += [
            nn.Linear(width, size),
            getattr(nn, _ACTIVATIONS[activation])(),
            nn.Dropout(dropout),
        ]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
