#!/usr/bin/env python
"""Where one Mask2Former training step's time goes: per phase, per op, and its host syncs.

Builds the paper trial's model through its raybench task exactly as ``train_step.py`` does
(random-init backbone, the engine's backend settings, channels-last, bf16 autocast on CUDA, the
recipe's optimizer), on one fixed random batch, then:

1. **phases**: forward hooks on the backbone, the pixel decoder, the transformer decoder and the
   criterion (matching + losses) synchronise the device at every boundary and take the wall
   clock; backward and the optimizer step likewise. Median over ``--steps`` steps. The
   synchronisations serialise host and device, so the phases add up to a bit more than a plain
   step (also reported);
2. **profile**: ``torch.profiler`` (CPU + CUDA) over ``--profile-steps`` plain steps, the same
   phases marked with ``record_function``; the top ops by self device time and by self host
   time, and the number of kernel launches per step;
3. **host syncs**: on CUDA, one more step under ``torch.cuda.set_sync_debug_mode("warn")``,
   every synchronisation counted per phase.

``--src DIR`` imports raybench from another checkout (before / after comparisons). Writes
``profile_<tag>.txt`` (tables) and, with ``--trace``, a Chrome trace into ``--out``; prints
the tables and, as the last line, one JSON object.
Usage: python benchmarks/mask2former_profile.py [--src DIR] [--tag after] [--out DIR] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("backbone", "pixel_decoder", "transformer_decoder", "criterion", "backward", "optimizer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(REPO), help="checkout whose raybench package to import")
    parser.add_argument("--tag", default="after")
    parser.add_argument("--out", default=".")
    parser.add_argument("--arch", default="convnext_t")
    parser.add_argument("--regime", default="full")
    parser.add_argument("--decoder", default="mask2former", help="mask2former (or mask_rcnn: no phases)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--cpu-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace (large)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_step  # noqa: E402  (inserts REPO into sys.path; --src must come first)

    sys.path.insert(0, str(Path(args.src).resolve()))
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import raybench
    from raybench.engine.accel import configure_backends, prepare_model
    from raybench.recipes import build_optimizer
    from raybench.tasks import DatasetMeta, build_task

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    decoder = args.decoder
    trial, h, w, n = train_step.sized_trial(
        decoder, args.arch, args.regime, cuda=cuda, size=args.cpu_size, batch=args.batch
    )
    task = build_task(trial)
    configure_backends(device, autotune=task.cudnn_autotune())
    num_classes = {"faster_rcnn": 1, "mask_rcnn": 3, "mask2former": 4}[decoder]
    meta = DatasetMeta(
        task=trial.task, num_classes=num_classes, class_names=tuple(f"c{i}" for i in range(num_classes))
    )
    model = prepare_model(task.build_model(meta), device, channels_last=True, compile_modules=[])
    model.train()
    optimizer = build_optimizer(model, trial.recipe.optimizer, backbone=task.backbone(model))
    data = task.to_device(task.collate(train_step._batch(decoder, meta, n, h, w, device)), device)

    # Phase boundaries: hooks on the modules, found by class name (same in every revision).
    modules = {"backbone": task.backbone(model)}
    for module in model.modules():
        kind = type(module).__name__
        if kind == "MSDeformAttnPixelDecoder":
            modules["pixel_decoder"] = module
        elif kind == "MaskedTransformerDecoder":
            modules["transformer_decoder"] = module
        elif kind == "Mask2FormerCriterion":
            modules["criterion"] = module
    mode: dict = {"recorder": None, "annotate": False}  # recorder(name) is called at each boundary
    open_ranges: list = []

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def mark(name: str) -> None:
        if mode["recorder"] is not None:
            mode["recorder"](name)

    for name, module in modules.items():

        def pre(_m, _a, name=name):
            mark("start:" + name)
            if mode["annotate"]:
                rf = record_function("phase::" + name)
                rf.__enter__()
                open_ranges.append(rf)

        def post(_m, _a, _o, name=name):
            if mode["annotate"] and open_ranges:
                open_ranges.pop().__exit__(None, None, None)
            mark("end:" + name)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        mark("start:step")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            losses = task.train_step(model, data)
        loss = sum(losses.values())
        mark("start:backward")
        with record_function("phase::backward") if mode["annotate"] else _null():
            loss.backward()
        mark("end:backward")
        mark("start:optimizer")
        with record_function("phase::optimizer") if mode["annotate"] else _null():
            optimizer.step()
        mark("end:optimizer")

    for _ in range(2):  # warm-up: allocator, cuDNN, caches
        step()
    sync()
    plain = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        plain.append(time.perf_counter() - t0)

    marks: list[tuple[str, float]] = []

    def timed(name: str) -> None:
        sync()
        marks.append((name, time.perf_counter()))

    mode["recorder"] = timed
    per_phase: dict[str, list[float]] = {p: [] for p in (*PHASES, "other", "step")}
    for _ in range(args.steps):
        marks.clear()
        step()
        for phase, value in _spans(dict(marks)).items():
            per_phase[phase].append(value)
    mode["recorder"] = None
    phase_ms = {p: round(1000 * statistics.median(v), 2) for p, v in per_phase.items()}

    mode["annotate"] = True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(args.profile_steps):
            step()
        sync()
    mode["annotate"] = False
    events = prof.key_averages()
    device_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    tables = {
        "by_self_device_time": events.table(sort_by=device_key, row_limit=args.rows),
        "by_self_cpu_time": events.table(sort_by="self_cpu_time_total", row_limit=args.rows),
    }
    launches = sum(
        e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
    )
    phase_events = {
        e.key[len("phase::") :]: {
            "cpu_ms_per_step": round(e.cpu_time_total / 1000 / args.profile_steps, 2),
            "device_ms_per_step": round(getattr(e, "device_time_total", 0) / 1000 / args.profile_steps, 2),
        }
        for e in events
        if e.key.startswith("phase::")
    }
    top_ops = [
        {
            "op": e.key,
            "count_per_step": e.count / args.profile_steps,
            "self_device_ms_per_step": round(
                getattr(e, "self_device_time_total", 0) / 1000 / args.profile_steps, 3
            ),
            "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / args.profile_steps, 3),
        }
        for e in sorted(events, key=lambda e: getattr(e, device_key), reverse=True)[: args.rows]
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trace:
        prof.export_chrome_trace(str(out / f"trace_{args.tag}.json"))

    syncs: dict[str, int] = {}
    if cuda:
        counts: list[tuple[str, float]] = []
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            mode["recorder"] = lambda name: counts.append((name, float(len(records))))
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
                mode["recorder"] = None
        syncs = {k: int(v) for k, v in _spans(dict(counts)).items()}

    result = {
        "benchmark": "mask2former_profile",
        "tag": args.tag,
        "src": str(Path(args.src).resolve()),
        "raybench": str(Path(raybench.__file__).parent),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "decoder": decoder,
        "backbone": args.arch,
        "regime": args.regime,
        "batch": n,
        "size": [h, w],
        "step_ms_median": round(1000 * statistics.median(plain), 2),
        "imgs_per_s": round(n / statistics.median(plain), 2),
        "phase_ms_synchronised": phase_ms,
        "profiled_phases": phase_events,
        "kernel_launches_per_step": launches / args.profile_steps if cuda else None,
        "host_syncs_per_step": syncs or None,
        "top_ops": top_ops,
    }
    text = [
        f"{args.tag}: {result['device']} {decoder} {args.arch} {args.regime} batch {n} @ {h}x{w}",
        f"plain step {result['step_ms_median']} ms ({result['imgs_per_s']} img/s); "
        f"kernel launches/step {result['kernel_launches_per_step']}; host syncs/step {syncs or 'n/a (CPU)'}",
        "phase (synchronised at boundaries)      ms",
        *[f"  {p:36s} {v:9.2f}" for p, v in phase_ms.items()],
        "profiled phases (cpu ms / device ms per step): "
        + ", ".join(f"{k} {v['cpu_ms_per_step']}/{v['device_ms_per_step']}" for k, v in phase_events.items()),
        "",
        "top ops by self device time" if cuda else "top ops by self CPU time",
        tables["by_self_device_time"],
        "top ops by self CPU (host) time",
        tables["by_self_cpu_time"],
    ]
    (out / f"profile_{args.tag}.txt").write_text("\n".join(text))
    print("\n".join(text))
    print(json.dumps(result))
    return 0


def _spans(at: dict[str, float]) -> dict[str, float]:
    """Per phase ``end - start`` of a quantity recorded at the boundaries; "other" = the rest of
    the step (the criterion runs inside the head's forward after the decoders: no overlaps)."""
    total = at["end:optimizer"] - at["start:step"]
    spans = {p: at["end:" + p] - at["start:" + p] for p in PHASES if "start:" + p in at and "end:" + p in at}
    return {**{p: spans.get(p, 0.0) for p in PHASES}, "other": total - sum(spans.values()), "step": total}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
