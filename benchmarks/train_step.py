#!/usr/bin/env python
"""Training-step throughput and peak memory per task family x backbone x regime.

Runs without Ray (like the engine): builds each trial's model through its raybench task
(``raybench.tasks.build_task``), feeds random batches in the dataset contract's format, and
times forward + loss + backward + optimizer step. One subprocess per configuration, so peak
memory is per configuration.

- GPU: the paper's sizes (detection 800 x 1088, Mask2Former 384 x 384 crops), bf16
  autocast, channels_last, cudnn.benchmark, fused AdamW; peak = ``max_memory_allocated``;
  model FLOPs from ``torch.utils.flop_counter`` give MFU against ``--peak-tflops``.
- CPU: a stated smaller size (``--cpu-size``, default 256), fp32; peak = growth of the
  process's max RSS during the steps.

Prints a table, then as its last line one JSON object with every figure.
Usage: python benchmarks/train_step.py [--decoders faster_rcnn,mask_rcnn,mask2former]
       [--backbones resnet50_gn,convnext_t] [--regimes frozen,full] [--steps 5] [--batch N]
       [--compile] [--src DIR]

``--src DIR`` imports raybench from another checkout (e.g. an older revision's package, for a
before / after comparison on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAPER = REPO / "experiments" / "paper.yaml"
DATASET_OF = {"faster_rcnn": "gdxray", "mask_rcnn": "rareplanes", "mask2former": "severstal"}
GPU_SIZE = {"faster_rcnn": (800, 1088), "mask_rcnn": (800, 800), "mask2former": (384, 384)}
# Dense bf16 peak of common GPUs (TFLOP/s) for MFU; override with --peak-tflops.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0}


def _trial(decoder: str, arch: str, regime: str):
    import dataclasses

    from raybench.study import load_study

    study = load_study(PAPER, dry_run=True)
    pretraining = "supervised"
    trial = next(
        t
        for t in study.trials
        if t.dataset.id == DATASET_OF[decoder]
        and t.backbone.arch == arch
        and t.backbone.pretraining == pretraining
        and t.regime == regime
    )
    return trial.replace(backbone=dataclasses.replace(trial.backbone, pretrained=False))


def sized_trial(decoder: str, arch: str, regime: str, *, cuda: bool, size: int, batch: int | None):
    """The configuration's trial, image height / width and batch: the GPU sizes on CUDA, else
    ``size`` x ``size`` (the detectors resize to the recipe's sizes, so they are set to it)."""
    import dataclasses

    h, w = GPU_SIZE[decoder] if cuda else (size, size)
    n = batch or (16 if cuda and decoder == "mask2former" else 8 if cuda else 2)
    trial = _trial(decoder, arch, regime)
    if not cuda:
        inp = dataclasses.replace(
            trial.recipe.input,
            train_short_edge=(h,),
            train_max_size=max(h, w),
            test_short_edge=h,
            test_max_size=max(h, w),
            crop_size=(h, w),
        )
        trial = trial.replace(recipe=dataclasses.replace(trial.recipe, input=inp))
    return trial, h, w, n


def _batch(decoder: str, meta, n: int, h: int, w: int, device):
    """Random images + plausible targets in the dataset contract's format."""
    import torch

    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        if decoder == "mask2former":
            sem = torch.zeros(h, w, dtype=torch.int64)
            for c in range(1, meta.num_classes + 1):
                y, x = (
                    torch.randint(0, h - h // 4, (1,), generator=g),
                    torch.randint(0, w - w // 4, (1,), generator=g),
                )
                sem[y : y + h // 8, x : x + w // 4] = c
            items.append((image, {"sem_seg": sem}))
            continue
        k = 6
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(k, 2, generator=g) * torch.tensor([w * 0.15, h * 0.15])
        boxes = torch.cat([xy, xy + wh], 1)
        target = {
            "boxes": boxes,
            "labels": torch.randint(1, meta.num_classes + 1, (k,), generator=g),
            "image_id": i,
        }
        if decoder == "mask_rcnn":
            masks = torch.zeros(k, h, w, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[j, y0:y1, x0:x1] = 1
            target["masks"] = masks
        items.append((image, target))
    return items


def run_one(
    decoder: str,
    arch: str,
    regime: str,
    steps: int,
    batch: int | None,
    size: int,
    compile_backbone: bool = False,
    cudnn_benchmark: str = "task",
) -> dict:
    """One configuration, in this process."""
    import torch

    from raybench.engine.accel import configure_backends, prepare_model
    from raybench.recipes import build_optimizer
    from raybench.tasks import DatasetMeta, build_task

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    trial, h, w, n = sized_trial(decoder, arch, regime, cuda=cuda, size=size, batch=batch)
    task = build_task(trial)
    autotune = task.cudnn_autotune() if cudnn_benchmark == "task" else cudnn_benchmark == "on"
    configure_backends(device, autotune=autotune)  # the engine's own settings: cudnn.benchmark, TF32
    num_classes = {"faster_rcnn": 1, "mask_rcnn": 3, "mask2former": 4}[decoder]
    meta = DatasetMeta(
        task=trial.task, num_classes=num_classes, class_names=tuple(f"c{i}" for i in range(num_classes))
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = task.build_model(meta)
    targets = task.compile_targets(model) if compile_backbone else []
    model = prepare_model(model, device, channels_last=True, compile_modules=targets)
    model.train()
    optimizer = build_optimizer(model, trial.recipe.optimizer, backbone=task.backbone(model))
    batch_items = _batch(decoder, meta, n, h, w, device)
    data = task.to_device(task.collate(batch_items), device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            losses = task.train_step(model, data)
        sum(losses.values()).backward()
        optimizer.step()

    step()  # warm-up (cudnn autotune, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    out = {
        "decoder": decoder,
        "backbone": arch,
        "regime": regime,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "size": [h, w],
        "batch": n,
        "step_s": round(median, 4),
        "imgs_per_s": round(n / median, 2),
        "compiled": compile_backbone,
        "cudnn_benchmark": autotune if cuda else None,
    }
    if cuda:
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        out["tflops_per_step"] = round(flops / 1e12, 3)
        out["achieved_tflops"] = round(flops / median / 1e12, 1)
    else:
        out["peak_rss_delta_gib"] = round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20, 2
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoders", default="faster_rcnn,mask_rcnn,mask2former")
    parser.add_argument("--backbones", default="resnet50_gn,convnext_t")
    parser.add_argument("--regimes", default="frozen,full")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--cpu-size", type=int, default=256, help="square image size on CPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 dense peak for MFU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (recipe.compile)")
    parser.add_argument(
        "--cudnn-benchmark",
        choices=("task", "on", "off"),
        default="task",
        help="cuDNN autotuning: the task's choice (as the engine), or forced on / off",
    )
    parser.add_argument("--src", default=None, help="checkout whose raybench package to import")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args()
    if args.src:  # before anything imports raybench
        sys.path.insert(0, str(Path(args.src).resolve()))
    if args.one:
        decoder, arch, regime = args.one.split(":")
        result = run_one(
            decoder, arch, regime, args.steps, args.batch, args.cpu_size, args.compile, args.cudnn_benchmark
        )
        print("RESULT " + json.dumps(result))
        return 0

    rows = []
    for decoder in args.decoders.split(","):
        for arch in args.backbones.split(","):
            for regime in args.regimes.split(","):
                if arch == "resnet50_gn" and regime == "frozen":
                    continue  # not in the paper's grid
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{decoder}:{arch}:{regime}",
                    "--steps",
                    str(args.steps),
                    "--cpu-size",
                    str(args.cpu_size),
                ]
                if args.batch:
                    cmd += ["--batch", str(args.batch)]
                if args.compile:
                    cmd.append("--compile")
                cmd += ["--cudnn-benchmark", args.cudnn_benchmark]
                if args.src:
                    cmd += ["--src", args.src]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    rows.append(
                        {
                            "decoder": decoder,
                            "backbone": arch,
                            "regime": regime,
                            "error": (proc.stderr or proc.stdout)[-500:],
                        }
                    )
                else:
                    rows.append(json.loads(line[7:]))
                r = rows[-1]
                print(
                    f"{decoder:12s} {arch:12s} {regime:7s} "
                    + (
                        f"{r['imgs_per_s']:8.2f} img/s  step {r['step_s']:.3f}s  "
                        f"batch {r['batch']} @ {r['size']}"
                        if "error" not in r
                        else f"ERROR {r['error'][-200:]}"
                    ),
                    flush=True,
                )
    gpu = next((r.get("gpu") for r in rows if r.get("gpu")), None)
    if gpu:
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
        for r in rows:
            if peak and "achieved_tflops" in r:
                r["mfu"] = round(r["achieved_tflops"] / peak, 4)
    print(json.dumps({"benchmark": "train_step", "device": gpu or "cpu", "results": rows}))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
