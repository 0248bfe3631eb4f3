"""Loader throughput: images/s of one loader process per dataset pipeline.

What a DataLoader worker does per item -- decode + target build + train transforms -- is
timed at the real image sizes on synthetic data written to a temporary folder, with
torch limited to one thread (a worker gets one core). Prints a table and, as its LAST
line, one JSON object. Goal: Severstal >= 150 images/s per core.

    python benchmarks/data_throughput.py [--images 24] [--seconds 3] [--datasets severstal gdxray]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from raybench.data import build_dataset, build_transforms, dataset_class
from raybench.data.synth import synthesize

# name -> synth size (image height) giving the real image size
CASES: dict[str, tuple[int, str]] = {
    "severstal": (256, "1600x256"),
    "rubber_rings": (512, "512x512 (assumed)"),
    "rareplanes": (512, "512x512"),
    "gdxray": (572, "768x572"),
}
SEVERSTAL_GOAL = 150.0
# The synthetic RarePlanes tiles hold military roles outside the 3 classes, like the real ones.
OPTIONS: dict[str, dict[str, Any]] = {"rareplanes": {"unmapped": "skip"}}


def _time(fn: Any, items: list[int]) -> float:
    start = time.perf_counter()
    for i in items:
        fn(i)
    return (time.perf_counter() - start) / len(items) * 1000.0


def bench(name: str, root: Path, seconds: float) -> dict[str, Any]:
    """Throughput of the full train item, plus a per-stage breakdown (ms per image)."""
    cls = dataset_class(name)
    opts = OPTIONS.get(name, {})
    plain = build_dataset(name, root, "train", **opts)
    tf = build_transforms(plain.task, "train", test_short_edge=cls.test_short_edge)
    ds = build_dataset(name, root, "train", transforms=tf, **opts)
    n = len(ds)
    for i in range(min(n, 3)):  # warm-up (allocator, decoder init)
        ds[i]
    count, start = 0, time.perf_counter()
    while True:
        ds[count % n]
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= n:
            break
    items = list(range(n))
    images = [plain.load_image(i) for i in items]
    targets = [plain.load_target(i) for i in items]
    return {
        "image_size": CASES[name][1],
        "images_per_s": round(count / elapsed, 1),
        "decode_ms": round(_time(plain.load_image, items), 2),
        "target_ms": round(_time(plain.load_target, items), 2),
        "transforms_ms": round(_time(lambda i: tf(images[i], targets[i]), items), 2),
        "items_timed": count,
        "pipeline": repr(tf),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="synthetic images per dataset")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing per dataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = one core)")
    parser.add_argument("--datasets", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="gdxray: val_series lists series")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            size = CASES[name][0]
            root = synthesize(name, Path(tmp) / name, images=args.images, size=size, seed=0)
            results[name] = bench(name, root, args.seconds)
    header = f"{'dataset':<14}{'size':<20}{'img/s':>8}{'decode ms':>11}{'target ms':>11}{'transf. ms':>11}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<14}{r['image_size']:<20}{r['images_per_s']:>8}{r['decode_ms']:>11}"
            f"{r['target_ms']:>11}{r['transforms_ms']:>11}"
        )
    summary: dict[str, Any] = {
        "benchmark": "data_throughput",
        "threads": args.threads,
        "images": args.images,
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "pipeline"} for k, v in results.items()},
    }
    if "severstal" in results:
        rate = results["severstal"]["images_per_s"]
        summary["goal"] = {"severstal_min_images_per_s": SEVERSTAL_GOAL, "met": rate >= SEVERSTAL_GOAL}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
