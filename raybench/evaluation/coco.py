"""COCO box / mask AP (pycocotools) from in-memory targets and predictions.

Why in memory: every raybench dataset yields targets of one contract (docs/datasets.md, the
item contract), so the ground truth is built from the same items the model sees, whatever the
on-disk format; no COCO JSON is needed.
Each worker evaluates its shard of the validation set; :meth:`CocoEvaluator.evaluate`
gathers all shards (``torch.distributed.all_gather_object`` by default, injectable for
tests) before pycocotools runs, so the numbers do not depend on the number of workers.

Values are percentages (0-100) like Detectron2. Undefined values are NaN: no ground-truth
instance at all (AP is undefined: there is nothing to recall), or an area range
(``APs``/``APm``/``APl``) without ground truth. Ground truth but no prediction at all is
AP = 0, which is what pycocotools computes for it (its ``loadRes`` only crashes on an
empty list, so that case is answered without calling it).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from raybench.evaluation.records import DetectionRecords, EvalRecords, coco_records

Gather = Callable[[Any], list[Any]]

#: iou type -> metric prefix ("bbox" -> val/box_AP, "segm" -> val/mask_AP).
KINDS: dict[str, str] = {"bbox": "box", "segm": "mask"}
#: COCOeval.stats index of each summary value we report.
STAT_NAMES: tuple[tuple[str, int], ...] = (
    ("AP", 0),
    ("AP50", 1),
    ("AP75", 2),
    ("APs", 3),
    ("APm", 4),
    ("APl", 5),
)


def default_gather(obj: Any) -> list[Any]:
    """Every worker's ``obj`` (a list of one element without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            out: list[Any] = [None] * world
            torch.distributed.all_gather_object(out, obj)
            return out
    return [obj]


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().to("cpu", torch.float64).reshape(-1, 4)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """``[N, H, W]`` or ``[N, 1, H, W]`` masks (probabilities or 0/1) -> COCO RLEs."""
    m = masks.detach().to("cpu")
    if m.dim() == 4:
        m = m[:, 0]
    if m.numel() == 0:
        return []
    if m.dtype.is_floating_point:
        binary = (m > threshold).numpy().astype(np.uint8)
    else:
        binary = (m > 0).numpy().astype(np.uint8)
    return mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))


def _image_id(target: dict[str, Any]) -> int:
    value = target["image_id"]
    return int(value.item() if isinstance(value, torch.Tensor) else value)


