"""RarePlanes: the per-object attribute quirk, file locations, boxes, masks, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from raybench.data import DatasetFormatError, build_dataset
from tests.helpers.data_fixtures import write_image

TRAIN_JSON = "RarePlanes_Train_Coco_Annotations_tiled.json"
TEST_JSON = "RarePlanes_Test_Coco_Annotations_tiled.json"
SQUARE = [10, 10, 30, 10, 30, 20, 10, 20]  # 20 x 10 rectangle polygon


def _ann(j: int, image_id: int, bbox: list[float], poly: list[float] | None = None) -> dict:
    # Like the real files the annotation carries no class; category_id is meaningless.
    return {
        "id": j + 1,
        "image_id": image_id,
        "category_id": j + 1,
        "iscrowd": 0,
        "bbox": bbox,
        "area": 1.0,
        "segmentation": [poly or SQUARE],
    }


def _write(
    root,
    attrs: list[dict],
    *,
    split: str = "train",
    anns: list[dict] | None = None,
    extra: dict | None = None,
):
    official = "train" if split == "train" else "test"
    for k in (1, 2):
        write_image(root / "real" / official / "PS-RGB_tiled" / f"7_ABC_tile_{k}.png", 64, 48)
    images = [{"id": k, "file_name": f"7_ABC_tile_{k}.png", "width": 64, "height": 48} for k in (1, 2)]
    if anns is None:
        anns = [_ann(j, 1 + j % 2, [10, 10, 20, 10]) for j in range(len(attrs))]
    categories = [{"id": a["id"], **attr} for a, attr in zip(anns, attrs, strict=False)]
    data = {"images": images, "annotations": anns, "categories": categories, **(extra or {})}
    meta = root / "real" / "metadata_annotations"
    meta.mkdir(parents=True, exist_ok=True)
    path = meta / (TRAIN_JSON if split == "train" else TEST_JSON)
    path.write_text(json.dumps(data))
    return path


ATTRS = [
    {"role": "Small Civil Transport/Utility", "wing_type": "straight", "num_engines": 1},
    {"role": "Large Civil Transport/Utility", "wing_type": "swept", "num_engines": 4},
    {"role": "Medium Civil Transport/Utility", "wing_type": "swept", "num_engines": 2},
]


def test_default_class_is_the_civil_role(tmp_path) -> None:
    _write(tmp_path, ATTRS)
    ds = build_dataset("rareplanes", tmp_path, "train")
    assert ds.task == "instance" and ds.num_classes == 3
    assert ds.class_names == ["small_civil", "medium_civil", "large_civil"]
    labels = {ds.image_info(i).image_id: ds.load_target(i)["labels"].tolist() for i in range(len(ds))}
    assert labels == {1: [1, 2], 2: [3]}  # annotations 0 and 2 on image 1, annotation 1 on image 2


def test_chosen_attribute_and_map(tmp_path) -> None:
    _write(tmp_path, ATTRS)
    ds = build_dataset(
        "rareplanes",
        tmp_path,
        "train",
        class_attribute="wing_type",
        class_map={"straight": 1, "swept": 2},
        class_names=["straight", "swept"],
    )
    assert ds.num_classes == 2 and ds.class_names == ["straight", "swept"]
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    # bbox [x, y, w, h] -> xyxy; polygon -> mask of the 20 x 10 rectangle
    assert target["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]] * 2
    assert target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (2, 48, 64) and target["masks"].dtype == torch.uint8
    assert abs(int(target["masks"][0].sum()) - 20 * 10) <= 31  # rasterisation of the polygon border
    assert target["masks"][0, 15, 20] == 1 and target["masks"][0, 30, 50] == 0
    # numeric attribute values match string keys and vice versa; names default to the map keys
    ds = build_dataset(
        "rareplanes", tmp_path, "train", class_attribute="num_engines", class_map={"1": 1, 2: 2, "4": 3}
    )
    assert ds.class_names == ["1", "2", "4"]
    assert ds.load_target(0)["labels"].tolist() == [1, 2]


def test_unmapped_value_error_names_file_index_and_value(tmp_path) -> None:
    path = _write(tmp_path, [*ATTRS, {"role": "Military Bomber"}])
    with pytest.raises(DatasetFormatError) as err:
        build_dataset("rareplanes", tmp_path, "train")
    msg = str(err.value)
    assert str(path) in msg and "annotations[3] (id 4)" in msg and "role value 'Military Bomber'" in msg
    assert "from categories[3]" in msg and "unmapped='skip'" in msg
    ds = build_dataset("rareplanes", tmp_path, "train", unmapped="skip")
    assert ds.stats["unmapped_annotations_skipped"] == 1
    assert sum(len(ds.load_target(i)["labels"]) for i in range(len(ds))) == 3


def test_attribute_from_annotation_when_categories_not_aligned(tmp_path) -> None:
    anns = [{**_ann(0, 1, [1, 1, 5, 5]), "role": "Medium Civil Transport/Utility"}]
    _write(
        tmp_path, [], anns=anns, extra={"categories": [{"id": 1, "name": "aircraft"}, {"id": 2, "name": "x"}]}
    )
    ds = build_dataset("rareplanes", tmp_path, "train")
    assert ds.load_target(0)["labels"].tolist() == [2]
    del anns[0]["role"]
    _write(tmp_path, [], anns=anns, extra={"categories": [{"id": 1}, {"id": 2}]})
    with pytest.raises(
        DatasetFormatError, match=r"no 'role' attribute for annotations\[0\]: expected it in categories\[0\]"
    ):
        build_dataset("rareplanes", tmp_path, "train")


def test_val_is_the_official_test_file_and_root_may_be_real(tmp_path) -> None:
    _write(tmp_path, ATTRS[:1], split="val")
    ds = build_dataset("rareplanes", tmp_path, "val", empty_images={"val": "keep"})
    assert ds.annotation_path.name == TEST_JSON and "test" in ds.image_info(0).path.parts
    ds2 = build_dataset("rareplanes", tmp_path / "real", "val", empty_images={"val": "keep"})
    assert len(ds2) == len(ds) == 2
    # default: the tile without an object is dropped (Table 1 counts tiles with objects)
    assert len(build_dataset("rareplanes", tmp_path, "val")) == 1
    with pytest.raises(
        DatasetFormatError, match=r"annotation file RarePlanes_Train_Coco_Annotations_tiled.json not found"
    ):
        build_dataset("rareplanes", tmp_path, "train")


def test_missing_key_and_unknown_image(tmp_path) -> None:
    anns = [_ann(0, 1, [1, 1, 5, 5])]
    del anns[0]["bbox"]
    path = _write(tmp_path, ATTRS[:1], anns=anns)
    with pytest.raises(DatasetFormatError, match=rf"{path.name}: annotations\[0\] is missing key 'bbox'"):
        build_dataset("rareplanes", tmp_path, "train")
    _write(tmp_path, ATTRS[:1], anns=[_ann(0, 99, [1, 1, 5, 5])])
    with pytest.raises(
        DatasetFormatError, match=r"annotations\[0\] \(id 1\) refers to image_id 99, which is not in 'images'"
    ):
        build_dataset("rareplanes", tmp_path, "train")
    data = json.loads(path.read_text())
    del data["images"][0]["file_name"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"images\[0\] is missing key 'file_name'"):
        build_dataset("rareplanes", tmp_path, "train")
    path.write_text('{"images": [')
    with pytest.raises(DatasetFormatError, match=r"invalid JSON at line 1"):
        build_dataset("rareplanes", tmp_path, "train")


def test_bad_polygon(tmp_path) -> None:
    _write(tmp_path, ATTRS[:1], anns=[_ann(0, 1, [1, 1, 5, 5], poly=[1, 2, 3])])
    with pytest.raises(
        DatasetFormatError, match=r"annotations\[0\].segmentation\[0\] should be a flat .* got 3 values"
    ):
        build_dataset("rareplanes", tmp_path, "train")


def test_boxes_outside_are_clipped_and_degenerate_dropped(tmp_path) -> None:
    anns = [_ann(0, 1, [50, 40, 30, 20]), _ann(1, 1, [5, 5, 0, 10]), _ann(2, 1, [70, 5, 5, 5])]
    _write(tmp_path, ATTRS, anns=anns)
    with pytest.warns(UserWarning) as record:
        ds = build_dataset("rareplanes", tmp_path, "train")
    messages = " ".join(str(w.message) for w in record)
    assert "1 x boxes clipped" in messages and "2 x degenerate boxes dropped" in messages
    assert ds.stats["boxes_clipped"] == 1 and ds.stats["degenerate_boxes_dropped"] == 2
    target = ds.load_target(0)
    assert target["boxes"].tolist() == [[50.0, 40.0, 64.0, 48.0]] and target["labels"].tolist() == [1]


def _mask_fill(root, width: float | None) -> float:
    """Mean fraction of its box that a synthetic plane's mask fills."""
    ds = build_dataset("rareplanes", root, "train", unmapped="skip")
    fills = []
    for i in range(len(ds)):
        target = ds[i][1]
        for box, mask in zip(target["boxes"], target["masks"]):
            area = float((box[2] - box[0]) * (box[3] - box[1]))
            fills.append(float(mask.sum()) / area)
    return sum(fills) / len(fills)


def test_synthetic_plane_width_thickens_planes_and_defaults_to_the_old_files(tmp_path) -> None:
    import hashlib

    from raybench.data.synth import synthesize

    def digest(root) -> str:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".raybench-synth.json")
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    common = {"images": 8, "size": 96, "seed": 3, "object_scale": 5}
    plain = synthesize("rareplanes", tmp_path / "plain", **common)
    same = synthesize("rareplanes", tmp_path / "w1", **common, plane_width=1)
    wide = synthesize("rareplanes", tmp_path / "w35", **common, plane_width=3.5)
    assert digest(plain) == digest(same)  # width 1 = the files written before the option
    assert json.loads((wide / ".raybench-synth.json").read_text())["options"] == {"plane_width": 3.5}
    thin, thick = _mask_fill(plain, None), _mask_fill(wide, 3.5)
    assert 0.15 < thin < 0.4 and thick > thin + 0.2, (thin, thick)
    for bad in (0, -1, 6, True, "wide"):
        with pytest.raises((ValueError, TypeError), match="plane_width must be a number in"):
            synthesize("rareplanes", tmp_path / f"bad{bad}", images=4, size=32, plane_width=bad)
        assert not (tmp_path / f"bad{bad}").exists()  # refused before writing anything
