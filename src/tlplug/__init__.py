"""tlplug: transfer learning for image classifiers, built from pluggable strategies.

The public face: :class:`Engine` to train and load, :data:`hookimpl` to write plugins,
:class:`Recipe` for the resolved settings of a run, :class:`Stage` and :class:`Backbone`
for schedule and provider plugins, and the errors a user can act on.
"""

from tlplug.backbone import Backbone, BackboneProvider, DataConfig, LayerGroup
from tlplug.errors import DataError, OptionError, TlplugError, UnknownNameError, WeightsError
from tlplug.hookspecs import hookimpl
from tlplug.recipe import Recipe
from tlplug.schedule import Stage

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneProvider",
    "Classifier",
    "DataConfig",
    "DataError",
    "Engine",
    "FitResult",
    "LayerGroup",
    "OptionError",
    "Recipe",
    "Stage",
    "TlplugError",
    "UnknownNameError",
    "WeightsError",
    "__version__",
    "hookimpl",
]


def __getattr__(name: str):
    # The engine pulls in torch and the data stack; plugins that only need hookimpl do not.
    if name in ("Engine", "FitResult"):
        from tlplug import engine

        return getattr(engine, name)
    if name == "Classifier":
        from tlplug.predict import Classifier

        return Classifier
    raise AttributeError(f"module 'tlplug' has no attribute {name!r}")
