"""The paper's data protocol (issue 12): per-split empty-image policy, Table 1 in
``data check``, and RarePlanes' class attribute census.

Expected counts are computed from the annotation files themselves (not from the loader),
then pinned for one synthetic size so a change of the generator is noticed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from raybench.data import build_dataset, dataset_class, dataset_options
from raybench.data.check import check_dataset_files, format_report
from raybench.data.errors import DatasetDataOptionError
from raybench.data.rareplanes import DEFAULT_CLASS_MAP, MILITARY_ROLES
from raybench.data.synth import synthesize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

POLICIES = [
    {"train": "drop", "val": "drop"},
    {"train": "keep", "val": "keep"},
    {"train": "drop", "val": "keep"},
    {"train": "keep", "val": "drop"},
]
GDX_VAL = {3, 32, 45, 54, 61, 87}


def _gdxray_counts(root: Path) -> dict[str, tuple[int, int]]:
    """(images, images with a box) per split, read from the folders and ground_truth.txt."""
    out = {"train": [0, 0], "val": [0, 0]}
    for folder in sorted((root / "Castings").iterdir()):
        series = int(folder.name[1:])
        if series == 55:
            continue
        split = "val" if series in GDX_VAL else "train"
        gt = folder / "ground_truth.txt"
        boxed = (
            {int(float(ln.split()[0])) for ln in gt.read_text().splitlines() if ln.strip()}
            if gt.exists()
            else set()
        )
        out[split][0] += len(list(folder.glob("*.png")))
        out[split][1] += len(boxed)
    return {k: (a, b) for k, (a, b) in out.items()}


def _coco_counts(files: dict[str, Path], keep_label: callable) -> dict[str, tuple[int, int]]:
    out = {}
    for split, path in files.items():
        data = json.loads(path.read_text())
        attrs = (
            data["categories"] if len(data["categories"]) == len(data["annotations"]) else data["annotations"]
        )
        with_objects = {
            a["image_id"] for a, c in zip(data["annotations"], attrs, strict=True) if keep_label(c)
        }
        out[split] = (len(data["images"]), len(with_objects))
    return out


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("policies")
    return {
        name: synthesize(name, base / name, images=16, size=32, seed=0)
        for name in ("gdxray", "rareplanes", "coco")
    }


def _expected(name: str, root: Path) -> dict[str, tuple[int, int]]:
    if name == "gdxray":
        return _gdxray_counts(root)
    if name == "rareplanes":
        meta = root / "real" / "metadata_annotations"
        files = {
            "train": meta / "RarePlanes_Train_Coco_Annotations_tiled.json",
            "val": meta / "RarePlanes_Test_Coco_Annotations_tiled.json",
        }
        return _coco_counts(files, lambda c: c["role"] in DEFAULT_CLASS_MAP)
    files = {s: root / "annotations" / f"instances_{s}.json" for s in ("train", "val")}
    return _coco_counts(files, lambda c: True)


# Pinned: 16 synthetic images (images, images with objects of the classes) per split.
PINNED = {
    "gdxray": {"train": (10, 7), "val": (5, 4)},
    "rareplanes": {"train": (12, 8), "val": (4, 3)},
    "coco": {"train": (12, 9), "val": (4, 3)},
}


@pytest.mark.parametrize("name", ["gdxray", "rareplanes", "coco"])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"train-{p['train']}-val-{p['val']}")
def test_each_split_keeps_what_its_policy_says(roots, name: str, policy: dict) -> None:
    root = roots[name]
    expected = _expected(name, root)
    assert expected == PINNED[name]  # the generator writes images without objects in both splits
    extra = {"unmapped": "skip"} if name == "rareplanes" else {}
    for split in ("train", "val"):
        ds = build_dataset(name, root, split, empty_images=policy, **extra)
        total, with_objects = expected[split]
        empties = total - with_objects
        keep = policy[split] == "keep"
        assert len(ds) == (total if keep else with_objects), (split, policy)
        n_empty = sum(1 for i in range(len(ds)) if len(ds.load_target(i)["boxes"]) == 0)
        assert n_empty == (empties if keep else 0)
        assert ds.stats.get("empty_images_kept" if keep else "empty_images_dropped", 0) == empties


def test_defaults_reproduce_the_paper_protocol() -> None:
    """Table 1 reading: GDXray / RarePlanes count images with objects in both splits;
    generic COCO follows Detectron2 (train filtered, val complete)."""
    assert dataset_options("gdxray")["empty_images"] == {"train": "drop", "val": "drop"}
    assert dataset_options("rareplanes")["empty_images"] == {"train": "drop", "val": "drop"}
    assert dataset_options("coco")["empty_images"] == {"train": "drop", "val": "keep"}
    assert "keep_empty" not in dataset_options("gdxray")  # replaced by empty_images
    sizes = {
        n: dataset_class(n).PAPER_SPLIT_SIZES for n in ("severstal", "rubber_rings", "gdxray", "rareplanes")
    }
    assert sizes == {
        "severstal": (5332, 1334),
        "rubber_rings": (158, 39),
        "gdxray": (706, 356),
        "rareplanes": (4474, 1113),
    }
    assert (
        dataset_class("coco").PAPER_SPLIT_SIZES is None
        and dataset_class("mask_folder").PAPER_SPLIT_SIZES is None
    )


def test_check_prints_table1_next_to_the_counts_found(roots, monkeypatch) -> None:
    report = check_dataset_files("gdxray", roots["gdxray"], max_images=0)
    assert report.ok and report.paper_sizes == {"train": 706, "val": 356}
    assert report.found_sizes() == {"train": 7, "val": 4} and report.paper_mismatch()
    text = format_report(report)
    assert "paper Table 1 split sizes: train 706, val 356" in text
    assert re.search(r"found: +train 7, val 4  <- DIFFERS from Table 1", text)
    assert "synthetic data" in text and "empty_images" in text and "result: OK" in text
    assert report.to_dict()["paper_mismatch"] is True
    monkeypatch.setattr(dataset_class("gdxray"), "PAPER_SPLIT_SIZES", (7, 4))
    same = format_report(check_dataset_files("gdxray", roots["gdxray"], max_images=0))
    assert re.search(r"found: +train 7, val 4 \(= Table 1\)", same) and "DIFFERS" not in same
    assert "Table 1" not in format_report(check_dataset_files("coco", roots["coco"], max_images=0))


def test_rareplanes_census_lists_every_role_even_when_refused(roots) -> None:
    root = roots["rareplanes"]
    data = json.loads(
        (root / "real/metadata_annotations/RarePlanes_Train_Coco_Annotations_tiled.json").read_text()
    )
    counts: dict[str, int] = {}
    for rec in data["categories"]:
        counts[rec["role"]] = counts.get(rec["role"], 0) + 1
    assert set(counts) - set(DEFAULT_CLASS_MAP) and set(counts) - set(DEFAULT_CLASS_MAP) <= set(
        MILITARY_ROLES
    )
    # unmapped=error (the default): refused while indexing, before any item is loaded
    with pytest.raises(DatasetDataOptionError) as err:
        build_dataset("rareplanes", root, "train")
    assert err.value.option == "unmapped"
    assert {v: c["objects"] for v, c in err.value.census["values"].items()} == counts
    for strict in (True, False):
        options = {} if strict else {"unmapped": "skip"}
        report = check_dataset_files("rareplanes", root, options, max_images=0)
        assert report.ok is not strict
        census = report.class_values["train"]
        assert census["attribute"] == "role"
        assert {v: c["objects"] for v, c in census["values"].items()} == counts
        names = dict(zip(DEFAULT_CLASS_MAP, ("small_civil", "medium_civil", "large_civil"), strict=True))
        assert {v: c["class"] for v, c in census["values"].items()} == {v: names.get(v) for v in counts}
        text = format_report(report)
        assert "[train] values of the class attribute 'role'" in text
        for role, n in counts.items():
            assert re.search(rf"{re.escape(role)} +{n} ", text), role
        assert "(not in class_map: see option unmapped)" in text
    skipped = build_dataset("rareplanes", root, "train", unmapped="skip")
    assert skipped.stats["unmapped_annotations_skipped"] == sum(
        n for r, n in counts.items() if r not in DEFAULT_CLASS_MAP
    )
