"""Built-in data sources: folder trees, CSV manifests, torchvision's data sets, Hugging
Face data sets (with the ``datasets`` package), tar shards and the synthetic set."""

from __future__ import annotations

from pathlib import Path

from tlplug import hookimpl


@hookimpl
def tlplug_register_data_sources(register):
    register("folder", folder)
    register("csv", manifest)
    register("synthetic", synthetic)
    register("torchvision", torchvision_set)
    register("hf", hugging_face_set)
    register("shards", shards)


def folder(location: str, seed: int, val_split: float | None):
    """Class folders: DIR/train/<class>/ + DIR/val/<class>/ [+ DIR/test/], or DIR/<class>/."""
    from tlplug.data.folders import read_folder

    return read_folder(Path(location), val_split, seed)


def manifest(location: str, seed: int, val_split: float | None):
    """A CSV manifest of path,label[,split] rows, paths relative to the CSV."""
    from tlplug.data.manifest import read_manifest

    return read_manifest(Path(location), val_split, seed)


def synthetic(location: str, seed: int, val_split: float | None):
    """Drawn patterns in four classes, made on the fly (the default when --data is not given)."""
    from tlplug.data.synthetic import synthetic_splits

    return synthetic_splits(seed=seed)


def torchvision_set(location: str, seed: int, val_split: float | None, *, download: bool = False):
    """A torchvision data set from its files: torchvision:NAME:ROOT (CIFAR10, MNIST, DTD,
    Flowers102, ...), its own splits; download=true fetches it into ROOT."""
    from tlplug.data.torchvision_sets import read_torchvision

    return read_torchvision(location, val_split, seed, download)


def hugging_face_set(
    location: str,
    seed: int,
    val_split: float | None,
    *,
    image: str = "",
    label: str = "",
    download: bool = False,
):
    """A Hugging Face data set: hf:DIR (save_to_disk), hf:FILES.parquet or hf:NAME (in the
    local cache); image and label columns found by type unless named; its own splits."""
    from tlplug.data.hf_sets import read_hf

    return read_hf(location, val_split, seed, image, label, download)


def shards(location: str, seed: int, val_split: float | None):
    """Tar shards (WebDataset layout: KEY.jpg + KEY.cls): 'DIR/train-{0000..0099}.tar', a
    .tar file, or a folder of SPLIT-NNNNN.tar shards as tlplug shard writes them."""
    from tlplug.data.shards import read_shards

    return read_shards(location, val_split, seed)