class CocoEvaluator:
    """Accumulate (target, prediction) pairs, then compute COCO AP over all workers.

    ``iou_types``: ``("bbox",)`` for detection, ``("bbox", "segm")`` for instance
    segmentation. Targets follow the item contract of docs/datasets.md (``boxes`` xyxy,
    ``labels`` 1..K, ``image_id``, ``masks`` for segm); predictions are torchvision's detector
    outputs (``boxes``, ``labels``, ``scores``, ``masks`` as ``[N, 1, H, W]`` probabilities), in
    the same pixel frame as the targets.
    """

    def __init__(
        self,
        iou_types: Sequence[str] = ("bbox",),
        class_names: Sequence[str] = (),
        *,
        gather: Gather | None = None,
        mask_threshold: float = 0.5,
        prefix: str = "val/",
    ) -> None:
        unknown = [t for t in iou_types if t not in KINDS]
        if unknown:
            raise ValueError(f"unknown iou type(s) {unknown}; expected some of {sorted(KINDS)}")
        self.iou_types = tuple(iou_types)
        self.class_names = list(class_names)
        self.gather = gather or default_gather
        self.mask_threshold = mask_threshold
        self.prefix = prefix
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far (call before each evaluation)."""
        self._images: dict[int, dict[str, Any]] = {}
        self._gts: list[dict[str, Any]] = []
        self._dts: list[dict[str, Any]] = []
        self._records: list[DetectionRecords] = []

    @property
    def state(self) -> dict[str, Any]:
        """What this worker holds (plain, picklable): the object that is gathered."""
        return {"images": self._images, "gts": self._gts, "dts": self._dts}

    def process(self, targets: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]) -> None:
        """Add one batch: ``targets[i]`` and ``outputs[i]`` describe the same image."""
        segm = "segm" in self.iou_types
        for target, output in zip(targets, outputs, strict=True):
            image_id = _image_id(target)
            if image_id in self._images:
                continue  # the same image twice (padded shards): count it once
            info: dict[str, Any] = {"id": image_id}
            if "masks" in target and target["masks"].dim() == 3:
                info["height"], info["width"] = (int(s) for s in target["masks"].shape[-2:])
            self._images[image_id] = info

            boxes = _xyxy_to_xywh(target["boxes"])
            labels = target["labels"].reshape(-1).tolist()
            crowd = target.get("iscrowd")
            crowd = crowd.reshape(-1).tolist() if isinstance(crowd, torch.Tensor) else [0] * len(boxes)
            rles = encode_masks(target["masks"]) if segm and "masks" in target else None
            for k, (box, label) in enumerate(zip(boxes, labels)):
                gt: dict[str, Any] = {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "iscrowd": int(crowd[k]),
                    "area": float(box[2] * box[3]),
                }
                if rles is not None:
                    gt["segmentation"] = rles[k]
                    gt["area"] = float(mask_util.area(rles[k]))
                self._gts.append(gt)

            dboxes = _xyxy_to_xywh(output["boxes"])
            dlabels = output["labels"].reshape(-1).tolist()
            scores = output["scores"].detach().float().reshape(-1).tolist()
            drles = encode_masks(output["masks"], self.mask_threshold) if segm and "masks" in output else None
            for k, (box, label, score) in enumerate(zip(dboxes, dlabels, scores)):
                dt: dict[str, Any] = {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": box,
                    "score": float(score),
                }
                if drles is not None:
                    dt["segmentation"] = drles[k]
                self._dts.append(dt)

    def _merged(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        images: dict[int, dict[str, Any]] = {}
        gts: list[dict[str, Any]] = []
        dts: list[dict[str, Any]] = []
        for shard in self.gather(self.state):
            new = {i for i in shard["images"] if i not in images}
            images.update({i: shard["images"][i] for i in new})
            gts += [g for g in shard["gts"] if g["image_id"] in new]
            dts += [d for d in shard["dts"] if d["image_id"] in new]
        order = sorted(images)
        return [images[i] for i in order], gts, dts

    def _categories(self, gts: list[dict[str, Any]], dts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = set(range(1, len(self.class_names) + 1))
        ids |= {a["category_id"] for a in gts} | {a["category_id"] for a in dts}
        names = {i + 1: n for i, n in enumerate(self.class_names)}
        return [{"id": i, "name": names.get(i, str(i))} for i in sorted(ids)]

    def evaluate(self) -> dict[str, float]:
        """Gather every worker's share and compute AP; every worker gets the same dict."""
        images, gts, dts = self._merged()
        categories = self._categories(gts, dts)
        self._records = []
        out: dict[str, float] = {}
        for iou_type in self.iou_types:
            out.update(self._evaluate_one(iou_type, images, gts, dts, categories))
        return out

    def records(self) -> EvalRecords | None:
        """Per-image matches of the last :meth:`evaluate` (all workers; one part per iou type),
        from which :mod:`raybench.evaluation.records` recomputes AP on any resample of images."""
        return EvalRecords(list(self._records)) if self._records else None

    def _evaluate_one(
        self,
        iou_type: str,
        images: list[dict[str, Any]],
        gts: list[dict[str, Any]],
        dts: list[dict[str, Any]],
        categories: list[dict[str, Any]],
    ) -> dict[str, float]:
        kind = f"{self.prefix}{KINDS[iou_type]}_"
        names = {c["id"]: c["name"] for c in categories}
        gt_classes = sorted({g["category_id"] for g in gts})
        per_class = [f"{kind}AP-{names[c]}" for c in sorted(names)]
        cat_ids = sorted(names)

        def record(ev: COCOeval | None) -> None:  # without COCOeval: ground-truth counts only
            names_ = [names[c] for c in cat_ids]
            image_ids = [im["id"] for im in images]
            self._records.append(coco_records(iou_type, kind, ev, image_ids, cat_ids, names_, gts))

        if not gts:  # nothing to recall: AP undefined
            record(None)
            return {f"{kind}{n}": math.nan for n, _ in STAT_NAMES} | dict.fromkeys(per_class, math.nan)
        if not dts:  # recall 0 everywhere: pycocotools' value is 0 (where GT exists)
            record(None)
            result = {f"{kind}{n}": 0.0 for n, _ in STAT_NAMES}
            result.update(self._area_nans(kind, gts))
            for c in sorted(names):
                result[f"{kind}AP-{names[c]}"] = 0.0 if c in gt_classes else math.nan
            return result

        gt_anns = [dict(g, id=i + 1) for i, g in enumerate(gts)]
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
            # For masks, drop the box so pycocotools takes the mask area for the
            # small/medium/large ranges (as Detectron2 does); else it uses the box area.
            drop = ("bbox",) if iou_type == "segm" else ()
            coco_dt = coco_gt.loadRes([{k: v for k, v in d.items() if k not in drop} for d in dts])
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.imgIds = [im["id"] for im in images]
            ev.evaluate()
            record(ev)
            ev.accumulate()
            ev.summarize()
        result = {f"{kind}{n}": _pct(ev.stats[i]) for n, i in STAT_NAMES}
        # Per class: area "all", maxDets 100, mean precision over IoUs and recall points.
        precision = ev.eval["precision"][:, :, :, 0, -1]
        for k, cat in enumerate(ev.params.catIds):
            p = precision[:, :, k]
            p = p[p > -1]
            result[f"{kind}AP-{names[cat]}"] = _pct(float(p.mean())) if p.size else math.nan
        return result

    @staticmethod
    def _area_nans(kind: str, gts: list[dict[str, Any]]) -> dict[str, float]:
        # COCO area ranges: small < 32^2 <= medium < 96^2 <= large; no GT in a range -> NaN.
        areas = [g["area"] for g in gts if not g["iscrowd"]]
        ranges = {"APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, 1e10)}
        return {
            f"{kind}{n}": math.nan for n, (lo, hi) in ranges.items() if not any(lo <= a < hi for a in areas)
        }


def _pct(value: float) -> float:
    """pycocotools' -1 (undefined) -> NaN; else a percentage."""
    return math.nan if value < 0 else 100.0 * float(value)
