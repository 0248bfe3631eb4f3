"""Bad input never passes silently (issue 19): one row per case, on a corrupted synthetic copy.

Every row: the format, how the synthetic dataset is corrupted, which split / options are
built, the error type and the fragments its message must contain (the file, line or key).
Each row also runs ``data check`` (the fatal entry must say the same) and asserts that
neither the build nor the check writes anything into the dataset folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from raybench.data import DatasetFormatError, DatasetOptionError, build_dataset, dataset_class
from raybench.data.check import check_dataset_files
from raybench.data.cli import add_data_commands
from raybench.data.errors import DatasetDataOptionError, DatasetRootError
from raybench.data.synth import MARKER, synthesize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@dataclass
class Case:
    id: str
    fmt: str
    corrupt: Callable[[Path], Any] | None
    fragments: list[str]
    error: type[Exception] = DatasetFormatError
    split: str = "train"
    options: dict[str, Any] = field(default_factory=dict)
    option: str | None = None  # the .option the error must name
    synth: dict[str, Any] = field(default_factory=dict)


def _json(path: Path, edit: Callable[[dict], Any]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _csv_rows(root: Path) -> list[str]:
    return (root / "train.csv").read_text().splitlines()


def _set_first_rle(root: Path, rle: str) -> None:
    lines = _csv_rows(root)
    image, cls, _ = lines[1].split(",")
    lines[1] = f"{image},{cls},{rle}"
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def _split_files(root: Path, train: str, val: str) -> None:
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text(train)
    (root / "splits" / "val.txt").write_text(val)


def _to_jpeg(png: Path) -> Path:
    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("L").save(jpg, quality=90)
    png.unlink()
    return jpg


def _coco_train(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    return lambda root: _json(root / "annotations" / "instances_train.json", edit)


def _first_annotated(d: dict) -> dict:
    return d["annotations"][0]


def _image_in_both_splits(root: Path) -> None:
    for p in (root / "images" / "val").iterdir():
        shutil.copy(p, root / "images" / "train" / p.name)
    train = json.loads((root / "annotations" / "instances_train.json").read_text())
    _json(
        root / "annotations" / "instances_val.json",
        lambda d: d["images"].append({**train["images"][1], "id": 999}),
    )


def _severstal_duplicate(root: Path) -> None:
    lines = _csv_rows(root)
    image, cls, rle = lines[1].split(",")
    first = int(rle.split()[0])
    lines.append(f"{image},{cls},{first} 1")  # same image and class, another mask
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def _severstal_old_duplicate(root: Path) -> None:
    lines = _csv_rows(root)
    key, rle = lines[1].split(",")
    lines.append(f"{key},{'' if rle else '1 2'}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def _gdxray_row(row: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        gt = root / "Castings" / "C0001" / "ground_truth.txt"
        gt.write_text(gt.read_text() + row + "\n")

    return corrupt


def _empty_root(root: Path) -> None:
    shutil.rmtree(root)
    root.mkdir()


def _root_is_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("not a folder")


def _train_without_objects(d: dict) -> None:
    d["annotations"] = []


CASES = [
    # --- 2. train and val overlap -------------------------------------------------------
    Case(
        "split-files-overlap",
        "mask_folder",
        lambda r: _split_files(
            r, "img_0000\nimg_0001\nimg_0002\nimg_0003\n", "img_0003\nimg_0004\nimg_0005\n"
        ),
        ["splits/train.txt and", "splits/val.txt", "1 item(s) are in both train and val", "img_0003"],
    ),
    Case(
        "split-file-lists-twice",
        "mask_folder",
        lambda r: _split_files(r, "img_0000\nimg_0001\nimg_0000\n", "img_0004\nimg_0005\n"),
        ["splits/train.txt lines 1 and 3", "'img_0000' is listed more than once"],
    ),
    Case(
        "gdxray-val-series-also-excluded",
        "gdxray",
        None,
        ["option val_series", "C0055 also in exclude_series"],
        error=DatasetOptionError,
        options={"val_series": [3, 55], "exclude_series": [55]},
        option="val_series",
    ),
    Case(
        "coco-same-file-both-splits",
        "coco",
        None,
        ["option val_annotations", "instances_train.json is both the train and the val annotation file"],
        error=DatasetDataOptionError,
        options={"val_annotations": "annotations/instances_train.json", "val_images": "images/train"},
        option="val_annotations",
    ),
    Case(
        "coco-image-listed-in-both-splits",
        "coco",
        _image_in_both_splits,
        ["instances_train.json and", "instances_val.json", "in both train and val", "train_00001.jpg"],
        split="val",
        options={"val_images": "images/train"},
    ),
    # --- 3. lossy masks -----------------------------------------------------------------
    Case(
        "mask-folder-jpeg-mask",
        "mask_folder",
        lambda r: _to_jpeg(r / "masks" / "img_0002.png"),
        ["masks/img_0002.jpg", "lossy JPEG", "PNG"],
    ),
    Case(
        "rubber-rings-jpeg-mask",
        "rubber_rings",
        lambda r: _to_jpeg(next(r.glob("Large/ground_truth/bubble/*_mask.png"))),
        ["ground_truth/bubble/000_mask.jpg", "lossy JPEG"],
        synth={"images": 9},
    ),
    # --- 7. duplicates ------------------------------------------------------------------
    Case(
        "coco-duplicate-category-id",
        "coco",
        _coco_train(lambda d: d["categories"].append({"id": 5, "name": "dent2"})),
        ["instances_train.json", "categories[3] repeats category id 5 of categories[1]"],
    ),
    Case(
        "coco-duplicate-file-name",
        "coco",
        _coco_train(lambda d: d["images"].append({**d["images"][0], "id": 777})),
        ["instances_train.json", "repeats file_name 'train_00000.jpg' of images[0]"],
    ),
    Case(
        "severstal-duplicate-row-differs",
        "severstal",
        _severstal_duplicate,
        ["train.csv lines 2 and", "is listed twice with different EncodedPixels"],
        split="val",
    ),
    Case(
        "severstal-old-csv-duplicate-row-differs",
        "severstal",
        _severstal_old_duplicate,
        ["train.csv lines 2 and 26", "is listed twice with different EncodedPixels"],
        synth={"csv_format": "old"},
    ),
    Case(
        "mask-folder-two-images-one-stem",
        "mask_folder",
        lambda r: shutil.copy(r / "images" / "img_0001.png", r / "images" / "img_0001.bmp"),
        ["img_0001.bmp", "share the stem 'img_0001'"],
    ),
    Case(
        "gdxray-two-files-one-index",
        "gdxray",
        lambda r: shutil.copy(r / "Castings/C0001/C0001_0001.png", r / "Castings/C0001/C0001_001.png"),
        ["C0001_0001.png and", "C0001_001.png have the same image index 1"],
    ),
    # --- 8. every target validated while indexing ----------------------------------------
    Case(
        "severstal-run-past-end",
        "severstal",
        lambda r: _set_first_rle(r, f"{32 * 200 - 1} 5"),
        ["train.csv line 2", "image 200x32", "past the image end (6400 pixels)"],
        options={"val_fraction": 0.0},
    ),
    Case(
        "severstal-runs-not-ascending",
        "severstal",
        lambda r: _set_first_rle(r, "50 2 10 3"),
        ["train.csv line 2", "not in ascending order: run at 10 follows run at 50"],
        options={"val_fraction": 0.0},
    ),
    Case(
        "coco-polygon-nan",
        "coco",
        _coco_train(lambda d: _first_annotated(d)["segmentation"][0].__setitem__(1, float("nan"))),
        [
            "instances_train.json",
            "annotations[0].segmentation[0] has a value that is not a finite number: nan",
        ],
        options={"task": "instance"},
    ),
    Case(
        "coco-bbox-inf",
        "coco",
        _coco_train(lambda d: _first_annotated(d)["bbox"].__setitem__(2, float("inf"))),
        ["instances_train.json", "annotations[0].bbox has a non-finite value"],
    ),
    Case(
        "coco-rle-size-is-not-the-image",
        "coco",
        _coco_train(lambda d: _first_annotated(d).update(segmentation={"size": [10, 10], "counts": [100]})),
        ["annotations[0].segmentation.size is [10, 10] but image train_00000.jpg is 32x32"],
        options={"task": "instance"},
    ),
    Case(
        "coco-rle-runs-do-not-cover-the-image",
        "coco",
        _coco_train(lambda d: _first_annotated(d).update(segmentation={"size": [32, 32], "counts": [5, 3]})),
        ["annotations[0].segmentation (RLE) covers 8 pixels", "32x32 = 1024"],
        options={"task": "instance"},
    ),
    Case(
        "coco-listed-size-is-not-the-header",
        "coco",
        _coco_train(lambda d: d["images"][0].update(width=40)),
        ["train_00000.jpg: image is 32x32 but instances_train.json images[0] lists it as 40x32"],
    ),
    Case(
        "gdxray-nan-in-ground-truth",
        "gdxray",
        _gdxray_row("1 nan 3 4 5"),
        ["C0001/ground_truth.txt line", "non-finite number"],
    ),
    Case(
        "mask-folder-mask-size",
        "mask_folder",
        lambda r: Image.fromarray(np.zeros((8, 8), np.uint8)).save(r / "masks" / "img_0000.png"),
        ["masks/img_0000.png: mask is 8x8 but image img_0000.png is 32x32"],
        options={"val_fraction": 0.0},
    ),
    # --- 9. option values and data-dependent failures -------------------------------------
    Case(
        "val-fraction-1.5",
        "severstal",
        None,
        ["option val_fraction", "expected a number in [0, 1)", "1.5"],
        error=DatasetOptionError,
        options={"val_fraction": 1.5},
        option="val_fraction",
    ),
    Case(
        "overlap-typo",
        "severstal",
        None,
        ["option overlap", "expected one of 'last', 'ignore', got 'ignor' (did you mean 'ignore'?)"],
        error=DatasetOptionError,
        options={"overlap": "ignor"},
        option="overlap",
    ),
    Case(
        "split-seed-negative",
        "coco",
        None,
        ["option split_seed", "expected an integer in [0, inf], got -1"],
        error=DatasetOptionError,
        options={"split_seed": -1},
        option="split_seed",
    ),
    Case(
        "class-names-repeated",
        "mask_folder",
        None,
        ["option class_names", "repeated: crack"],
        error=DatasetOptionError,
        options={"class_names": ["crack", "crack"]},
        option="class_names",
    ),
    Case(
        "empty-images-typo",
        "gdxray",
        None,
        ["option empty_images.train", "got 'dropp' (did you mean 'drop'?)"],
        error=DatasetOptionError,
        options={"empty_images": {"train": "dropp"}},
        option="empty_images.train",
    ),
    Case(
        "val-series-999",
        "gdxray",
        None,
        ["option val_series", "series C0999 not found under", "found C0001, C0003, C0032, C0055"],
        error=DatasetDataOptionError,
        split="val",
        options={"val_series": [999]},
        option="val_series",
    ),
    Case(
        "policy-empties-the-split",
        "coco",
        _coco_train(_train_without_objects),
        ["option empty_images", "split 'train'", "all 4 image(s) of the split have no annotations"],
        error=DatasetDataOptionError,
        option="empty_images",
    ),
    Case(
        "rareplanes-role-outside-the-map",
        "rareplanes",
        None,
        [
            "option unmapped",
            "RarePlanes_Train_Coco_Annotations_tiled.json",
            "role value 'Military",
            "unmapped='skip'",
        ],
        error=DatasetDataOptionError,
        option="unmapped",
        synth={"images": 8},
    ),
    Case(
        "root-empty-folder",
        "severstal",
        _empty_root,
        ["severstal: root", "is an empty folder"],
        error=DatasetRootError,
    ),
    Case("root-is-a-file", "gdxray", _root_is_file, ["gdxray: root", "is a file"], error=DatasetRootError),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    if root.is_file():
        return {root.name: (root.stat().st_size, root.stat().st_mtime_ns)}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_file_line_or_key(case: Case, tmp_path: Path) -> None:
    synth = {"images": 6, **case.synth}
    root = synthesize(case.fmt, tmp_path / case.fmt, size=32, seed=0, **synth)
    if case.corrupt is not None:
        case.corrupt(root)
    before = _tree(root)
    with pytest.raises(case.error) as err:
        build_dataset(case.fmt, root, case.split, **case.options)
    message = str(err.value)
    for fragment in case.fragments:
        assert fragment in message, (fragment, message)
    if case.option is not None:
        assert isinstance(err.value, DatasetOptionError) and err.value.option == case.option
    if case.error is DatasetOptionError:  # an option value: refused without reading the disk
        with pytest.raises(DatasetOptionError) as again:
            dataset_class(case.fmt).validate_options(case.options)
        assert again.value.option == case.option
        with pytest.raises(DatasetOptionError):
            build_dataset(case.fmt, tmp_path / "does-not-exist", case.split, **case.options)
    report = check_dataset_files(case.fmt, root, case.options, max_images=0)
    assert not report.ok
    assert any(all(f in entry for f in case.fragments) for entry in report.fatal), report.fatal
    assert _tree(root) == before  # neither the build nor the check wrote into the dataset


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_option_of_the_wrong_type_is_a_usage_error(tmp_path: Path, capsys) -> None:
    root = synthesize("severstal", tmp_path / "sev", images=6, size=32)
    assert _run(["data", "check", "severstal", str(root), "--option", "val_fraction=abc"]) == 2
    err = capsys.readouterr().err
    assert "option val_fraction: expected a number in [0, 1) (e.g. 0.2), got 'abc'" in err
    assert "Traceback" not in err
    assert _run(["data", "check", "gdxray", str(root), "--option", "val_seris=[3]"]) == 2
    assert "option val_seris: unknown option for dataset 'gdxray' (did you mean 'val_series'?)" in (
        capsys.readouterr().err
    )


def test_cli_negative_max_images_is_refused(tmp_path: Path, capsys) -> None:
    root = synthesize("coco", tmp_path / "c", images=6, size=32)
    assert _run(["data", "check", "coco", str(root), "--max-images", "-1"]) == 2
    assert "--max-images must be >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_images must be an integer >= 0"):
        check_dataset_files("coco", root, max_images=-1)
    assert _run(["data", "check", "coco", str(root), "--max-images", "0"]) == 0  # index checks only
    out = capsys.readouterr().out
    assert "0 decoded (indexing checks only: --max-images 0)" in out and "result: OK" in out


def test_synth_refuses_a_foreign_folder_and_clears_its_own(tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert _run(["data", "synth", "gdxray", str(foreign), "--images", "4", "--size", "32"]) == 2
    assert "is not empty (1 entries: notes.txt) and was not written by `raybench data synth`" in (
        capsys.readouterr().err
    )
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # nothing written
    out = synthesize("gdxray", tmp_path / "gx", images=8, size=32)
    stale = out / "Castings" / "C0009"
    stale.mkdir()
    (stale / "C0009_0001.png").write_bytes(b"stale")
    assert json.loads((out / MARKER).read_text())["images"] == 8
    synthesize("gdxray", out, images=4, size=32)  # written by synth: cleared first
    assert not stale.exists() and json.loads((out / MARKER).read_text())["images"] == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        synthesize("gdxray", tmp_path / "file", images=4, size=32)


def test_identical_duplicate_rows_are_merged_with_a_counted_warning(tmp_path: Path) -> None:
    root = synthesize("severstal", tmp_path / "sev", images=6, size=32)
    lines = _csv_rows(root)
    lines.append(lines[1])  # the same row twice: same mask, merged
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    n = len(lines)
    with pytest.warns(
        UserWarning, match=rf"1 x duplicate rows merged \(e.g. train.csv lines 2 and {n}: image"
    ):
        train = build_dataset("severstal", root, "train", val_fraction=0.0)
    assert train.stats["duplicate_rows_merged"] == 1
    image = lines[1].split(",")[0]
    i = next(k for k in range(len(train)) if train.image_info(k).file_name == image)
    assert len(train._runs[i]) == len({row.split(",")[1] for row in lines[1:] if row.startswith(image)})


def test_polygon_points_outside_are_counted_not_refused(tmp_path: Path) -> None:
    root = synthesize("coco", tmp_path / "c", images=6, size=32)
    _coco_train(lambda d: _first_annotated(d)["segmentation"][0].__setitem__(0, -5.0))(root)
    with pytest.warns(UserWarning, match=r"1 x polygons outside image clipped"):
        ds = build_dataset("coco", root, "train", task="instance")
    assert ds.stats["polygons_outside_image_clipped"] == 1
    masks = ds[0][1]["masks"]
    assert masks.shape[1:] == (32, 32) and int(masks.sum()) > 0


def test_every_loader_validates_its_option_values_without_the_disk() -> None:
    from raybench.data import list_datasets

    for name in list_datasets():
        cls = dataset_class(name)
        cls.validate_options({})  # the defaults are valid
        cls.validate_options(dict(cls.OPTIONS))
        with pytest.raises(DatasetOptionError) as err:
            cls.validate_options({"skip_unreadable": "yes"})
        assert err.value.option == "skip_unreadable" and "expected true or false, got 'yes'" in str(err.value)
        with pytest.raises(DatasetOptionError, match="unknown option for dataset"):
            cls.validate_options({"no_such_option": 1})
    with pytest.raises(DatasetOptionError) as err:
        dataset_class("rareplanes").validate_options({"class_map": {"a": 1, "b": 3}})
    assert err.value.option == "class_map" and "contiguous 1..K" in str(err.value)
    with pytest.raises(DatasetOptionError) as err:
        dataset_class("gdxray").validate_options({"val_series": 3})
    assert err.value.option == "val_series" and "expected a list of series numbers" in str(err.value)
    with pytest.raises(DatasetOptionError) as err:
        dataset_class("rubber_rings").validate_options({"mask_threshold": 300})
    assert err.value.option == "mask_threshold" and "[0, 254]" in str(err.value)
