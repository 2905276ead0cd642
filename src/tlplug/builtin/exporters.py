"""Built-in export formats for ``tlplug export``: onnx, torchscript, safetensors."""

from __future__ import annotations

from tlplug import hookimpl


@hookimpl
def tlplug_register_exporters(register):
    pass
