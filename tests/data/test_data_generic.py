"""Generic user formats: COCO JSON (detection / instance) and image + mask folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raybench.data import DatasetFormatError, build_dataset
from tests.helpers.data_fixtures import write_image, write_mask


def _coco(
    root, split: str = "train", anns: list[dict] | None = None, cats: list[dict] | None = None, n: int = 2
):
    images = []
    for k in range(n):
        write_image(root / "images" / split / f"{split}_{k}.jpg", 40, 30)
        images.append({"id": 10 + k, "file_name": f"{split}_{k}.jpg", "width": 40, "height": 30})
    if anns is None:
        anns = [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 9,
                "bbox": [2, 3, 10, 5],
                "iscrowd": 0,
                "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]],
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 3,
                "bbox": [20, 10, 5, 5],
                "iscrowd": 0,
                "segmentation": [[20, 10, 25, 10, 25, 15, 20, 15]],
            },
            {
                "id": 3,
                "image_id": 11,
                "category_id": 5,
                "bbox": [0, 0, 4, 4],
                "iscrowd": 1,
                "segmentation": [[0, 0, 4, 0, 4, 4]],
            },
        ]
    cats = (
        cats
        if cats is not None
        else [{"id": 9, "name": "stain"}, {"id": 3, "name": "scratch"}, {"id": 5, "name": "dent"}]
    )
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_categories_map_to_contiguous_labels(tmp_path) -> None:
    _coco(tmp_path)
    ds = build_dataset("coco", tmp_path, "train")
    assert ds.task == "detection" and ds.num_classes == 3
    assert ds.class_names == ["scratch", "dent", "stain"]  # ids 3, 5, 9 -> 1, 2, 3
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [3, 1]
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0], [20.0, 10.0, 25.0, 15.0]]
    assert target["image_id"] == 10 and "masks" not in target
    # image 11 holds only a crowd annotation: empty, so dropped from train (d2's default) ...
    assert len(ds) == 1 and ds.stats["crowd_annotations_skipped"] == 1
    assert ds.stats["empty_images_dropped"] == 1
    kept = build_dataset("coco", tmp_path, "train", empty_images={"train": "keep"})  # ... unless kept
    assert kept.load_target(1)["boxes"].shape == (0, 4)  # crowd annotation skipped
    inst = build_dataset("coco", tmp_path, "train", task="instance")
    masks = inst[0][1]["masks"]
    assert masks.shape == (2, 30, 40) and masks.dtype == torch.uint8 and masks[0, 5, 6] == 1


def test_coco_single_file_is_split_randomly(tmp_path) -> None:
    _coco(tmp_path, n=10, anns=[])
    opts = {
        "annotations": "annotations/instances_train.json",
        "images": "images/train",
        "empty_images": {"train": "keep", "val": "keep"},  # no image has an annotation here
    }
    train = build_dataset("coco", tmp_path, "train", **opts)
    val = build_dataset("coco", tmp_path, "val", **opts)
    names = lambda d: {d.image_info(i).file_name for i in range(len(d))}  # noqa: E731
    assert (len(train), len(val)) == (8, 2) and not names(train) & names(val)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("annotations"), r"top level is missing key 'annotations'"),
        (lambda d: d["annotations"][1].pop("category_id"), r"annotations\[1\] is missing key 'category_id'"),
        (
            lambda d: d["annotations"][0].update(image_id=77),
            r"annotations\[0\] \(id 1\) refers to image_id 77, which is not in 'images'",
        ),
        (
            lambda d: d["annotations"][0].update(category_id=4),
            r"annotations\[0\] \(id 1\) has category_id 4, which is not in 'categories'",
        ),
        (lambda d: d["images"][1].pop("width"), r"images\[1\] is missing key 'width'"),
        (lambda d: d.update(categories=[]), r"'categories' is empty"),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2]),
            r"annotations\[0\].bbox should be \[x, y, w, h\], got \[1, 2\]",
        ),
    ],
)
def test_coco_bad_json(tmp_path, mutate, message: str) -> None:
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=message):
        build_dataset("coco", tmp_path, "train")


def test_coco_listed_size_must_match_pixels(tmp_path) -> None:
    path = _coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 64
    path.write_text(json.dumps(data))
    # Compared with the image header while indexing (was: on decode, mid-run).
    with pytest.raises(
        DatasetFormatError,
        match=r"train_0.jpg: image is 40x30 but instances_train.json images\[0\] lists it as 64x30",
    ):
        build_dataset("coco", tmp_path, "train")


def _mask_root(root, n: int = 5, classes: str | None = "background\ncrack\nspot\n"):
    for k in range(n):
        write_image(root / "images" / f"im{k}.png", 20, 10)
        m = np.zeros((10, 20), np.uint8)
        m[1:3, 1:5] = 1
        m[5:7, 8:12] = 2 if k % 2 else 0
        m[9, :] = 255
        write_mask(root / "masks" / f"im{k}.png", m)
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_mask_folder_classes_and_random_split(tmp_path) -> None:
    root = _mask_root(tmp_path)
    train, val = (build_dataset("mask_folder", root, s) for s in ("train", "val"))
    assert (len(train), len(val)) == (4, 1)
    assert train.class_names == ["crack", "spot"] and train.num_classes == 2
    image, target = train[0]
    sem = target["sem_seg"]
    assert image.shape == (3, 10, 20) and sem.dtype == torch.int64 and sem.shape == (10, 20)
    assert set(sem.unique().tolist()) <= {0, 1, 2, 255} and sem[9, 0] == 255 and sem[1, 1] == 1
    named = build_dataset("mask_folder", root, "train", class_names=["a", "b", "c"])
    assert named.num_classes == 3


def test_mask_folder_split_files(tmp_path) -> None:
    root = _mask_root(tmp_path)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("im0\nim1.png\nim2\n")
    (root / "splits" / "val.txt").write_text("im3\nim4\n")
    val = build_dataset("mask_folder", root, "val")
    assert [val.image_info(i).file_name for i in range(len(val))] == ["im3.png", "im4.png"]
    assert val.image_classes(0) == [1, 2] and val.image_classes(1) == [1]
    (root / "splits" / "val.txt").write_text("im3\nnope\n")
    with pytest.raises(DatasetFormatError, match=r"val.txt line 2: 'nope' is not an image in images/"):
        build_dataset("mask_folder", root, "val")


def test_mask_folder_bad_input(tmp_path) -> None:
    root = _mask_root(tmp_path, classes=None)
    with pytest.raises(
        DatasetFormatError, match=r"no class names .* pass option class_names or write .*classes.txt"
    ):
        build_dataset("mask_folder", root, "train")
    (root / "classes.txt").write_text("crack\n")
    ds = build_dataset("mask_folder", root, "train")
    index = next(i for i in range(len(ds)) if ds.image_info(i).file_name in ("im1.png", "im3.png"))
    with pytest.raises(
        DatasetFormatError,
        match=r"mask values \[2\] are not class ids; expected 0 \(background\), 1..1 or 255",
    ):
        ds[index]
    (root / "classes.txt").write_text("crack\nspot\n")
    write_mask(root / "masks" / "im0.png", np.zeros((5, 5), np.uint8))
    # Mask and image headers are compared while indexing (was: on load).
    with pytest.raises(DatasetFormatError, match=r"im0.png: mask is 5x5 but image im0.png is 20x10"):
        build_dataset("mask_folder", root, "train", val_fraction=0.0)
    (root / "masks" / "im0.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"no mask for .*im0.png; expected .*masks/im0.png"):
        build_dataset("mask_folder", root, "train", val_fraction=0.0)
