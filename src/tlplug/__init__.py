"""tlplug: transfer learning for image classifiers, built from pluggable strategies.

The public face: :class:`Engine` to train and load, :data:`hookimpl` to write plugins,
:class:`Recipe` for the resolved settings of a run, what each plugin kind hands back
(:class:`Stage`, :class:`Backbone`, :class:`Splits`, :class:`Adapter`; :class:`Batch` for
regularizers; :func:`augmentation` to mark an augmentation), :class:`Kind` and
:data:`hookspec` for a kind of strategy of a plugin's own, and the errors a user can act
on, and helpers plugins share (:func:`close_matches`, :func:`groups_by_prefix`). Names
that need torch are imported on first use, so a plugin importing only
``hookimpl`` stays light.
"""

from tlplug.errors import (
    DataError,
    OptionError,
    TlplugError,
    UnknownNameError,
    WeightsError,
    close_matches,
)
from tlplug.plugins.hookspecs import HOOK_API, hookimpl, hookspec
from tlplug.plugins.kinds import Kind
from tlplug.plugins.marks import augmentation
from tlplug.recipe import Recipe
from tlplug.train.stages import Stage
from tlplug.version import __version__

__all__ = [
    "HOOK_API",
    "Adapter",
    "Backbone",
    "BackboneProvider",
    "Batch",
    "Classifier",
    "DataConfig",
    "DataError",
    "DecodeError",
    "Engine",
    "EvalReport",
    "FitResult",
    "Kind",
    "LayerGroup",
    "OptionError",
    "Recipe",
    "Skipped",
    "Splits",
    "Stage",
    "TlplugError",
    "TransferModel",
    "UnknownNameError",
    "WeightsError",
    "__version__",
    "augmentation",
    "close_matches",
    "evaluate_run",
    "groups_by_prefix",
    "hookimpl",
    "hookspec",
]

# Names that pull in torch (or the data stack) on first use, so that a plugin importing
# only ``hookimpl`` stays light.
_LAZY = {
    "Backbone": "tlplug.model.backbone",
    "BackboneProvider": "tlplug.model.backbone",
    "DataConfig": "tlplug.model.backbone",
    "groups_by_prefix": "tlplug.model.backbone",
    "LayerGroup": "tlplug.model.backbone",
    "Engine": "tlplug.engine",
    "EvalReport": "tlplug.ship.evaluate",
    "evaluate_run": "tlplug.ship.evaluate",
    "FitResult": "tlplug.engine",
    "Classifier": "tlplug.ship.predict",
    "Adapter": "tlplug.model.adapters",
    "Batch": "tlplug.train.loss",
    "TransferModel": "tlplug.model.transfer",
    "Splits": "tlplug.data.sources",
    "Skipped": "tlplug.data.sources",
    "DecodeError": "tlplug.data.sources",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlplug' has no attribute {name!r}")
