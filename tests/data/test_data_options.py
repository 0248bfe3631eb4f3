"""Each dataset's options are declared once: ``OPTIONS`` holds the defaults, the constructor
takes the same names keyword-only without defaults, and a default changed in ``OPTIONS``
is what a built dataset uses."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from raybench.data import InspectionDataset, build_dataset, dataset_class, dataset_options, list_datasets
from raybench.data.registry import register_dataset
from tests.helpers.data_fixtures import ALL_FORMATS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: What a format needs on the synthetic copy (RarePlanes' tiles hold military roles).
NEEDED = {"rareplanes": {"unmapped": "skip"}}


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_constructor_takes_exactly_the_declared_options_without_defaults(name: str) -> None:
    cls = dataset_class(name)
    params = list(inspect.signature(cls.__init__).parameters.values())
    assert [p.name for p in params if p.kind is not p.KEYWORD_ONLY] == ["self", "root", "split", "transforms"]
    keyword = [p for p in params if p.kind is p.KEYWORD_ONLY]
    assert sorted(p.name for p in keyword) == sorted(dataset_options(name))
    assert [p.name for p in keyword if p.default is not p.empty] == []
    assert "skip_unreadable" in dataset_options(name)


def test_every_registered_dataset_is_covered() -> None:
    assert list_datasets() == sorted(ALL_FORMATS)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_building_without_options_uses_the_declared_defaults(name: str, synth_roots) -> None:
    needed = NEEDED.get(name, {})
    for split in ("train", "val"):
        ds = build_dataset(name, synth_roots[name], split, **needed)
        assert ds.options == {**dataset_options(name), **needed}
        assert ds.skip_unreadable is True
        if "empty_images" in ds.options:
            assert ds.empty_policy == dataset_options(name)["empty_images"][split]
        else:
            assert ds.empty_policy == "keep"


def test_a_default_changed_in_options_reaches_the_dataset(synth_roots, monkeypatch) -> None:
    rings = synth_roots["rubber_rings"]
    base = build_dataset("rubber_rings", rings, "train")
    monkeypatch.setitem(dataset_class("rubber_rings").OPTIONS, "mask_threshold", 200)
    assert dataset_options("rubber_rings")["mask_threshold"] == 200
    raised = build_dataset("rubber_rings", rings, "train")
    assert (base.mask_threshold, raised.mask_threshold) == (30, 200)
    pixels = [int((ds[0][1]["sem_seg"] > 0).sum()) for ds in (base, raised)]
    assert pixels[0] > pixels[1], pixels  # soft mask edges: a higher threshold keeps fewer pixels

    monkeypatch.setitem(dataset_class("severstal").OPTIONS, "overlap", "ignore")
    assert build_dataset("severstal", synth_roots["severstal"], "train").overlap == "ignore"

    coco = synth_roots["coco"]  # every 4th synthetic COCO image has no object
    dropped = len(build_dataset("coco", coco, "train"))
    monkeypatch.setitem(dataset_class("coco").OPTIONS, "empty_images", {"train": "keep", "val": "drop"})
    kept = build_dataset("coco", coco, "train")
    assert kept.empty_policy == "keep" and len(kept) > dropped
    # a split the option leaves out takes its default from OPTIONS too
    assert build_dataset("coco", coco, "val", empty_images={"train": "drop"}).empty_policy == "drop"


def test_validate_options_reads_its_defaults_from_options(monkeypatch) -> None:
    gdxray = dataset_class("gdxray")
    with pytest.raises(ValueError, match="also in exclude_series"):
        gdxray.validate_options({"val_series": [55]})  # 55 is excluded by default
    monkeypatch.setitem(gdxray.OPTIONS, "exclude_series", ())
    gdxray.validate_options({"val_series": [55]})


def _format(signature: str, options: dict[str, Any]) -> type:
    """A throwaway format class whose constructor has ``signature`` (after ``self``)."""
    namespace: dict[str, Any] = {"InspectionDataset": InspectionDataset, "Path": Path, "Any": Any}
    exec(  # noqa: S102 - a constructor signature under test, written here
        f"class Fmt(InspectionDataset):\n"
        f"    def __init__(self, {signature}) -> None:\n"
        f"        super().__init__(root, split, transforms, locals())\n",
        namespace,
    )
    cls = namespace["Fmt"]
    cls.OPTIONS = options
    return cls


@pytest.mark.parametrize(
    ("signature", "options", "message"),
    [
        (
            "root, split, transforms, *, size=3, skip_unreadable",
            {"size": 3, "skip_unreadable": True},
            r"Fmt.__init__ gives defaults to size; write defaults only in OPTIONS",
        ),
        (
            "root, split, transforms, *, skip_unreadable",
            {"size": 3, "skip_unreadable": True},
            r"keyword-only parameters must be the OPTIONS: missing \['size'\], not in OPTIONS none",
        ),
        (
            "root, split, transforms, *, size, colour, skip_unreadable",
            {"size": 3, "skip_unreadable": True},
            r"missing none, not in OPTIONS \['colour'\]",
        ),
        (
            "root, split, transforms, size, *, skip_unreadable",
            {"size": 3, "skip_unreadable": True},
            r"must take \(root, split, transforms\) before its keyword-only options, got "
            r"\(root, split, transforms, size\)",
        ),
        (
            "root, split, transforms, *, size",
            {"size": 3},
            r"Fmt.OPTIONS must declare skip_unreadable",
        ),
    ],
)
def test_register_dataset_refuses_a_second_source_of_defaults(
    signature: str, options: dict[str, Any], message: str
) -> None:
    before = list_datasets()
    with pytest.raises(TypeError, match=message):
        register_dataset("test_only_format")(_format(signature, options))
    assert list_datasets() == before
