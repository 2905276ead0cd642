"""Where images come from (folders, the synthetic set) and how they become tensors."""

from tlplug.data.sources import ImageList, Splits, load_data

__all__ = ["ImageList", "Splits", "load_data"]
