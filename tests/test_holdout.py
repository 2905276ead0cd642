"""Which training images score a search's candidates: one seeded, stratified fifth, or the
folds of a cross-validation on few images."""

from __future__ import annotations

from collections import Counter

import pytest

from tlplug.data.folders import stratified_split
from tlplug.errors import OptionError
from tlplug.search.holdout import assign_folds, choose_folds


def test_auto_cross_validates_when_a_fifth_is_too_few_to_rank_on():
    assert choose_folds("auto", 60) == 5  # a fifth: 12 images
    assert choose_folds("auto", 199) == 5
    assert choose_folds("auto", 200) == 1  # a fifth: 40 images
    assert choose_folds("AUTO", 5000) == 1
    assert (choose_folds(1, 60), choose_folds("3", 60), choose_folds(9, 60)) == (1, 3, 5)
    for bad in ("0", "-2", "many"):
        with pytest.raises(OptionError, match="--folds .* 1 to 5, or auto"):
            choose_folds(bad, 60)


def test_folds_hold_out_each_image_once_stratified_and_even():
    labels = [0] * 12 + [1] * 13 + [2] * 2 + [3] * 1 + [4] * 7
    found = assign_folds(labels, 5, seed=0)
    assert found[labels.index(3)] is None  # a class of one image trains in every fold
    assert all(f is not None for f, label in zip(found, labels, strict=True) if label != 3)
    sizes = Counter(f for f in found if f is not None)
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 1
    for label, count in Counter(labels).items():  # each fold holds out its share of a class
        per_fold = Counter(f for f, lab in zip(found, labels, strict=True) if lab == label)
        if count > 1:
            assert max(per_fold.values()) <= -(-count // 5) and max(per_fold.values()) < count
    assert assign_folds(labels, 5, seed=0) == found
    assert assign_folds(labels, 5, seed=1) != found


def test_one_fold_holds_out_the_fifth_a_val_split_would():
    labels = [0] * 12 + [1] * 9 + [2] * 1
    by_class = {name: [i for i, lab in enumerate(labels) if lab == int(name)] for name in "012"}
    _, held = stratified_split(by_class, ("0", "1", "2"), 0.2, 7)
    found = assign_folds(labels, 1, seed=7)
    assert {i for i, f in enumerate(found) if f == 0} == {i for i, _ in held}
    assert set(found) == {0, None}


def test_a_fold_that_holds_nothing_out_is_not_trained(tmp_path):
    from PIL import Image

    from tlplug.data.folders import FileImages
    from tlplug.data.sources import Splits
    from tlplug.search.holdout import write_folds

    paths = []
    for name in ("a", "b"):
        for index in range(2):
            path = tmp_path / f"{name}{index}.png"
            Image.new("RGB", (8, 8)).save(path)
            paths.append(path)
    train = FileImages(tuple(paths), (0, 0, 1, 1))
    splits = Splits(("a", "b"), train, train, {})
    manifests, record = write_folds(splits, tmp_path, 5, seed=0)
    assert len(manifests) == 4  # 4 images dealt round 5 folds: one fold holds none out
    held = [row[2] for row in record[1:]]
    assert len(set(held)) == len(held) == 4 and all(h.startswith("fold") for h in held)
