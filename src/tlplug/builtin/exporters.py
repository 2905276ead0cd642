"""Built-in export formats for ``tlplug export``: onnx, torchscript, safetensors.

Each file carries what a user needs to prepare images, beside the sidecar JSON that
``tlplug export`` writes: :func:`preprocessing` (image size, mean, std, interpolation,
crop_pct, class names). ONNX and safetensors hold it as string metadata, strings as they
are and the rest as JSON (``json.loads(meta["classes"])``); TorchScript holds the whole
dict as JSON in the extra file ``tlplug.json``.

The network exported is ``classifier.model``, which computes what the classifier does:
the classifier also holds its PIL transforms, which have no place in the file. Traces use
an example batch of 3, not the 2 images the export is checked on, so a batch size baked
into a file is caught by the check.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlplug import hookimpl
from tlplug.errors import TlplugError
from tlplug.version import __version__

if TYPE_CHECKING:  # torch loads when an export runs, not when plugins load
    import torch

    from tlplug.ship.predict import Classifier

#: What a factory returns: runs the written file on a float image batch, gives logits.
Runner = Callable[["torch.Tensor"], "torch.Tensor"]
EXAMPLE_BATCH = 3  # export_run checks on 2 images: a batch size fixed in the file shows
DYNAMO_MIN_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes natively


@hookimpl
def tlplug_register_exporters(register):
    """Register the three built-in formats."""
    register("onnx", onnx)
    register("torchscript", torchscript)
    register("safetensors", safetensors)


def preprocessing(classifier: Classifier) -> dict[str, Any]:
    """What to feed an exported file, and what its outputs mean."""
    resolved = classifier.config["resolved"]
    data = resolved["data_config"]
    return {
        "input": "NCHW float32 RGB, resized and center-cropped to img_size, then normalized",
        "img_size": resolved["img_size"],
        "mean": list(data["mean"]),
        "std": list(data["std"]),
        "interpolation": data["interpolation"],
        "crop_pct": data["crop_pct"],
        "classes": list(classifier.classes),
        "output": classifier.outputs,
        "temperature": getattr(classifier.model, "temperature", 1.0),
        "backbone": classifier.config["recipe"]["backbone"],
        "tlplug_version": __version__,
    }


def metadata(classifier: Classifier) -> dict[str, str]:
    """:func:`preprocessing` as string metadata: strings as they are, the rest as JSON."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in preprocessing(classifier).items()
    }


def onnx(classifier: Classifier, out: Path, *, opset: int | None = None) -> Runner:
    """An ONNX model with a dynamic batch axis (input "images", output "logits"), run with
    onnxruntime; the preprocessing and classes are in its metadata_props."""
    import torch

    onnx_lib = _require_onnx()
    example = torch.zeros(EXAMPLE_BATCH, *_image_shape(classifier))
    names = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset is None or opset >= DYNAMO_MIN_OPSET:
            # The torch.export-based exporter: torch's default and maintained one (the
            # TorchScript-based one warns, since torch 2.9, that it will be removed). It
            # refuses, rather than silently fixes, a batch size it cannot keep dynamic.
            batch = {0: torch.export.Dim("batch", min=1)}
            program = torch.onnx.export(
                classifier.model,
                (example,),
                dynamo=True,
                dynamic_shapes=(batch,),
                external_data=False,
                verbose=False,
                **names,
            )
            written = program.model.opset_imports.get("")
            if opset is not None and written != opset:
                raise TlplugError(f"the ONNX exporter wrote opset {written}, not {opset}")
            program.model.metadata_props.update(metadata(classifier))
            program.save(out, external_data=False)
        else:
            # Below 18 it would convert its own opset down, which fails on common models
            # (resnets) and keeps 18: the TorchScript-based exporter writes those itself.
            torch.onnx.export(
                classifier.model,
                (example,),
                str(out),
                dynamo=False,
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
            model = onnx_lib.load(str(out))
            onnx_lib.helper.set_model_props(model, metadata(classifier))
            onnx_lib.save(model, str(out))

    def run(images: torch.Tensor) -> torch.Tensor:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"images": images.float().numpy()})
        return torch.from_numpy(logits)

    return run


onnx.suffix = ".onnx"


def torchscript(classifier: Classifier, out: Path) -> Runner:
    """A TorchScript trace, loaded with torch.jit.load; the preprocessing and classes are
    JSON in its extra file tlplug.json."""
    # Not frozen: freezing turns the weights into constants that no longer follow
    # .to(device) or .half(), for little gain on an image classifier.
    import torch

    example = torch.zeros(EXAMPLE_BATCH, *_image_shape(classifier))
    extra = {"tlplug.json": json.dumps(preprocessing(classifier), indent=2)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        traced = torch.jit.trace(classifier.model.eval(), example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files=extra)

    def run(images: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(out), map_location="cpu")
        with torch.no_grad():
            return loaded(images)

    return run


torchscript.suffix = ".pt"


def safetensors(classifier: Classifier, out: Path) -> Runner:
    """The weights as a safetensors file, keys backbone.* and head.* as in a run's
    model.safetensors, with the preprocessing and classes in its metadata."""
    import torch

    from tlplug.model.transfer import BACKBONE_PREFIX, HEAD_PREFIX
    from tlplug.rundir.weights import load_state, read_state_dict, save_atomic

    prefixes = {"backbone_prefix": BACKBONE_PREFIX, "head_prefix": HEAD_PREFIX}
    facts = {"format": "pt", **prefixes, **metadata(classifier)}  # a run's keys, and more
    facts["output"] = (  # the weights alone: the temperature is the reader's to apply
        "logits of the network these weights make; divided by temperature, their softmax "
        "gives the run's calibrated probabilities"
    )
    save_atomic(classifier.model.state_dict(), out, facts)

    def run(images: torch.Tensor) -> torch.Tensor:
        # A copy of the network with every tensor replaced from the file (strictly: a key
        # the file lacks is an error), so the check proves the file holds the weights.
        network = copy.deepcopy(classifier.model)
        load_state(network, read_state_dict(out))
        with torch.no_grad():
            return network.eval()(images)

    return run


# Not plain ".safetensors": the default file, RUN_DIR/model.safetensors, is the run's own.
safetensors.suffix = ".export.safetensors"


def _image_shape(classifier: Classifier) -> tuple[int, int, int]:
    size = classifier.config["resolved"]["img_size"]
    return (3, size, size)


def _require_onnx() -> Any:
    """The ``onnx`` module, once onnx, onnxscript and onnxruntime are known to import."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise TlplugError(
            f"the onnx format needs {' and '.join(missing)} (not installed); "
            "pip install 'tlplug[onnx]'"
        )
    return importlib.import_module("onnx")
