"""Every format: synth -> data check -> build_dataset, and the item contract (docs/datasets.md)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from raybench.data import build_dataset, build_transforms, dataset_options, list_datasets
from raybench.data.cli import add_data_commands, parse_option
from tests.helpers.data_fixtures import ALL_FORMATS

pytestmark = pytest.mark.filterwarnings("ignore:gdxray.*has no such folder:UserWarning")

#: Options a format needs on the synthetic copy: RarePlanes' synthetic tiles, like the real
#: ones, hold military roles outside the 3 civil classes (default unmapped="error" refuses).
OPTIONS = {"rareplanes": {"unmapped": "skip"}}

TASKS = {
    "severstal": ("semantic", 4),
    "rubber_rings": ("semantic", 9),
    "rareplanes": ("instance", 3),
    "gdxray": ("detection", 1),
    "coco": ("detection", 3),
    "mask_folder": ("semantic", 3),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raybench")
    add_data_commands(parser.add_subparsers(dest="command"))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def assert_contract(ds, image: torch.Tensor, target: dict) -> None:
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    h, w = image.shape[1:]
    if ds.task == "semantic":
        sem = target["sem_seg"]
        assert sem.dtype == torch.int64 and sem.shape == (h, w)
        values = set(sem.unique().tolist())
        assert values <= set(range(ds.num_classes + 1)) | {255}, values
        return
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
    assert isinstance(target["image_id"], int)
    if len(boxes):
        assert int(labels.min()) >= 1 and int(labels.max()) <= ds.num_classes
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert float(boxes.min()) >= 0 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    if ds.task == "instance":
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(boxes), h, w)
        assert set(masks.unique().tolist()) <= {0, 1}
    else:
        assert "masks" not in target


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_synth_check_build_contract(name: str, synth_roots, tmp_path, capsys) -> None:
    root = synth_roots[name]
    options = OPTIONS.get(name, {})
    flags = [a for k, v in options.items() for a in ("--option", f"{k}={json.dumps(v)}")]
    assert _run(["data", "check", name, str(root), "--json", *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["fatal"] == [] and report["task"] == TASKS[name][0]
    assert all(report["splits"][s]["readable"] == report["splits"][s]["images"] > 0 for s in ("train", "val"))
    assert sum(report["splits"]["train"]["classes"][c]["images"] for c in report["class_names"]) > 0
    for split in ("train", "val"):
        ds = build_dataset(name, root, split, **options)
        assert (ds.task, ds.num_classes) == TASKS[name] and len(ds.class_names) == ds.num_classes
        assert ds.ignore_index == 255
        tf = build_transforms(
            ds.task, split, test_short_edge=48, crop_size=(32, 32), train_short_edge=(40, 48, 64)
        )
        for i in range(len(ds)):
            info = ds.image_info(i)
            image, target = ds[i]
            assert (image.shape[2], image.shape[1]) == (info.width, info.height)
            assert_contract(ds, image, target)
            assert set(ds.image_classes(i)) <= set(range(1, ds.num_classes + 1))
            t_image, t_target = tf(image, target)
            assert_contract(ds, t_image, t_target)
            assert t_image.shape[1] % 32 == 0 and t_image.shape[2] % 32 == 0


def test_synth_cli_severstal_old_csv_and_text_check(tmp_path, capsys) -> None:
    out = tmp_path / "sev"
    assert (
        _run(
            [
                "data",
                "synth",
                "severstal",
                str(out),
                "--images",
                "6",
                "--size",
                "32",
                "--option",
                "csv_format=old",
            ]
        )
        == 0
    )
    header = (out / "train.csv").read_text().splitlines()[0]
    assert (
        header == "ImageId_ClassId,EncodedPixels"
        and len((out / "train.csv").read_text().splitlines()) == 1 + 4 * 6
    )
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    capsys.readouterr()
    assert _run(["data", "check", "severstal", str(out), "--option", "only_defective=false"]) == 0
    text = capsys.readouterr().out
    assert "[train] 4 images" in text and "[val] 2 images" in text and "result: OK" in text
    assert "defect_1" in text and "size WxH: min 200x32" in text


def test_synth_is_deterministic(tmp_path) -> None:
    from raybench.data.synth import synthesize

    a = synthesize("gdxray", tmp_path / "a", images=4, size=32, seed=3)
    b = synthesize("gdxray", tmp_path / "b", images=4, size=32, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(ValueError, match="need at least 3 images"):
        synthesize("rubber_rings", tmp_path / "c", images=2)


def test_registry_errors() -> None:
    assert list_datasets() == sorted(ALL_FORMATS)
    with pytest.raises(
        ValueError, match=r"unknown dataset 'steel'; known datasets: coco, gdxray, mask_folder"
    ):
        build_dataset("steel", ".", "train")
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) for dataset 'severstal': 'only_defect'; known options: .*only_defective",
    ):
        build_dataset("severstal", ".", "train", only_defect=True)
    with pytest.raises(ValueError, match=r"unknown split 'test'; expected one of train, val"):
        build_dataset("severstal", ".", "test")
    assert dataset_options("gdxray")["val_series"] == (3, 32, 45, 54, 61, 87)


def test_check_cli_errors(tmp_path, capsys) -> None:
    assert _run(["data", "check", "steel", str(tmp_path)]) == 2
    assert "unknown dataset 'steel'" in capsys.readouterr().err
    assert _run(["data", "check", "severstal", str(tmp_path)]) == 1  # nothing there: fatal
    assert "FATAL" in capsys.readouterr().out
    assert parse_option("val_series=[3, 32]") == ("val_series", [3, 32])
    assert parse_option("class_attribute=wing_type") == ("class_attribute", "wing_type")
    with pytest.raises(ValueError, match="expects key=value"):
        parse_option("nokey")


def test_dataloader_workers_pickle_and_seed(synth_roots) -> None:
    from torch.utils.data import DataLoader

    ds = build_dataset("severstal", synth_roots["severstal"], "train")
    ds.transforms = build_transforms("semantic", "train", test_short_edge=32)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)  # DataLoader derives each worker's seed from the global RNG
        loader = DataLoader(ds, batch_size=None, num_workers=1, shuffle=False)
        runs.append([target["sem_seg"] for _, target in loader])
    assert len(runs[0]) == len(ds)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
