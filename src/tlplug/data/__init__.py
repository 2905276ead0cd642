"""Where images come from (folders, the synthetic set) and how they become tensors.

The data layer knows no plugins: :func:`tlplug.plugins.resolve.load_data` resolves the
data-source plugin a ``--data`` value names and calls it."""

from tlplug.data.sources import ImageList, Splits

__all__ = ["ImageList", "Splits"]
