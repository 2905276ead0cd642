"""The resume state: everything a run needs to continue after its last finished epoch.

Written after every epoch through a temporary file, fsync and rename, so the previous state
stays whole until the new one is complete; metrics.jsonl is flushed to disk first, so the
state never names an epoch whose record could be lost. Its tensors are the model's and the
optimizer's state and the RNG states; its metadata holds, as JSON, the rest: the schedule
state (stage, epochs and steps done, LR scheduler), the optimizer's settings, the best
result so far and the recipe. Nothing is pickled, so reading one runs no code.

The model tensors a stage keeps frozen go to a part file written once per stage
(``.resume-frozen-<generation>.safetensors``) that ``resume.safetensors`` names, so a
linear probe's epochs rewrite the head, not the backbone. A part is written before the first
state that names it and removed only after a state naming another part is in place.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from tlplug.errors import TlplugError
from tlplug.run import Run
from tlplug.rundir.layout import FROZEN_PART, METRICS, RESUME
from tlplug.rundir.weights import load_state, mismatched_keys, save_atomic, some
from tlplug.rundir.writer import BackgroundWriter
from tlplug.train.best_so_far import Tally

__all__ = ["RESUME", "ResumeState", "read_resume", "remove_state", "restore", "save_resume"]

FORMAT = "tlplug-resume/1"
_META_KEY = "tlplug_resume"
_PART_KEY = "tlplug_resume_part"


@attrs.frozen
class ResumeState:
    """A resume state as read from disk: tensors by key and the JSON part."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        """The last epoch the run finished."""
        return self.meta["epoch"]


def save_resume(path: Path, run: Run, tally: Tally, writer: BackgroundWriter | None = None) -> None:
    """Write ``run``'s state after its current epoch to ``path``, atomically; with a
    ``writer``, snapshot it now and write it in the background, the tensors the writer
    holds still in a part file of their own."""
    tensors = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    frozen = {k: v for k, v in tensors.items() if writer is not None and writer.holds_still(v)}
    tensors = {k: v for k, v in tensors.items() if k not in frozen}
    optimizer = run.optimizer.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    if run.ema is not None:
        tensors |= {f"ema.{k}": v for k, v in run.ema.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    numpy_state = np.random.get_state()
    meta = {
        "format": FORMAT,
        "epoch": run.epoch,
        "schedule": run.schedule_state(),
        "optimizer": {"param_groups": optimizer["param_groups"], "state": plain},
        "best": tally.to_json(),
        "recipe": run.recipe.to_json(),
        "rng": {
            "python": _jsonable(random.getstate()),
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        },
    }
    part = None
    if frozen:
        part = path.parent / FROZEN_PART.format(writer.generation)
        meta["frozen_part"] = {"file": part.name, "generation": writer.generation}
        if not writer.submitted(part):
            save_atomic(frozen, part, {"format": "pt", _PART_KEY: writer.generation}, writer)
    metadata = {"format": "pt", _META_KEY: json.dumps(meta)}
    save_atomic(tensors, path, metadata, writer, after=[path.parent / METRICS])
    if writer is not None:  # queued behind the state, so it runs once the state is in place
        keep = part.name if part else None
        writer.submit(lambda: remove_parts(path.parent, keep), path.with_name(".resume-parts"))


def remove_state(run_dir: Path) -> None:
    """Delete the resume state of ``run_dir`` and its frozen parts (a finished run's)."""
    (run_dir / RESUME).unlink(missing_ok=True)
    remove_parts(run_dir)


def remove_parts(run_dir: Path, keep: str | None = None) -> None:
    """Delete the frozen-part files in ``run_dir`` but ``keep``."""
    for found in run_dir.glob(FROZEN_PART.format("*")):
        if found.name != keep:
            found.unlink(missing_ok=True)


def read_resume(path: Path) -> ResumeState:
    """Read a resume state, refusing anything that is not one (and never unpickling)."""
    if not path.is_file():
        raise TlplugError(
            f"{path.parent} has no resume state ({path.name}): it stopped before its first "
            "epoch ended, or it finished (a finished run keeps no state unless --keep-state; "
            "--epochs N continues it from its best weights); to start over, run the same "
            "command again without --resume"
        )
    header, tensors = _read(path)
    try:
        meta = json.loads(header.get(_META_KEY) or "")
        if meta.get("format") != FORMAT:
            raise ValueError(meta.get("format"))
    except (ValueError, AttributeError):
        raise TlplugError(
            f"{path} is a safetensors file but not a tlplug resume state ({FORMAT})"
        ) from None
    named = meta.get("frozen_part")
    if named:
        part = path.parent / named["file"]
        if not part.is_file():
            raise TlplugError(
                f"{path} needs {part.name}, its frozen weights, which is missing; copy the "
                "whole run directory, or start the run again with --overwrite"
            )
        part_header, frozen = _read(part)
        if part_header.get(_PART_KEY) != named["generation"]:
            raise TlplugError(
                f"{part} is not the frozen part {path.name} was written with; start the run "
                "again with --overwrite"
            )
        tensors |= frozen
    return ResumeState(tensors, meta)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file, or a one-line error."""
    try:
        with safe_open(path, framework="pt", device="cpu") as reader:
            header = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TlplugError(
            f"{path} is not a readable resume state ({reason}); it may be truncated or not "
            "from tlplug. Start the run again with --overwrite"
        ) from None
    return header, tensors


def restore(run: Run, state: ResumeState, schedule: bool = True) -> Tally:
    """Load ``state`` into ``run`` (model, optimizer, RNGs, and with ``schedule`` the
    freeze and LR schedules' state, else only the epoch and step counts); return the
    tally."""
    model = {k[len("model.") :]: v for k, v in state.tensors.items() if k.startswith("model.")}
    differing = mismatched_keys(model, run.model.state_dict())
    if differing:
        raise TlplugError(
            f"the resume state is for another model or class count ({some(differing)}); "
            "resume only the run that wrote it"
        )
    load_state(run.model, model)
    saved = state.meta["optimizer"]
    if len(saved["param_groups"]) != len(run.optimizer.param_groups):
        raise TlplugError("the resume state's optimizer has other parameter groups than this run")
    per_param: dict[int, dict[str, Any]] = {}
    for key, tensor in state.tensors.items():
        if key.startswith("optimizer."):
            index, name = key[len("optimizer.") :].split(".", 1)
            per_param.setdefault(int(index), {})[name] = tensor
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    for index, values in per_param.items():
        for name, tensor in values.items():
            if index < len(params) and tensor.shape == params[index].shape:
                # Saved contiguous; fused optimizers need their parameter's layout
                # (channels-last convolutions), as they pair elements by memory position.
                values[name] = torch.empty_like(params[index]).copy_(tensor)
    for index, values in saved["state"].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in saved["param_groups"]
    ]
    run.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    if schedule:
        run.load_schedule_state(state.meta["schedule"])
    else:
        run.epoch, run.step = state.meta["schedule"]["epoch"], state.meta["schedule"]["step"]
    if run.ema is not None:
        run.ema.load_state_dict(
            {k[len("ema.") :]: v for k, v in state.tensors.items() if k.startswith("ema.")}
        )
    torch.set_rng_state(state.tensors["rng.torch"])
    if "rng.cuda" in state.tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state.tensors["rng.cuda"]))
    rng = state.meta["rng"]
    random.setstate(_tuples(rng["python"]))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return Tally.from_json(state.meta["best"])


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
