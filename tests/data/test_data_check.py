"""Unreadable images (skip + count), fatal problems and their exit codes in ``data check``."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from raybench.data import DatasetFormatError, build_dataset
from raybench.data.check import check_dataset_files, format_report
from raybench.data.cli import add_data_commands
from raybench.data.images import read_image
from raybench.data.synth import synthesize
from tests.helpers.data_fixtures import write_image, write_mask

pytestmark = pytest.mark.filterwarnings("ignore:gdxray.*has no such folder:UserWarning")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def severstal_root(tmp_path):
    return synthesize("severstal", tmp_path / "sev", images=10, size=32, seed=1)


def _corrupt_first_train_image(root, how: str) -> str:
    ds = build_dataset("severstal", root, "train")
    path = ds.image_info(0).path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncated" else b"not an image at all")
    return path.name


def test_truncated_image_error_or_skip(severstal_root) -> None:
    name = _corrupt_first_train_image(severstal_root, "truncated")  # header intact, pixels cut
    strict = build_dataset("severstal", severstal_root, "train", skip_unreadable=False)
    with pytest.raises(DatasetFormatError, match=rf"cannot decode image .*{name}"):
        strict[0]
    lenient = build_dataset("severstal", severstal_root, "train")  # default: skip_unreadable=True
    with pytest.warns(UserWarning, match=rf"skipping unreadable image: cannot decode image .*{name}"):
        image, _ = lenient[0]
    assert lenient.image_info(0).file_name == name and image.shape[0] == 3  # next item served


def test_garbage_image_error_or_skip(severstal_root) -> None:
    n = len(build_dataset("severstal", severstal_root, "train"))
    name = _corrupt_first_train_image(severstal_root, "garbage")  # not even a header
    with pytest.raises(DatasetFormatError, match=rf"cannot read image header of .*{name}"):
        build_dataset("severstal", severstal_root, "train", skip_unreadable=False)
    with pytest.warns(UserWarning, match=rf"1 x unreadable images .*{name}"):
        lenient = build_dataset("severstal", severstal_root, "train")
    assert len(lenient) == n - 1 and lenient.stats["unreadable_images"] == 1


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_check_skips_and_counts_unreadable(severstal_root, capsys, how: str) -> None:
    name = _corrupt_first_train_image(severstal_root, how)
    report = check_dataset_files("severstal", severstal_root)
    train = report.splits["train"]
    assert report.ok and train.unreadable == 1 and train.readable == train.images - 1
    assert name in train.unreadable_files[0]
    assert _run(["data", "check", "severstal", str(severstal_root)]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable (skipped)" in out and "unreadable: cannot" in out and name in out
    assert _run(["data", "check", "severstal", str(severstal_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["unreadable"] == 1


def test_check_fatal_on_bad_target_and_empty_split(tmp_path, capsys) -> None:
    root = synthesize("mask_folder", tmp_path / "mf", images=5, size=32, seed=0)
    write_mask(root / "masks" / "img_0000.png", np.zeros((8, 8), np.uint8))
    report = check_dataset_files("mask_folder", root, {"val_fraction": 0.0})
    assert not report.ok
    assert any("img_0000.png: mask is 8x8 but image img_0000.png is 32x32" in f for f in report.fatal)
    assert any("split 'val'" in f and "is empty" in f for f in report.fatal)
    assert "result: FAILED" in format_report(report)
    assert _run(["data", "check", "mask_folder", str(root), "--option", "val_fraction=0.0"]) == 1
    assert "FATAL" in capsys.readouterr().out


def test_check_reports_noted_problems(tmp_path) -> None:
    root = synthesize("gdxray", tmp_path / "gx", images=6, size=32, seed=0)
    gt = next(root.glob("Castings/C*/ground_truth.txt"))
    series = gt.parent.name
    gt.write_text(gt.read_text() + "1 20 90 3 9\n")  # crosses the right edge of a 43 px image
    report = check_dataset_files("gdxray", root)
    split = "val" if series in ("C0003", "C0032", "C0045", "C0054", "C0061") else "train"
    assert report.ok and report.splits[split].stats["boxes_clipped"] >= 1
    assert any("val_series lists series 87" in w for w in report.warnings)
    assert "note: boxes clipped" in format_report(report)


def test_check_max_images(tmp_path) -> None:
    root = synthesize("coco", tmp_path / "c", images=8, size=32, seed=0)
    report = check_dataset_files("coco", root, max_images=2)
    # 6 train images, one without objects: dropped from train by default (d2's filter)
    assert report.splits["train"].checked == 2 and report.splits["train"].images == 5
    shutil.rmtree(root / "images" / "val")
    report = check_dataset_files("coco", root)
    assert not report.ok and "val" not in report.splits
    assert any("split 'val'" in f and "is empty" in f for f in report.fatal)
    assert any("2 x missing images" in w and "val_00000.jpg" in w for w in report.warnings)


def test_read_image_formats(tmp_path) -> None:
    from PIL import Image

    deep = (np.arange(16 * 8).reshape(8, 16) * 500).astype(np.uint16)  # 16-bit PNG: full-range scale
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.dtype == torch.uint8 and img.shape == (3, 8, 16)
    assert int(img[0, 7, 15]) == round(int(deep[7, 15]) / 257) and torch.equal(img[0], img[2])
    for name in ("x.bmp", "g.png", "c.jpg"):  # BMP goes through PIL; grayscale is repeated
        path = write_image(tmp_path / name, 12, 6, gray=name.startswith("g"))
        out = read_image(path)
        assert out.dtype == torch.uint8 and out.shape == (3, 6, 12)
    assert torch.equal(read_image(tmp_path / "g.png")[1], read_image(tmp_path / "g.png")[0])
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"cannot decode image .*empty.png: file is empty"):
        read_image(tmp_path / "empty.png")
