"""Reading and writing weights files safely: safetensors, or tensors-only torch pickles.

Nothing here unpickles arbitrary objects: ``.pth``/``.pt``/``.bin`` files are read with
``torch.load(weights_only=True)``, which refuses any pickle that would run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tlplug.errors import WeightsError, flag
from tlplug.model.transfer import BACKBONE_PREFIX, HEAD_PREFIX
from tlplug.rundir.layout import publish, sync
from tlplug.rundir.writer import BackgroundWriter
from tlplug.version import __version__

# Wrappers that training scripts put around a state dict, innermost model weights last.
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file or a tensors-only torch checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({_first_line(exc)}); "
                "it may be truncated, download or copy it again"
            ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"refusing to load {path}: it holds pickled objects, not just tensors "
            f"({_first_line(exc)}); save a plain state_dict or use safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a readable torch checkpoint ({_first_line(exc)})"
        ) from None
    return _unwrap(loaded, path)


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


@attrs.frozen
class LoadReport:
    """What loading a weights file into a module matched and what it left out: the
    classifier tensors it ignored and, when loaded in part (``--weights-partial``), the
    file's tensors the model lacks or has in another shape and the model's tensors the
    file lacks (left as built)."""

    loaded: int
    ignored_classifier: tuple[str, ...]
    unexpected: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the console."""
        parts = [f"loaded {self.loaded} tensors"]
        if self.ignored_classifier:
            parts.append(f"ignored {len(self.ignored_classifier)} classifier tensors")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} in the file not loaded ({some(self.unexpected)})")
        if self.missing:
            parts.append(f"{len(self.missing)} of the model's left as built ({some(self.missing)})")
        return "; ".join(parts)


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    classifier: tuple[str, ...] = (),
    partial: bool = False,
) -> LoadReport:
    """Copy the tensors of ``state`` into ``module``, which must match it exactly: every
    tensor of the file (but the ``classifier``'s) is one of the model's, in its shape, and
    every tensor of the model is in the file. Counters and integer buffers a model computes
    when it is built (relative-position indices) may be absent from the file. Anything
    else is an error naming the keys: the file is for another model. With ``partial``,
    the tensors that match by name and shape are loaded, the rest reported; an error only
    when none matches.
    """
    own = module.state_dict()
    ignored = tuple(k for k in state if any(k == c or k.startswith(c + ".") for c in classifier))
    candidates = {k: v for k, v in state.items() if k not in ignored}
    matched = {k: v for k, v in candidates.items() if k in own and v.shape == own[k].shape}
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in candidates.items()
        if k in own and v.shape != own[k].shape
    ]
    unexpected = [k for k in candidates if k not in own and not _made_by_model(k, candidates[k])]
    missing = [k for k in own if k not in matched and not _made_by_model(k, own[k])]
    hint = f"pass {flag('weights_partial')} to load the {len(matched)} tensors that match"
    if partial:
        if not matched:
            raise WeightsError(
                f"{source} has no tensor of this model (it has {some(list(state))}); "
                "is it for another architecture?"
            )
    elif mismatched:
        raise WeightsError(
            f"{source} does not fit this model: {len(mismatched)} tensor shapes differ "
            f"({some(mismatched)}); is it for another architecture? {hint}"
        )
    elif missing:
        raise WeightsError(
            f"{source} lacks {len(missing)} of this model's tensors ({some(missing)}; "
            f"the file has {some(list(state))}); is it for another architecture? {hint}"
        )
    elif unexpected:
        raise WeightsError(
            f"{source} holds {len(unexpected)} tensors this model does not have "
            f"({some(unexpected)}): it is for another architecture, a deeper or wider "
            f"sibling; {hint}"
        )
    load_state(module, matched, strict=False)
    return LoadReport(
        loaded=len(matched),
        ignored_classifier=ignored,
        unexpected=tuple([*(m.split(" ")[0] for m in mismatched), *unexpected]),
        missing=tuple(missing),
    )


def mismatched_keys(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> list[str]:
    """What keeps ``state`` from loading as ``own`` (a module's state dict) exactly: the
    keys only one of them has, else the keys whose shapes differ; empty when it fits."""
    differing = sorted(set(state) ^ set(own))
    if differing:
        return differing
    return [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if state[k].shape != own[k].shape
    ]


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True):
    """``module.load_state_dict(state)`` for a state read from a file: the module's own
    state-dict metadata (per-module versions) goes along, which some modules need to load
    (torchvision's MNASNet refuses a state without it)."""
    with_metadata = OrderedDict(state)
    with_metadata._metadata = getattr(module.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return module.load_state_dict(with_metadata, strict=strict)


def save_weights(
    model: nn.Module,
    path: Path,
    config: dict,
    writer: BackgroundWriter | None = None,
    adapter=None,
) -> None:
    """Write a run's ``model`` weights with the facts a reader needs in the safetensors
    metadata; with a ``writer``, snapshot them now and write them in the background. With
    an ``adapter``, the weights are those of the model without it (merged)."""
    metadata = {
        "format": "pt",
        "tlplug_version": __version__,
        "backbone": config["recipe"]["backbone"],
        "backbone_prefix": BACKBONE_PREFIX,
        "head_prefix": HEAD_PREFIX,
    }
    state = adapter.export(model) if adapter else model.state_dict()
    save_atomic(state, path, metadata, writer)


def save_atomic(
    state: Mapping[str, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
    writer: BackgroundWriter | None = None,
    after: Sequence[Path] = (),
) -> None:
    """Write ``state`` as safetensors to ``path`` via a temporary file and a rename; with a
    ``writer``, snapshot the tensors now and write them on its background thread. The files
    ``after`` names are flushed to disk first, so ``path`` never gets ahead of them."""
    if writer is not None:
        tensors = writer.snapshot(state)
        writer.submit(lambda: save_atomic(tensors, path, metadata, after=after), path)
        return
    for earlier in after:
        sync(earlier)
    tensors, seen = {}, set()
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:  # tied weights: safetensors refuses tensors that share memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp, metadata=metadata)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        publish(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _made_by_model(key: str, tensor: torch.Tensor) -> bool:
    """A tensor the model makes itself: a BatchNorm counter or another integer buffer."""
    return key.endswith("num_batches_tracked") or not (
        tensor.is_floating_point() or tensor.is_complex()
    )


def some(keys: list[str] | tuple[str, ...], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def backbone_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone tensors of a tlplug ``model.safetensors``, under the provider's own names.

    Any other state dict is returned unchanged, so a run's weights can start a new run.
    """
    if state and all(k.startswith((BACKBONE_PREFIX, HEAD_PREFIX)) for k in state):
        return {
            k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)
        }
    return dict(state)
