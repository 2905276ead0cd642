"""Replaying a frozen prefix: while a stage trains only the top of the backbone, the frozen
layers below run once per image and every step runs only the trainable suffix.

The cut is found on the model itself, not assumed: a probe forward pass records the order
in which the backbone's top-level modules (and the members of its Sequential containers)
finish. The cut is the last of them such that everything finished by then is frozen and
every trainable backbone parameter lies in a module that runs later. While replaying,
modules up to the cut are stubbed: those before it return zeros of their recorded shape
(whatever the network computes from them is discarded), and the cut returns the cached
output of the current batch. A probe batch must give the same logits both ways, or there
is no cut and the stage trains as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs
import torch
from torch import nn

from tlplug.compute.precision import FP32, Numerics
from tlplug.model.transfer import BACKBONE_PREFIX, TransferModel
from tlplug.train.stages import Stage


@attrs.define
class PrefixCut:
    """Where a backbone splits into a frozen prefix and a trainable suffix.

    ``before``: the modules that finish before the cut, with their output's shape (batch
    dimension excluded) and dtype; ``cut``: the module whose output is cached.
    """

    name: str
    cut: nn.Module
    before: list[tuple[nn.Module, tuple[int, ...], torch.dtype]]
    current: torch.Tensor | None = None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        """Stub the prefix while the block runs: the cut returns :attr:`current`."""

        def zeros(shape, dtype):
            made = {}

            def stub(*args, **kwargs):  # an expanded view: no memory per batch
                device = self.current.device
                if device not in made:
                    made[device] = torch.zeros(1, *shape, dtype=dtype, device=device)
                return made[device].expand(len(self.current), *shape)

            return stub

        stubbed = [(m, zeros(shape, dtype)) for m, shape, dtype in self.before]
        stubbed.append((self.cut, lambda *args, **kwargs: self.current))
        for module, stub in stubbed:
            module.forward = stub
        try:
            yield
        finally:
            for module, _ in stubbed:
                del module.forward  # back to the class's own forward


class _Stop(Exception):
    """Ends a forward pass once the cut's output is in hand."""


def prefix_output(model: TransferModel, cut: PrefixCut, images: torch.Tensor) -> torch.Tensor:
    """Run the backbone on ``images`` only as far as the cut; return the cut's output."""
    found = []

    def grab(module, args, output):
        found.append(output)
        raise _Stop

    handle = cut.cut.register_forward_hook(grab)
    try:
        model.backbone(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    return found[0]


class Replay(nn.Module):
    """``head(backbone(x))`` where ``x`` is a batch of cached prefix outputs."""

    def __init__(self, model: TransferModel, cut: PrefixCut, dummy: torch.Tensor):
        super().__init__()
        self.backbone = _ReplayBackbone(model.backbone, cut, dummy)
        self.head = model.head

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        """Logits for the images whose prefix outputs are ``prefix``."""
        return self.head(self.backbone(prefix))


class _ReplayBackbone(nn.Module):
    def __init__(self, backbone: nn.Module, cut: PrefixCut, dummy: torch.Tensor):
        super().__init__()
        self.inner, self.cut = backbone, cut
        self.register_buffer("dummy", dummy, persistent=False)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        self.cut.current = prefix
        try:
            return self.inner(self.dummy.expand(len(prefix), *self.dummy.shape[1:]))
        finally:
            self.cut.current = None


def find_cut(
    model: TransferModel,
    stage: Stage,
    img_size: int,
    device: torch.device,
    numerics: Numerics = FP32,
) -> PrefixCut | None:
    """The latest cut below ``stage``'s trainable groups that replays exactly, or None."""
    training = set(stage.training)
    owner = model.state_groups()
    trainable = {
        name
        for group in model.groups
        if group.name in training
        for name in model.group_param_names(group.name)
        if name.startswith(BACKBONE_PREFIX)
    }
    candidates = _candidates(model.backbone)
    probe = torch.Generator().manual_seed(0)  # the training RNG is left as it was
    images = numerics.inputs(torch.randn(2, 3, img_size, img_size, generator=probe), device)
    finished, outputs = _finishing_order(model, candidates, images, numerics, device)
    path_of = {id(m): p for p, m in candidates}
    for index in range(len(finished) - 1, -1, -1):
        prefix, suffix = finished[: index + 1], finished[index + 1 :]
        if any(_groups_in(owner, path_of[id(m)]) & training for m in prefix):
            continue
        later = {
            BACKBONE_PREFIX + f"{path_of[id(m)]}.{n}"
            for m in suffix
            for n, _ in m.named_parameters()
        }
        if not trainable <= later:
            continue
        if not all(isinstance(outputs[id(m)], torch.Tensor) for m in prefix):
            continue
        cut = PrefixCut(
            path_of[id(prefix[-1])],
            prefix[-1],
            [(m, tuple(outputs[id(m)].shape[1:]), outputs[id(m)].dtype) for m in prefix[:-1]],
        )
        if _replays_exactly(model, cut, images, numerics, device):
            return cut
        return None
    return None


def _groups_in(owner: dict[str, str], path: str) -> set[str]:
    """The groups of the parameters and buffers under backbone module ``path``."""
    start = f"{BACKBONE_PREFIX}{path}."
    return {group for key, group in owner.items() if key.startswith(start)}


def _candidates(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's children, and the members of every Sequential among them (nested)."""
    found = []

    def visit(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            found.append((child_path, child))
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                visit(child, child_path)

    visit(backbone, "")
    return found


def _finishing_order(model, candidates, images, numerics, device):
    """The candidates that run exactly once, in the order they finish, and their outputs."""
    order: list[nn.Module] = []
    outputs: dict[int, object] = {}
    calls: dict[int, int] = {}

    def record(module, args, output):
        calls[id(module)] = calls.get(id(module), 0) + 1
        order.append(module)
        outputs[id(module)] = output

    handles = [m.register_forward_hook(record) for _, m in candidates]
    was_training = model.training
    try:
        with torch.no_grad(), numerics.autocast(device):
            model.eval().backbone(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [m for m in order if calls[id(m)] == 1], outputs


def _replays_exactly(model, cut: PrefixCut, images, numerics, device) -> bool:
    """Whether the stubbed network gives the normal network's logits on ``images``."""
    was_training = model.training
    try:
        with torch.no_grad(), numerics.autocast(device):
            model.eval()
            expected = model(images)
            prefix = prefix_output(model, cut, images)
            replay = Replay(model, cut, images[:1])
            with cut.replaying():
                got = replay(prefix)
    except Exception:  # a stub the network cannot take: no cut
        return False
    finally:
        model.train(was_training)
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
