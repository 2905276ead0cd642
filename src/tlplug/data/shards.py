"""Tar shards in the WebDataset layout, read and written.

A shard is a tar file whose members come in samples: the members sharing a key (the name
up to the first dot of its last part) are one sample, ``KEY.jpg`` (or another image
suffix) its image and ``KEY.cls`` its label index as text. ``classes.txt`` beside the
shards names the classes, one per line. ``tlplug shard`` writes such shards from any data
source (``SPLIT-NNNNN.tar``); the webdataset library reads them as they are.

tlplug reads local shards by index: each shard's member offsets are listed once (no
extraction), and an image is read by seeking to it. So a sharded set is a list of images
like any other: shuffled as a whole every epoch, split over loader workers and torchrun's
processes by the sampler (each sample once an epoch), resumed exactly, decoded once and
cached. A sample without an image or a label is left out and listed; an image that does not
decode is replaced and counted, as for files.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from PIL import Image

from tlplug.data.folders import IMAGE_SUFFIXES
from tlplug.data.images import DECODE_ERRORS, cannot_decode, open_rgb
from tlplug.data.indexed import splits_of
from tlplug.data.sources import ImageList, Skipped, Splits
from tlplug.errors import DataError

CLASSES_FILE = "classes.txt"
SPLIT_PREFIXES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
FORM = "--data 'DIR/train-{0000..0009}.tar', a .tar file, or a folder of SPLIT-NNNNN.tar shards"


@attrs.frozen
class ShardImages:
    """Samples in tar shards: ``members[i]`` is (shard, offset, size, name) of image i."""

    shards: tuple[str, ...]
    members: tuple[tuple[int, int, int, str], ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.members)

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as RGB, read from its shard; DecodeError when it cannot be."""
        shard, offset, size, name = self.members[index]
        try:
            with open(self.shards[shard], "rb") as file:
                file.seek(offset)
                data = file.read(size)
            return open_rgb(io.BytesIO(data))
        except DECODE_ERRORS as exc:
            raise cannot_decode(f"{self.shards[shard]}:{name}", exc) from None

    def subset(self, positions: Sequence[int]) -> ShardImages:
        """The samples at ``positions`` of this list."""
        return ShardImages(
            self.shards,
            tuple(self.members[p] for p in positions),
            tuple(self.labels[p] for p in positions),
        )


def expand(pattern: str) -> list[str]:
    """``pattern`` with each ``{A..B}`` range expanded (zero padding kept), in order."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    low, high = match.group(1), match.group(2)
    width = len(low) if low.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        name
        for number in range(int(low), int(high) + 1)
        for name in expand(f"{head}{number:0{width}d}{tail}")
    ]


def read_shards(location: str, val_split: float | None, seed: int) -> Splits:
    """The splits of the shards ``location`` names: a folder of SPLIT-NNNNN.tar shards, or
    a pattern or file of training shards (validation held out by ``val_split``)."""
    root = Path(location)
    if root.is_dir():
        found = {part: _split_files(root, names) for part, names in SPLIT_PREFIXES.items()}
        if not found["train"]:
            raise DataError(f"{root} has no train-*.tar shards; {FORM}")
    else:
        files = expand(location)
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"shard {missing[0]}{more} does not exist; {FORM}")
        found, root = {"train": files, "val": [], "test": []}, Path(files[0]).parent
    skipped: list[Skipped] = []
    lists = {part: _index(files, skipped) if files else None for part, files in found.items()}
    top = max(max(images.labels, default=-1) for images in lists.values() if images is not None)
    classes = _classes(root, top)
    info = {
        # the same shards from any working directory (a pattern's folder made absolute)
        "location": str(Path(location).parent.resolve() / Path(location).name),
        "shards": {part: len(files) for part, files in found.items() if files},
    }
    splits = splits_of(classes, lists["train"], lists["val"], lists["test"], val_split, seed, info)
    return attrs.evolve(splits, skipped=tuple(skipped))


def _split_files(root: Path, names: Sequence[str]) -> list[str]:
    return sorted(str(p) for name in names for p in root.glob(f"{name}-*.tar"))


def _index(files: Sequence[str], skipped: list[Skipped]) -> ShardImages:
    """The samples of ``files``: each image member's place and its label."""
    members, labels = [], []
    for shard, file in enumerate(files):
        for key, image, label, problem in _samples(file):
            if problem:
                skipped.append(Skipped(f"{file}:{key}", problem))
                continue
            members.append((shard, image.offset_data, image.size, image.name))
            labels.append(label)
    return ShardImages(tuple(files), tuple(members), tuple(labels))


def _samples(file: str) -> Iterator[tuple[str, tarfile.TarInfo | None, int, str]]:
    """(key, image member, label, problem) of each sample of shard ``file``."""
    try:
        with tarfile.open(file) as tar:
            grouped: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                key, _, suffix = name.partition(".")
                grouped.setdefault(f"{folder}/{key}" if folder else key, {})[suffix] = member
            for key, parts in grouped.items():
                image = next((parts[s] for s in parts if f".{s.lower()}" in IMAGE_SUFFIXES), None)
                if image is None:
                    yield key, None, -1, "no image member"
                    continue
                if "cls" not in parts:
                    yield key, None, -1, "no .cls label member"
                    continue
                text = tar.extractfile(parts["cls"]).read().decode(errors="replace").strip()
                if not text.isdigit():
                    yield key, None, -1, f"label '{text[:20]}' is not a class index"
                    continue
                yield key, image, int(text), ""
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"shard {file} cannot be read as a tar file ({exc})") from None


def _classes(root: Path, top: int) -> tuple[str, ...]:
    """The class names from classes.txt beside the shards, else the label indices."""
    listed = root / CLASSES_FILE
    if listed.is_file():
        names = tuple(line.strip() for line in listed.read_text().splitlines() if line.strip())
        if len(names) <= top:
            raise DataError(f"{listed} names {len(names)} classes but a label is {top}")
        return names
    return tuple(str(i) for i in range(top + 1))


def write_shards(splits: Splits, out: Path, per_shard: int) -> dict[str, int]:
    """Write ``splits`` as SPLIT-NNNNN.tar shards of ``per_shard`` samples each, and
    classes.txt, into ``out``; return the shards written per split. An image file is stored
    as it is; an image that is not a file (an array, a data set's item) as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, images in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if images is None or not len(images):
            continue
        count = 0
        for start in range(0, len(images), per_shard):
            path = out / f"{part}-{count:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for index in range(start, min(len(images), start + per_shard)):
                    suffix, data = _encoded(images, index)
                    key = f"{index:08d}"
                    _add(tar, f"{key}{suffix}", data)
                    _add(tar, f"{key}.cls", str(images.labels[index]).encode())
            count += 1
        written[part] = count
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in splits.classes))
    return written


def _encoded(images: ImageList, index: int) -> tuple[str, bytes]:
    paths = getattr(images, "paths", None)
    if paths is not None and Path(paths[index]).suffix.lower() in IMAGE_SUFFIXES:
        return Path(paths[index]).suffix.lower(), Path(paths[index]).read_bytes()
    buffer = io.BytesIO()
    images.load(index).save(buffer, format="PNG")
    return ".png", buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))
