"""The trained network: a provider's backbone plus a head, with named layer groups.

State-dict keys are ``backbone.<the provider's own key>`` and ``head.<key>``, so the
backbone part of a saved model loads into the plain timm or torchvision model of the same
name after stripping :data:`BACKBONE_PREFIX`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tlplug.model.backbone import Backbone, LayerGroup

BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."
HEAD_GROUP = "head"


class TransferModel(nn.Module):
    """``head(backbone(images))``, with the backbone's groups followed by the head group."""

    BACKBONE_PREFIX = BACKBONE_PREFIX  # what the backbone's parameter names start with

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.groups: list[LayerGroup] = [
            LayerGroup(g.name, tuple(BACKBONE_PREFIX + p for p in g.params))
            for g in backbone.groups
        ]
        self.groups.append(
            LayerGroup(HEAD_GROUP, tuple(HEAD_PREFIX + n for n, _ in head.named_parameters()))
        )
        self.pinned: frozenset[str] = frozenset()  # parameters no stage trains (an adapter's)
        self.temperature = 1.0  # the logits are divided by it (a calibrated run's, as loaded)
        self._subtree_groups: dict[str, frozenset[str]] | None = None

    def regroup(self, before: dict[int, str]) -> None:
        """Assign every parameter to a group again after modules were added or wrapped.

        ``before`` maps ``id(parameter)`` to its name when the groups were made. A parameter
        that was there keeps its group under its new name; a new one joins the group of the
        old parameter whose module path it shares most of.
        """
        owner = {p: g.name for g in self.groups for p in g.params}
        old_names = list(owner)
        members: dict[str, list[str]] = {g.name: [] for g in self.groups}
        for name, param in self.named_parameters():
            old = before.get(id(param))
            group = owner[old] if old in owner else owner[_nearest(name, old_names)]
            members[group].append(name)
        self.groups = [LayerGroup(g.name, tuple(members[g.name])) for g in self.groups]
        self._subtree_groups = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalized images (divided by :attr:`temperature`
        when a calibrated run's model is loaded)."""
        logits = self.head(self.backbone(images))
        return logits if self.temperature == 1.0 else logits / self.temperature

    def group_names(self) -> list[str]:
        """Layer-group names, stem to head."""
        return [g.name for g in self.groups]

    def group_params(self, name: str) -> list[nn.Parameter]:
        """The parameters of group ``name``."""
        params = dict(self.named_parameters())
        return [params[p] for p in self.group_param_names(name)]

    def group_param_names(self, name: str) -> tuple[str, ...]:
        """The full parameter names of group ``name``."""
        return next(g for g in self.groups if g.name == name).params

    def state_groups(self) -> dict[str, str]:
        """The group of every state-dict key: parameters by name, buffers (and keys a
        shared module has under a second path) by the module that holds them."""
        params = {p: g.name for g in self.groups for p in g.params}
        modules = self.group_modules()
        return {
            key: params.get(key) or modules[key.rpartition(".")[0]] for key in self.state_dict()
        }

    def subtree_groups(self) -> dict[str, frozenset[str]]:
        """Map every module path to the groups owning the parameters and buffers below it.

        A module that holds none (an activation, a dropout) maps to its parent's groups.
        Computed once; :meth:`regroup` (after modules were added) computes it again.
        """
        if self._subtree_groups is None:
            self._subtree_groups = self._find_subtree_groups()
        return self._subtree_groups

    def _find_subtree_groups(self) -> dict[str, frozenset[str]]:
        holders = [(p.rpartition(".")[0], g.name) for g in self.groups for p in g.params]
        holders += list(self.group_modules().items())
        below = {path: set() for path, _ in self.named_modules(remove_duplicate=False)}
        for path, group in holders:
            parts = path.split(".") if path else []
            for depth in range(len(parts) + 1):
                below[".".join(parts[:depth])].add(group)
        found: dict[str, frozenset[str]] = {}
        for path in below:
            groups = below[path] or found.get(path.rpartition(".")[0], set())
            found[path] = frozenset(groups)
        return found

    def group_modules(self) -> dict[str, str]:
        """Map every module path that holds parameters or buffers to its group's name.

        A module shared under several paths (CoaT's convolutional position encodings) is
        listed under each, with the group of the path its parameters are named by.
        """
        owner = {p: g.name for g in self.groups for p in g.params}
        by_module: dict[int, str] = {}
        ordered = [n for n, _ in self.named_parameters()]
        for path, module in self.named_modules():
            own = [f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)]
            if own:
                by_module[id(module)] = owner[own[0]]
            elif any(True for _ in module.buffers(recurse=False)):
                by_module[id(module)] = owner[_nearest(path, ordered)] if ordered else HEAD_GROUP
        return {
            path: by_module[id(module)]
            for path, module in self.named_modules(remove_duplicate=False)
            if id(module) in by_module
        }


def count_params(params: Sequence[nn.Parameter]) -> int:
    """Number of scalars in ``params``."""
    return sum(p.numel() for p in params)


def _nearest(path: str, names: list[str]) -> str:
    """The parameter sharing the longest module path with ``path`` (for parameter-less norms)."""
    parts = path.split(".")

    def shared(name: str) -> int:
        count = 0
        for a, b in zip(parts, name.split("."), strict=False):
            if a != b:
                break
            count += 1
        return count

    return max(names, key=shared)
