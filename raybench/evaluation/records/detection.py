"""Detection and instance-segmentation records: COCOeval's per-image matching, from which AP
is recomputed on any resample of the images, vectorised over all resamples
(:mod:`raybench.evaluation.records` says why, and what exactly is stored)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raybench.evaluation.records.weights import as_weights

#: COCOeval's recall points (``Params.recThrs``), computed the same way for bit-equal floats.
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
#: COCOeval's IoU thresholds (``Params.iouThrs``).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
#: Cells of a ``[resamples, detections]`` block processed at once: small enough that a block's
#: several passes stay in the CPU cache (measured: 0.5 M is ~2.5x faster than 4 M).
_BLOCK = 500_000


@dataclass(frozen=True, eq=False)
class DetectionRecords:
    """COCOeval's per-image matches of one iou type (see module doc).

    ``images``: ``[N]`` image ids (sorted ascending, as COCOeval orders them);
    ``categories``: ``[K]`` category ids; ``n_gt``: ``[N, K]`` non-ignored ground truths;
    detections: ``det_image`` / ``det_category`` (row indices into ``images`` /
    ``categories``), ``det_score``, ``det_tp`` / ``det_fp`` int bit masks (bit t = true /
    false positive at ``iou_thresholds[t]``), in COCOeval's order (per image, best score
    first, at most 100 per image and category). ``prefix``: ``val/box_`` or ``val/mask_``.
    """

    kind: str
    images: np.ndarray
    categories: np.ndarray
    n_gt: np.ndarray
    det_image: np.ndarray
    det_category: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_fp: np.ndarray
    category_names: tuple[str, ...] = ()
    iou_thresholds: tuple[float, ...] = tuple(IOU_THRESHOLDS.tolist())
    prefix: str = "val/box_"
    _order: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, k, d = len(self.images), len(self.categories), len(self.det_score)
        if np.shape(self.n_gt) != (n, k):
            raise ValueError(f"DetectionRecords.n_gt must be [{n}, {k}], got {np.shape(self.n_gt)}")
        for name in ("det_image", "det_category", "det_tp", "det_fp"):
            size = len(getattr(self, name))
            if size != d:
                raise ValueError(f"DetectionRecords.{name} must have {d} entries, got {size}")
        if n > 1 and np.any(np.diff(self.images) <= 0):
            raise ValueError("DetectionRecords.images must be sorted ascending without repeats")
        if len(self.iou_thresholds) > 31:
            raise ValueError("at most 31 IoU thresholds (bit masks in int32)")
        if self.category_names and len(self.category_names) != k:
            raise ValueError(f"{len(self.category_names)} category names for {k} categories")

    @property
    def num_images(self) -> int:
        return len(self.images)

    def _names(self) -> tuple[str, ...]:
        return self.category_names or tuple(str(int(c)) for c in self.categories)

    def metrics(self) -> tuple[str, ...]:
        """Metric names :meth:`compute` knows: AP, AP50, AP75 and AP-<category> (area range all)."""
        names = ["AP"]
        for name, thr in (("AP50", 0.5), ("AP75", 0.75)):
            if any(abs(t - thr) < 1e-9 for t in self.iou_thresholds):
                names.append(name)
        names += [f"AP-{n}" for n in self._names()]
        return tuple(self.prefix + n for n in names)

    def compute(self, metric: str, weights: Any) -> np.ndarray:
        """``metric`` on every resample: weights ``[B, N]`` -> ``[B]`` percentages (NaN if no
        category has ground truth in the resample)."""
        if metric not in self.metrics():
            known = ", ".join(self.metrics())
            raise KeyError(f"{self.kind} records cannot compute {metric!r}; known: {known}")
        name = metric[len(self.prefix) :]
        w = as_weights(weights, self.num_images).astype(np.int64)
        thresholds = list(range(len(self.iou_thresholds)))
        cats = list(range(len(self.categories)))
        if name in ("AP50", "AP75"):
            target = 0.5 if name == "AP50" else 0.75
            thresholds = [i for i, t in enumerate(self.iou_thresholds) if abs(t - target) < 1e-9]
        elif name.startswith("AP-"):
            cats = [self._names().index(name[3:])]
        total = np.zeros(len(w))
        count = np.zeros(len(w))
        for k in cats:
            npig = w @ self.n_gt[:, k].astype(np.int64)
            valid = npig > 0
            if not valid.any():
                continue
            value = self._category_precision(w, self._sorted(k), thresholds, npig)
            total += np.where(valid, value, 0.0)
            count += valid
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan) * 100

    def _sorted(self, k: int) -> np.ndarray:
        """Detections of category ``k`` in COCOeval's order: stable sort by descending score
        of their concatenation in image order."""
        if k not in self._order:
            idx = np.flatnonzero(self.det_category == k)
            idx = idx[np.argsort(self.det_image[idx], kind="stable")]
            self._order[k] = idx[np.argsort(-self.det_score[idx], kind="mergesort")]
        return self._order[k]

    def _category_precision(
        self, w: np.ndarray, dets: np.ndarray, thresholds: list[int], npig: np.ndarray
    ) -> np.ndarray:
        """Per resample, the mean over ``thresholds`` and the 101 recall points of the
        interpolated precision of one category's ranked detections ``dets``.

        Only true positives matter: the recall levels are first reached at them, and the
        monotone envelope of precision is a maximum over them (precision only drops after a
        false positive). At a true positive, TP + FP = the weighted count of non-ignored
        detections ranked up to it. Resamples are processed in blocks (memory bound).
        """
        b_all = len(w)
        out = np.zeros(b_all)
        if dets.size == 0:
            return out
        tp_bits, fp_bits = self.det_tp[dets], self.det_fp[dets]
        counted = tp_bits | fp_bits  # bit t: not ignored at threshold t
        full = (1 << len(self.iou_thresholds)) - 1
        shared = bool(np.all(counted & full == full))  # nothing ignored at any threshold
        img = self.det_image[dets]
        dtype = np.int32 if int(w.sum(1).max(initial=0)) * len(dets) < 2**31 else np.int64
        w = w.astype(dtype, copy=False)
        rows = max(1, _BLOCK // len(dets))
        for lo in range(0, b_all, rows):
            wd = np.take(w[lo : lo + rows], img, axis=1)  # [b, detections]: each one's image weight
            seen = np.cumsum(wd, axis=1, dtype=dtype) if shared else None
            need = _recall_counts(npig[lo : lo + rows])  # [b, R]
            for t in thresholds:
                tp_pos = np.flatnonzero((tp_bits >> t) & 1)
                if tp_pos.size == 0:
                    continue
                tp_cum = np.cumsum(wd[:, tp_pos], axis=1, dtype=dtype)
                if seen is not None:
                    upto = seen[:, tp_pos]
                else:
                    mask = ((counted >> t) & 1).astype(dtype)
                    upto = np.cumsum(wd * mask, axis=1, dtype=dtype)[:, tp_pos]
                out[lo : lo + rows] += _interpolated(tp_cum, upto, need)
        return out / len(thresholds)


def _interpolated(tp_cum: np.ndarray, upto: np.ndarray, need: np.ndarray) -> np.ndarray:
    """``[b]``: mean over recall points of COCO's interpolated precision, per resample (row).

    ``tp_cum`` / ``upto``: ``[b, n]`` cumulative true positives / counted detections at each
    true positive; ``need``: ``[b, R]`` true positives each recall point needs. The envelope at
    the first true positive reaching point r is max(precision from there on): the maximum of
    each segment between consecutive points (one ``maximum.reduceat`` pass), then a running
    maximum over the 101 points from the last."""
    b, n = tp_cum.shape
    padded = np.zeros((b, n + 1))  # a 0 after each row: "never reached" reads 0
    np.divide(tp_cum, upto + np.spacing(1), out=padded[:, :n])  # COCO: tp / (fp + tp + eps)
    # First true positive reaching each point: one search in the rows laid end to end, each
    # row shifted above the previous one (counts never exceed ``top``).
    need = np.minimum(need, tp_cum[:, -1:].astype(np.int64) + 1)  # beyond the last: unreachable
    shift = (np.arange(b, dtype=np.int64) * (int(tp_cum[:, -1].max()) + 2))[:, None]
    first = np.searchsorted((tp_cum + shift).ravel(), (need + shift).ravel(), side="left").reshape(b, -1)
    first -= (np.arange(b, dtype=np.int64) * n)[:, None]
    base = (np.arange(b, dtype=np.int64) * (n + 1))[:, None]
    bounds = np.concatenate([first + base, base + n], axis=1).ravel()
    seg = np.maximum.reduceat(padded.ravel(), bounds).reshape(b, -1)[:, :-1]
    q = np.maximum.accumulate(seg[:, ::-1], axis=1)[:, ::-1]
    return q.mean(1)


def _recall_counts(npig: np.ndarray) -> np.ndarray:
    """``[B, R]``: the fewest true positives whose recall ``tp / npig`` (computed in float64 as
    COCOeval does) reaches each recall point; a huge count where ``npig`` is 0."""
    n = npig.astype(np.float64)[:, None]
    m = np.maximum(np.floor(RECALL_THRESHOLDS[None] * n) - 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(4):
            low = (m / n) < RECALL_THRESHOLDS[None]
            if not low.any():
                break
            m = m + low
    m = np.where(n > 0, m, np.iinfo(np.int32).max)
    return m.astype(np.int64)


def coco_records(
    kind: str,
    prefix: str,
    evaluator: Any | None,
    images: Sequence[int],
    categories: Sequence[int],
    category_names: Sequence[str],
    gts: Sequence[dict[str, Any]] = (),
) -> DetectionRecords:
    """Records from a COCOeval after ``evaluate()`` (area range ``all``, the last maxDets);
    without one (no detection at all) from the ground truth alone: every image's non-crowd
    ground truths, no detection."""
    img_index = {int(i): n for n, i in enumerate(images)}
    cat_index = {int(c): n for n, c in enumerate(categories)}
    n_gt = np.zeros((len(images), len(categories)), np.int64)
    det_img: list[int] = []
    det_cat: list[int] = []
    scores: list[np.ndarray] = []
    tps: list[np.ndarray] = []
    fps: list[np.ndarray] = []
    thresholds: tuple[float, ...] = tuple(IOU_THRESHOLDS.tolist())
    if evaluator is None:
        for g in gts:
            if not g.get("iscrowd") and not g.get("ignore"):
                n_gt[img_index[int(g["image_id"])], cat_index[int(g["category_id"])]] += 1
    else:
        p = evaluator.params
        thresholds = tuple(float(t) for t in p.iouThrs)
        bits = (1 << np.arange(len(thresholds), dtype=np.int64))[:, None]
        area_all = [tuple(a) for a in p.areaRng].index(tuple(p.areaRng[p.areaRngLbl.index("all")]))
        n_img, n_area = len(p.imgIds), len(p.areaRng)
        for kk, cat in enumerate(p.catIds):
            for ii, img in enumerate(p.imgIds):
                e = evaluator.evalImgs[kk * n_area * n_img + area_all * n_img + ii]
                if e is None:
                    continue
                i, k = img_index[int(img)], cat_index[int(cat)]
                n_gt[i, k] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                d = len(e["dtScores"])
                if not d:
                    continue
                matched = np.asarray(e["dtMatches"]).reshape(len(thresholds), d) != 0
                ignored = np.asarray(e["dtIgnore"]).reshape(len(thresholds), d).astype(bool)
                tps.append(((matched & ~ignored) * bits).sum(0))
                fps.append(((~matched & ~ignored) * bits).sum(0))
                scores.append(np.asarray(e["dtScores"], np.float64))
                det_img += [i] * d
                det_cat += [k] * d
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    return DetectionRecords(
        kind=kind,
        images=np.asarray(images, np.int64),
        categories=np.asarray(categories, np.int64),
        n_gt=n_gt,
        det_image=np.asarray(det_img, np.int64),
        det_category=np.asarray(det_cat, np.int64),
        det_score=cat(scores, np.float64),
        det_tp=cat(tps, np.int32),
        det_fp=cat(fps, np.int32),
        category_names=tuple(category_names),
        iou_thresholds=thresholds,
        prefix=prefix,
    )


__all__ = ["IOU_THRESHOLDS", "RECALL_THRESHOLDS", "DetectionRecords", "coco_records"]
