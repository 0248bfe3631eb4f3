"""RarePlanes real imagery: 512x512 tiles + tiled COCO JSON with the per-object attribute quirk.

Layout of the public bucket (``s3://rareplanes-public``) once downloaded::

    real/train/PS-RGB_tiled/*.png
    real/test/PS-RGB_tiled/*.png
    real/metadata_annotations/RarePlanes_Train_Coco_Annotations_tiled.json
    real/metadata_annotations/RarePlanes_Test_Coco_Annotations_tiled.json

``root`` may be the folder holding ``real/`` or ``real/`` itself. In these JSON files
``categories`` is not a class list but one attribute record per object (role,
num_engines, propulsion, wing_type, ...) index-aligned with ``annotations``; the class is
one attribute (``class_attribute``) mapped to 1..K by ``class_map``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from raybench.data.coco_json import (
    CocoJsonDataset,
    check_split_files,
    known_image,
    read_coco_file,
    require,
    require_list,
    under_root,
)
from raybench.data.errors import DatasetDataOptionError, DatasetFormatError, DatasetOptionError
from raybench.data.options import check_choice, check_names, check_text, check_texts
from raybench.data.registry import register_dataset

#: The paper's 3 classes, our reading: the three civil values of the per-object "role"
#: attribute (role ids 1..3 of RarePlanes). The real tiles also carry military roles
#: (MILITARY_ROLES); which objects those become is the ``unmapped`` option's choice.
DEFAULT_CLASS_MAP: dict[str, int] = {
    "Small Civil Transport/Utility": 1,
    "Medium Civil Transport/Utility": 2,
    "Large Civil Transport/Utility": 3,
}
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("small_civil", "medium_civil", "large_civil")
#: The other role values of the real annotations (RarePlanes role ids 4..7).
MILITARY_ROLES: tuple[str, ...] = (
    "Military Transport/Utility/AWAC",
    "Military Fighter/Interceptor/Attack",
    "Military Bomber",
    "Military Trainer",
)
UNMAPPED_RULES: tuple[str, ...] = ("error", "skip")
ATTRIBUTE_SOURCES: tuple[str, ...] = ("auto", "categories", "annotations")

ANNOTATION_FILES = {
    "train": "RarePlanes_Train_Coco_Annotations_tiled.json",
    "val": "RarePlanes_Test_Coco_Annotations_tiled.json",
}
OFFICIAL_SPLIT = {"train": "train", "val": "test"}


def _candidates(split: str) -> tuple[list[str], list[str]]:
    fname, official = ANNOTATION_FILES[split], OFFICIAL_SPLIT[split]
    return (
        [f"real/metadata_annotations/{fname}", f"metadata_annotations/{fname}", f"real/{fname}", fname],
        [f"real/{official}/PS-RGB_tiled", f"{official}/PS-RGB_tiled"],
    )


def _resolve(root: Path, value: str | None, candidates: list[str], what: str) -> Path:
    if value is not None:
        return under_root(root, value)
    for c in candidates:
        if (root / c).exists():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise DatasetFormatError(f"rareplanes: {what} not found; looked for {tried}")


def class_table(class_map: Any, class_names: Any) -> list[str]:
    """Validate ``class_map`` (ids 1..K, contiguous) and return the K class names."""
    if not isinstance(class_map, Mapping) or not class_map:
        raise DatasetOptionError(
            "class_map", f"expected a non-empty mapping value -> class id, got {class_map!r}"
        )
    for key, v in class_map.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise DatasetOptionError(f"class_map.{key}", f"expected an integer class id, got {v!r}")
    ids = sorted(set(int(v) for v in class_map.values()))
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetOptionError(
            "class_map", f"rareplanes class_map ids must be contiguous 1..K, got {sorted(class_map.values())}"
        )
    if class_names is None:
        return [str(next(k for k, v in class_map.items() if int(v) == i)) for i in ids]
    names = check_names("class_names", class_names, allow_none=False) or []
    if len(names) != len(ids):
        raise DatasetOptionError(
            "class_names", f"rareplanes class_names has {len(names)} names for {len(ids)} class ids"
        )
    return names


def lookup_class(class_map: Mapping[Any, int], value: Any) -> int | None:
    """Class id of an attribute value (``2`` and ``"2"`` match each other)."""
    if isinstance(value, (str, int, float)) and value in class_map:
        return int(class_map[value])
    as_text = str(value)
    for k, v in class_map.items():
        if str(k) == as_text:
            return int(v)
    return None


def _resolved_names(class_map: Any, class_names: Any) -> tuple[dict, Any]:
    """The constructor's defaulting rules for (class_map, class_names)."""
    if class_map is None:
        return dict(DEFAULT_CLASS_MAP), DEFAULT_CLASS_NAMES if class_names is None else class_names
    if class_names is DEFAULT_CLASS_NAMES and class_map != DEFAULT_CLASS_MAP:
        return class_map, None  # a custom map without names: names come from the map
    return class_map, class_names


