"""GDXray Castings: ground-truth rows, series split, grayscale, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from raybench.data import DatasetFormatError, build_dataset
from raybench.data.gdxray import parse_ground_truth
from tests.helpers.data_fixtures import write_image

W, H = 40, 30
# Missing default val series (3, 32, ..., 87) are expected in these tiny trees.
pytestmark = pytest.mark.filterwarnings("ignore:gdxray.*has no such folder:UserWarning")


def _series(root, s: int, n: int, rows: list[str] | None):
    folder = root / "Castings" / f"C{s:04d}"
    for k in range(1, n + 1):
        write_image(folder / f"C{s:04d}_{k:04d}.png", W, H, gray=True)
    if rows is not None:
        (folder / "ground_truth.txt").write_text("\n".join(rows) + "\n")
    return folder


def test_rows_with_floats_and_swapped_corners(tmp_path) -> None:
    path = tmp_path / "ground_truth.txt"
    path.write_text(
        "1 10 20 5 15\n"
        "   2.0000000e+00   2.5000000e+01   1.2500000e+01   1.8000000e+01   4.0000000e+00\n"
        "\n"
        "2 3.5 7.25 9 1\n"
    )
    rows = parse_ground_truth(path)
    assert rows == [
        (1, [10.0, 5.0, 20.0, 15.0], 1),
        (2, [12.5, 4.0, 25.0, 18.0], 2),  # x and y swapped -> min/max
        (2, [3.5, 1.0, 7.25, 9.0], 4),  # y swapped
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1 10 20 5", r"line 1: expected 5 numbers 'image_index x1 x2 y1 y2', got '1 10 20 5'"),
        ("1 10 20 5 x", r"line 1: expected 5 numbers"),
        ("1.5 10 20 5 6", r"line 1: image_index '1.5' is not a positive integer"),
        ("0 10 20 5 6", r"line 1: image_index '0' is not a positive integer"),
    ],
)
def test_malformed_rows(tmp_path, row: str, message: str) -> None:
    path = tmp_path / "ground_truth.txt"
    path.write_text(row + "\n")
    with pytest.raises(DatasetFormatError, match=message):
        parse_ground_truth(path)


def test_series_split_boxes_and_grayscale(tmp_path) -> None:
    _series(tmp_path, 1, 3, ["1 10 20 15 5", "3 1 2 3 4"])  # image 2 has no box
    _series(tmp_path, 3, 2, ["2 5 9 5 9"])
    _series(tmp_path, 55, 1, ["1 1 5 1 5"])
    _series(tmp_path, 56, 1, None)  # no ground_truth.txt at all
    with pytest.warns(UserWarning, match=r"val_series lists series 87 \(C0087\)"):
        train = build_dataset("gdxray", tmp_path, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = build_dataset("gdxray", tmp_path, "val")
    files = lambda ds: [ds.image_info(i).file_name for i in range(len(ds))]  # noqa: E731
    # Default empty_images {train: drop, val: drop} (Table 1 counts images with boxes):
    # C0001_0002 (no row) and C0056_0001 (series without ground_truth.txt) are dropped.
    assert files(train) == ["C0001_0001.png", "C0001_0003.png"]
    assert train.stats["empty_images_dropped"] == 2
    assert files(val) == ["C0003_0002.png"]  # series 55 excluded everywhere; C0003_0001 has no box
    assert train.task == "detection" and train.num_classes == 1 and train.class_names == ["defect"]
    image, target = train[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert target["boxes"].tolist() == [[10.0, 5.0, 20.0, 15.0]] and target["labels"].tolist() == [1]
    assert target["image_id"] == 10001
    kept = build_dataset(
        "gdxray", tmp_path / "Castings", "train", empty_images={"train": "keep"}
    )  # root may be Castings/
    assert files(kept) == ["C0001_0001.png", "C0001_0002.png", "C0001_0003.png", "C0056_0001.png"]
    assert kept.load_target(1)["boxes"].shape == (0, 4) and kept.image_classes(1) == []
    assert kept.stats["empty_images_kept"] == 2


def test_split_options_override(tmp_path) -> None:
    _series(tmp_path, 1, 1, ["1 1 5 1 5"])
    _series(tmp_path, 2, 1, ["1 1 5 1 5"])
    _series(tmp_path, 55, 1, ["1 1 5 1 5"])
    val = build_dataset("gdxray", tmp_path, "val", val_series=["C0002"], exclude_series=[])
    train = build_dataset("gdxray", tmp_path, "train", val_series=[2], exclude_series=[])
    assert [val.image_info(i).file_name for i in range(len(val))] == ["C0002_0001.png"]
    assert len(train) == 2
    with pytest.warns(
        UserWarning, match=r"exclude_series lists series 9 \(C0009\) but .* has no such folder"
    ):
        build_dataset("gdxray", tmp_path, "train", val_series=[2], exclude_series=[9])
    with pytest.raises(ValueError, match=r"val_series: 'x3' is not a series number"):
        build_dataset("gdxray", tmp_path, "train", val_series=["x3"])


def test_row_for_missing_image(tmp_path) -> None:
    folder = _series(tmp_path, 1, 2, ["1 1 5 1 5", "7 1 5 1 5"])
    with pytest.raises(
        DatasetFormatError,
        match=rf"ground_truth.txt line 2: image_index 7 refers to .*{folder.name}_0007.png",
    ):
        build_dataset("gdxray", tmp_path, "train")


def test_boxes_outside_image_clipped_or_dropped(tmp_path) -> None:
    _series(tmp_path, 1, 1, ["1 30 60 20 40", "1 50 60 1 5"])
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("gdxray", tmp_path, "train")
    text = " ".join(str(w.message) for w in record)
    assert "1 x boxes clipped" in text and "1 x degenerate boxes dropped" in text
    assert ds.load_target(0)["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0]]


def test_no_series_folders(tmp_path) -> None:
    (tmp_path / "Castings" / "readme").mkdir(parents=True)  # a root that is not empty
    with pytest.raises(DatasetFormatError, match=r"no series folders \(C0001, C0002, ...\) found"):
        build_dataset("gdxray", tmp_path, "train")
