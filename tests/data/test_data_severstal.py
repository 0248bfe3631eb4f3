"""Severstal: RLE decode/encode, both CSV variants, split rule, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raybench.data import DatasetFormatError, build_dataset
from raybench.data.severstal import rle_decode, rle_encode
from raybench.data.splits import n_val_ceil, random_split
from tests.helpers.data_fixtures import write_image

H, W = 8, 50  # tiny stand-in for 256 x 1600


def test_rle_decode_hand_written_mask_with_wrap_to_next_column() -> None:
    # 4 rows x 3 cols, column-major 1-indexed: pixel 3 = (row 2, col 0); the run of 4
    # covers rows 2,3 of column 0 and wraps to rows 0,1 of column 1; pixel 11 = (row 2, col 2).
    mask = rle_decode("3 4 11 1", shape=(4, 3))
    expected = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert rle_encode(expected) == "3 4 11 1"


def test_rle_decode_default_shape_is_severstal() -> None:
    mask = rle_decode("1 256 409600 1")
    assert mask.shape == (256, 1600)
    assert mask[:, 0].all() and mask.sum() == 257 and mask[255, 1599] == 1


def test_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((32, 200)) > 0.7).astype(np.uint8)
        np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)
    empty = np.zeros((4, 4), np.uint8)
    assert rle_encode(empty) == "" and rle_decode("", (4, 4)).sum() == 0


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 3 7", "odd number of tokens (3)"),
        ("7 10", "past the image end (12 pixels)"),
        ("1 5 3 2", "RLE runs overlap"),
        ("1 x", "RLE token 'x' is not an integer"),
        ("0 2", "start 0 < 1"),
        ("2 0", "run length 0 < 1"),
    ],
)
def test_rle_errors(rle: str, message: str) -> None:
    with pytest.raises(DatasetFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rle_decode(rle, shape=(4, 3))


def _masks() -> dict[str, dict[int, np.ndarray]]:
    a = np.zeros((H, W), np.uint8)
    a[2:5, 10:30] = 1
    b = np.zeros((H, W), np.uint8)
    b[0:3, 40:45] = 1
    c = np.zeros((H, W), np.uint8)
    c[6:8, 0:3] = 1
    return {"aaa.jpg": {1: a, 3: b}, "bbb.jpg": {4: c}, "ccc.jpg": {}}


def _write_root(root, variant: str):
    masks = _masks()
    for name in masks:
        write_image(root / "train_images" / name, W, H)
    lines = []
    if variant == "current":
        lines.append("ImageId,ClassId,EncodedPixels")
        for name, per in masks.items():
            lines += [f"{name},{c},{rle_encode(m)}" for c, m in per.items()]
    else:
        lines.append("ImageId_ClassId,EncodedPixels")
        for name, per in masks.items():
            lines += [f"{name}_{c},{rle_encode(per[c]) if c in per else ''}" for c in (1, 2, 3, 4)]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return masks


@pytest.mark.parametrize("variant", ["current", "old"])
def test_both_csv_variants_give_the_same_targets(tmp_path, variant: str) -> None:
    masks = _write_root(tmp_path, variant)
    seen = {}
    for split in ("train", "val"):
        ds = build_dataset("severstal", tmp_path, split, only_defective=False, val_fraction=0.34)
        assert ds.csv_variant == variant
        for i in range(len(ds)):
            image, target = ds[i]
            name = ds.image_info(i).file_name
            assert image.shape == (3, H, W) and image.dtype == torch.uint8
            expected = np.zeros((H, W), np.int64)
            for c, m in masks[name].items():
                expected[m > 0] = c
            np.testing.assert_array_equal(target["sem_seg"].numpy(), expected)
            assert ds.image_classes(i) == sorted(masks[name])
            seen[name] = split
    assert sorted(seen) == ["aaa.jpg", "bbb.jpg", "ccc.jpg"]  # all 3 (defect-free one too)
    # only_defective (the default) drops ccc.jpg
    n = sum(len(build_dataset("severstal", tmp_path, s, val_fraction=0.5)) for s in ("train", "val"))
    assert n == 2


def test_split_rule_reproduces_paper_counts() -> None:
    assert n_val_ceil(6666, 0.2) == 1334  # ceil(1333.2)
    assert n_val_ceil(15, 0.2) == 3  # no float noise (0.2 * 15 = 3.0000000000000004)
    keys = [f"{i:09x}.jpg" for i in range(6666)]
    train, val = random_split(keys, 0.2, 42)
    assert (len(train), len(val)) == (5332, 1334) and not train & val
    assert random_split(list(reversed(keys)), 0.2, 42) == (train, val)  # order-independent
    assert random_split(keys, 0.2, 7)[1] != val


def test_overlap_rule(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    m1, m2 = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    m1[0:4, 0:10], m2[2:6, 5:15] = 1, 1
    (tmp_path / "train.csv").write_text(
        f"ImageId,ClassId,EncodedPixels\nx.jpg,2,{rle_encode(m2)}\nx.jpg,1,{rle_encode(m1)}\n"
    )
    last = build_dataset("severstal", tmp_path, "train", val_fraction=0.0)[0][1]["sem_seg"]
    assert last[3, 7] == 2 and last[0, 0] == 1 and last[5, 14] == 2  # higher ClassId wins
    ign = build_dataset("severstal", tmp_path, "train", val_fraction=0.0, overlap="ignore")[0][1]["sem_seg"]
    assert ign[3, 7] == 255 and ign[0, 0] == 1 and ign[5, 14] == 2


def test_csv_missing_columns(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text("ImageId,EncodedPixels\nx.jpg,1 3\n")
    with pytest.raises(DatasetFormatError, match=r"train.csv: missing column\(s\) ClassId; expected header"):
        build_dataset("severstal", tmp_path, "train")


def test_unknown_class_id(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 3\nx.jpg,5,7 2\n")
    with pytest.raises(
        DatasetFormatError, match=r"train.csv line 3: ClassId '5' for image 'x.jpg' is not in 1..4"
    ):
        build_dataset("severstal", tmp_path, "train")


def test_bad_rle_in_csv_names_file_line_and_image(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,3,1 3 7\n")
    with pytest.raises(
        DatasetFormatError, match=r"train.csv line 2 \(image x.jpg, class 3\): RLE has an odd number"
    ):
        build_dataset("severstal", tmp_path, "train", val_fraction=0.0)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,3,1 3 2 1\n")
    with pytest.raises(DatasetFormatError, match="line 2 .*RLE runs overlap"):
        build_dataset("severstal", tmp_path, "train", val_fraction=0.0)


def test_run_past_image_end_is_reported_when_indexing(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\nx.jpg,1,{H * W - 2} 5\n")
    # Was an error on load (at the first evaluation, hours in); now the index refuses it.
    with pytest.raises(
        DatasetFormatError, match=r"line 2 \(image x.jpg, class 1, image 50x8\).*past the image end \(400"
    ):
        build_dataset("severstal", tmp_path, "train", val_fraction=0.0)


def test_listed_but_missing_image_is_skipped_with_warning(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 3\ngone.jpg,2,1 3\n")
    with pytest.warns(UserWarning, match=r"1 x missing images .*gone.jpg"):
        ds = build_dataset("severstal", tmp_path, "train", val_fraction=0.0)
    assert len(ds) == 1 and ds.stats["missing_images"] == 1


def test_empty_split_is_an_error(tmp_path) -> None:
    write_image(tmp_path / "train_images" / "x.jpg", W, H)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 3\n")
    with pytest.raises(DatasetFormatError, match=r"severstal: split 'val' under .* is empty \(0 images\)"):
        build_dataset("severstal", tmp_path, "val", val_fraction=0.0)