@register_dataset("rareplanes")
class RarePlanesDataset(CocoJsonDataset):
    """RarePlanes instance segmentation; train = official train, val = official test.

    Tiles without an object of the K classes are dropped in both splits by default (Table 1:
    4474 / 1113 are fewer than the official tiles); option ``empty_images``.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {
        "class_attribute": "role",
        "class_map": DEFAULT_CLASS_MAP,
        "class_names": DEFAULT_CLASS_NAMES,
        "unmapped": "error",
        "attribute_source": "auto",
        "train_annotations": None,
        "val_annotations": None,
        "train_images": None,
        "val_images": None,
        "empty_images": {"train": "drop", "val": "drop"},
        "skip_unreadable": True,
    }
    task = "instance"
    PAPER_SPLIT_SIZES: ClassVar[tuple[int, int] | None] = (4474, 1113)

    @classmethod
    def validate_options(cls, options: Any) -> None:
        super().validate_options(options)
        if "class_attribute" in options:
            check_text("class_attribute", options["class_attribute"])
        if "unmapped" in options:
            check_choice("unmapped", options["unmapped"], UNMAPPED_RULES)
        if "attribute_source" in options:
            check_choice("attribute_source", options["attribute_source"], ATTRIBUTE_SOURCES)
        check_texts(
            options, ("train_annotations", "val_annotations", "train_images", "val_images"), allow_none=True
        )
        if "class_map" in options or "class_names" in options:
            class_map, class_names = _resolved_names(
                options.get("class_map", cls.OPTIONS["class_map"]),
                options.get("class_names", cls.OPTIONS["class_names"]),
            )
            class_table(class_map, class_names)

    def __init__(
        self,
        root: Path,
        split: str,
        transforms: Any,
        *,
        class_attribute: str,
        class_map: dict[Any, int] | None,
        class_names: list[str] | tuple[str, ...] | None,
        unmapped: str,
        attribute_source: str,
        train_annotations: str | None,
        val_annotations: str | None,
        train_images: str | None,
        val_images: str | None,
        empty_images: Mapping[str, str],
        skip_unreadable: bool,
    ) -> None:
        super().__init__(root, split, transforms, locals())
        class_map, class_names = _resolved_names(class_map, class_names)
        self.class_names = class_table(class_map, class_names)
        self.num_classes = len(self.class_names)
        self.class_attribute = class_attribute
        given = {"train": (train_annotations, train_images), "val": (val_annotations, val_images)}
        ann_names, dir_names = _candidates(split)
        self.annotation_path = _resolve(
            self.root, given[split][0], ann_names, f"annotation file {ANNOTATION_FILES[split]}"
        )
        image_dir = _resolve(
            self.root,
            given[split][1],
            dir_names,
            f"image folder for split {split!r} ({OFFICIAL_SPLIT[split]}/PS-RGB_tiled)",
        )
        path = self.annotation_path
        data, images = read_coco_file(path)
        self._check_other_split(split, given, path, image_dir, images)
        annotations = require_list(data, "annotations", path)
        categories = data.get("categories", []) if isinstance(data, dict) else []
        aligned = isinstance(categories, list) and len(categories) == len(annotations)
        if attribute_source == "categories" and not aligned:
            raise DatasetFormatError(
                f"{path}: attribute_source='categories' needs one categories record per annotation, "
                f"got {len(categories)} categories for {len(annotations)} annotations"
            )
        objects: Counter[str] = Counter()
        on_images: dict[str, set[Any]] = {}
        unmapped_seen: dict[str, tuple[int, str]] = {}  # value -> (count, first reference)
        for j, ann in enumerate(annotations):
            where = f"annotations[{j}]"
            img_id = require(ann, "image_id", where, path)
            bbox = require(ann, "bbox", where, path)
            img = known_image(images, img_id, ann, where, path)
            if self.is_crowd(ann):
                continue
            value, source = self._attribute(ann, categories, j, aligned, attribute_source, path)
            objects[str(value)] += 1
            on_images.setdefault(str(value), set()).add(img_id)
            label = lookup_class(class_map, value)
            if label is None:
                n, ref = unmapped_seen.get(str(value), (0, ""))
                ref = (
                    ref
                    or f"{where} (id {ann.get('id')!r}): {class_attribute} value {value!r} (from {source})"
                )
                unmapped_seen[str(value)] = (n + 1, ref)
                continue
            if unmapped_seen and unmapped == "error":
                continue  # the error below is certain: only the census is still needed
            self.add_object(img, ann, bbox, label, where, path)
        names = {str(k): self.class_names[int(v) - 1] for k, v in class_map.items()}
        self.class_census = {
            "attribute": class_attribute,
            "values": {
                v: {"objects": n, "images": len(on_images[v]), "class": names.get(v)}
                for v, n in sorted(objects.items(), key=lambda kv: (-kv[1], kv[0]))
            },
        }
        if unmapped_seen:
            self._unmapped(unmapped, unmapped_seen, objects, class_map, path)
        chosen = sorted(images.values(), key=lambda im: im.file_name)
        self._images = self.index_images(chosen, image_dir, path)
        self.finish_index()

    def _check_other_split(self, split: str, given: dict, path: Path, image_dir: Path, images: dict) -> None:
        """Train and test tiles must differ (only possible when paths are overridden)."""
        other = "val" if split == "train" else "train"
        ann_names, dir_names = _candidates(other)
        try:
            other_ann = _resolve(self.root, given[other][0], ann_names, "")
            other_dir = _resolve(self.root, given[other][1], dir_names, "")
        except DatasetFormatError:
            return  # that split's own build says what is missing
        check_split_files(
            split,
            {split: path, other: other_ann},
            {split: image_dir, other: other_dir},
            (im.file_name for im in images.values()),
        )

    def _unmapped(
        self, rule: str, seen: dict[str, tuple[int, str]], objects: Counter, class_map: Mapping, path: Path
    ) -> None:
        """Skip (counted, one warning) or refuse objects whose value is outside ``class_map``,
        after the whole file was read, so the message lists every value with its count."""
        attr = self.class_attribute
        if rule == "skip":
            for value, (n, ref) in seen.items():
                self.note("unmapped_annotations_skipped", f"{attr} {value!r} x{n} (e.g. {ref})", count=n)
            return
        first_ref = next(iter(seen.values()))[1]
        unmapped = ", ".join(f"{v!r} x{n}" for v, (n, _) in sorted(seen.items(), key=lambda kv: -kv[1][0]))
        values = ", ".join(f"{v!r} x{n}" for v, n in sorted(objects.items(), key=lambda kv: -kv[1]))
        known = ", ".join(repr(k) for k in class_map)
        raise DatasetDataOptionError(
            "unmapped",
            f"{path}: {first_ref} is not in class_map (known: {known}); "
            f"{sum(n for n, _ in seen.values())} object(s) have {attr} values outside class_map: {unmapped}. "
            f"All {attr} values in the file: {values}. Add them to class_map, or set "
            "unmapped='skip' to drop those objects (counted; tiles left without objects follow empty_images)",
            census=self.class_census,
        )

    def _attribute(
        self, ann: dict, categories: list, j: int, aligned: bool, source: str, path: Path
    ) -> tuple[Any, str]:
        attr = self.class_attribute
        if source in ("auto", "categories") and aligned and isinstance(categories[j], dict):
            if attr in categories[j]:
                return categories[j][attr], f"categories[{j}]"
            if source == "categories":
                raise DatasetFormatError(f"{path}: categories[{j}] has no attribute {attr!r}")
        if source in ("auto", "annotations") and attr in ann:
            return ann[attr], f"annotations[{j}]"
        raise DatasetFormatError(
            f"{path}: no {attr!r} attribute for annotations[{j}]: expected it in categories[{j}] "
            f"(one attribute record per annotation; file has {len(categories)} categories records) "
            "or in the annotation itself"
        )
