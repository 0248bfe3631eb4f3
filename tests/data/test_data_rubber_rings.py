"""Rubber Rings: folder classes, mask naming, threshold, stratified split, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raybench.data import DatasetFormatError, build_dataset
from raybench.data.rubber_rings import CLASS_NAMES
from raybench.data.splits import stratified_split
from tests.helpers.data_fixtures import write_image, write_mask


def test_stratified_split_reproduces_paper_counts() -> None:
    sizes = [30, 25, 20, 22, 18, 24, 20, 19, 19]  # 197 images over the 9 classes
    groups = {c: [f"{c}/{i:03d}.png" for i in range(n)] for c, n in zip(CLASS_NAMES, sizes, strict=True)}
    train, val = stratified_split(groups, 0.2, 42)
    assert (len(train), len(val)) == (158, 39)
    for c, n in zip(CLASS_NAMES, sizes, strict=True):
        k = sum(1 for key in val if key.startswith(c + "/"))
        assert k in (math.floor(0.2 * n), math.ceil(0.2 * n))
    assert stratified_split(groups, 0.2, 42) == (train, val)


def _ring_root(tmp_path, naming: str = "mvtec"):
    """Two images per class; masks: value 200 in a square, 30 (below threshold) next to it."""
    for cls in CLASS_NAMES:
        part, defect = cls.split("_", 1)
        for k in range(2):
            write_image(tmp_path / part / "images" / defect / f"{k:03d}.png", 24, 16)
            mask = np.zeros((16, 24), np.uint8)
            mask[2:6, 3:9] = 200
            mask[10:12, 10:12] = 30
            mask[10:12, 14:16] = 31
            stem = f"{k:03d}_mask" if naming == "mvtec" else f"{k:03d}"
            write_mask(tmp_path / part / "ground_truth" / defect / f"{stem}.png", mask)
    return tmp_path


@pytest.mark.parametrize("naming", ["mvtec", "same_stem"])
def test_classes_from_folders_and_threshold(tmp_path, naming: str) -> None:
    root = _ring_root(tmp_path, naming)
    counts = {}
    for split in ("train", "val"):
        ds = build_dataset("rubber_rings", root, split)
        assert ds.num_classes == 9 and ds.class_names == list(CLASS_NAMES)
        for i in range(len(ds)):
            image, target = ds[i]
            sem = target["sem_seg"]
            info = ds.image_info(i)
            cls = CLASS_NAMES.index(f"{info.path.parts[-4]}_{info.path.parts[-2]}") + 1
            assert ds.image_classes(i) == [cls]
            assert sem.shape == (16, 24) and set(sem.unique().tolist()) == {0, cls}
            assert int((sem == cls).sum()) == 4 * 6 + 2 * 2  # value 31 counts, 30 does not
            assert sem[10, 10] == 0 and sem[10, 14] == cls
        counts[split] = len(ds)
    assert counts == {"train": 14, "val": 4}  # 18 images: round(3.6) = 4 val


def test_good_folder_skipped_unless_asked(tmp_path) -> None:
    root = _ring_root(tmp_path)
    write_image(root / "Large" / "images" / "good" / "000.png", 24, 16)
    n = sum(len(build_dataset("rubber_rings", root, s)) for s in ("train", "val"))
    assert n == 18
    both = [build_dataset("rubber_rings", root, s, include_good=True) for s in ("train", "val")]
    assert sum(len(d) for d in both) == 19
    good = [(d, i) for d in both for i in range(len(d)) if d.image_info(i).path.parent.name == "good"]
    ((d, i),) = good
    assert d[i][1]["sem_seg"].sum() == 0 and d.image_classes(i) == []


def test_unknown_defect_folder_is_noted(tmp_path) -> None:
    root = _ring_root(tmp_path)
    write_image(root / "Small" / "images" / "dust" / "000.png", 24, 16)
    with pytest.warns(UserWarning, match=r"1 x unknown defect folders .*Small/images/dust"):
        ds = build_dataset("rubber_rings", root, "train")
    assert ds.stats["unknown_defect_folders"] == 1


def test_missing_mask_names_image_and_expected_paths(tmp_path) -> None:
    root = _ring_root(tmp_path)
    (root / "Side" / "ground_truth" / "holes" / "001_mask.png").unlink()
    with pytest.raises(
        DatasetFormatError, match=r"no mask for .*Side/images/holes/001.png; expected .*001_mask.png"
    ):
        build_dataset("rubber_rings", root, "train")


def test_mask_size_different_from_image(tmp_path) -> None:
    root = _ring_root(tmp_path)
    write_mask(root / "Large" / "ground_truth" / "bubble" / "000_mask.png", np.zeros((10, 10), np.uint8))
    # Checked from the headers while indexing (was: on load), whichever split holds the image.
    with pytest.raises(DatasetFormatError, match=r"000_mask.png: mask is 10x10 but image 000.png is 24x16"):
        for split in ("train", "val"):
            build_dataset("rubber_rings", root, split)


def test_no_part_folders(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")  # a root that is not empty
    with pytest.raises(DatasetFormatError, match=r"none of Large/images/, Small/images/, Side/images/ found"):
        build_dataset("rubber_rings", tmp_path, "train")
