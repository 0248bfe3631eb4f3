"""One Mask2Former training step (forward + loss + backward): raybench's port vs transformers'.

Both implementations get the same config (the paper's: 100 queries, hidden 256, 6 deformable encoder
layers, 10 decoder predictions, 12544 points; ``--small`` shrinks it), the same random backbone
features (ConvNeXt-T channels 96/192/384/768 at strides 4..32) and the same semantic targets, on CPU.

Method:

* time: both implementations are built in one subprocess and their steps alternate (A B, B A, ...),
  so each pair runs under the same machine load; after ``--warmup`` steps each, the wall clock of
  every step is recorded. Reported: median and minimum step time per implementation; as ratios,
  the median of the per-pair ratios (robust to load that changes between pairs) and the ratio of
  the minima (interference only adds time);
* CPU time: the process CPU time of every step too (all threads), and the median of its per-pair
  ratios: on a shared machine far steadier than wall time (with ``--threads 1``, the step's compute);
* peak memory: each implementation alone in a fresh subprocess. After set-up and one warm-up step
  (so that gradient buffers exist in both), freed heap is returned to the OS (``malloc_trim``), the
  kernel's RSS high-water mark is reset (``/proc/self/clear_refs`` = 5) and ``VmRSS`` is read; after
  one more step the new high-water mark ``VmHWM`` minus that baseline is the step's peak extra
  memory. This counts every allocation (torch's CPU allocator, oneDNN scratch, numpy/scipy), unlike
  ``tracemalloc`` (Python objects only). Without ``clear_refs`` it falls back to ``ru_maxrss``.

The transformers step is the same computation ``Mask2FormerForUniversalSegmentation.forward`` does
after its backbone: ``pixel_level_module.decoder`` -> ``transformer_module`` -> ``class_predictor`` on
every intermediate state -> ``get_loss_dict`` -> ``get_loss``.

Usage: ``python benchmarks/mask2former_vs_transformers.py [--small] [--size 512] [--batch 2]``.
Prints a table and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CHANNELS = (96, 192, 384, 768)
STRIDES = (4, 8, 16, 32)
IMPLS = ("transformers", "port")


def _config(args: argparse.Namespace) -> dict:
    if args.small:
        return dict(num_queries=20, enc_layers=2, dec_layers=4, num_points=1000)
    return dict(num_queries=100, enc_layers=6, dec_layers=10, num_points=12544)


def _inputs(args: argparse.Namespace):
    import torch

    from raybench.models.mask2former import semantic_to_targets

    gen = torch.Generator().manual_seed(0)
    size = args.size
    features = [
        torch.randn(args.batch, c, size // s, size // s, generator=gen) for c, s in zip(CHANNELS, STRIDES)
    ]
    targets = []
    for _ in range(args.batch):
        # A coarse random class layout upsampled to blobs, with an ignore band.
        coarse = torch.randint(0, args.classes, (8, 8), generator=gen)
        sem = coarse.repeat_interleave(size // 8, 0).repeat_interleave(size // 8, 1)
        sem[: size // 16] = 255
        targets.append(semantic_to_targets(sem, args.classes))
    return features, targets


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> tuple[int, bool]:
    """Release freed heap, reset the RSS high-water mark; return (baseline RSS kB, reset worked)."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_kb("VmRSS"), True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False


def _build(impl: str, args: argparse.Namespace, features, targets):
    """Model in train mode and a closure running one training step (forward + loss + backward)."""
    import torch

    cfg = _config(args)
    if impl == "port":
        from raybench.models.mask2former import Mask2FormerHead
        from raybench.study.model_options import Mask2FormerOptions

        options = Mask2FormerOptions(
            num_queries=cfg["num_queries"],
            enc_layers=cfg["enc_layers"],
            dec_layers=cfg["dec_layers"],
            num_points=cfg["num_points"],
        )
        model = Mask2FormerHead.from_options(options, num_classes=args.classes, in_channels=CHANNELS).train()

        def step() -> float:
            out = model(features)
            loss = model.loss(out, targets)["loss"]
            loss.backward()
            return loss.item()

    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import Mask2FormerConfig as HFConfig
        from transformers import Mask2FormerForUniversalSegmentation

        model = Mask2FormerForUniversalSegmentation(
            HFConfig(
                num_labels=args.classes,
                num_queries=cfg["num_queries"],
                encoder_layers=cfg["enc_layers"],
                decoder_layers=cfg["dec_layers"],
                train_num_points=cfg["num_points"],
            )
        ).train()
        mask_labels = [t["masks"].float() for t in targets]
        class_labels = [t["labels"] for t in targets]

        def step() -> float:
            pixel = model.model.pixel_level_module.decoder(features)
            tm = model.model.transformer_module(
                multi_scale_features=pixel.multi_scale_features,
                mask_features=pixel.mask_features,
                output_hidden_states=True,
            )
            logits = [model.class_predictor(h.transpose(0, 1)) for h in tm.intermediate_hidden_states]
            masks = tm.masks_queries_logits
            aux = model.get_auxiliary_logits(logits, masks)
            loss_dict = model.get_loss_dict(masks[-1], logits[-1], mask_labels, class_labels, aux)
            loss = model.get_loss(loss_dict)
            loss.backward()
            return loss.item()

    def run() -> float:
        torch.manual_seed(1)
        loss = step()
        model.zero_grad(set_to_none=False)
        return loss

    return run


def _time_worker(args: argparse.Namespace) -> dict:
    """Both implementations in one process, steps alternating: each pair runs under the same load."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features, targets = _inputs(args)
    steps = {impl: _build(impl, args, features, targets) for impl in IMPLS}
    times: dict[str, list[float]] = {key: [] for impl in IMPLS for key in (impl, impl + "_cpu")}
    for i in range(args.warmup + args.steps):
        for impl in IMPLS if i % 2 == 0 else IMPLS[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[impl]()
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - start)
                times[impl + "_cpu"].append(time.process_time() - cpu_start)
    return times


def _memory_worker(args: argparse.Namespace, impl: str) -> dict:
    """Peak extra resident memory of one implementation's training step, alone in a fresh process."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features, targets = _inputs(args)
    step = _build(impl, args, features, targets)
    step()  # warm-up: gradient buffers and caches exist before the baseline
    baseline, exact = _reset_peak()
    step()
    peak = _rss_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_mb": (peak - baseline) / 1024, "peak_method": "VmHWM" if exact else "ru_maxrss"}


def _subprocess(worker: str, passthrough: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, f"--worker={worker}", *passthrough],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{worker} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="20 queries, 2 enc, 4 dec, 1000 points")
    parser.add_argument("--size", type=int, default=512, help="input image side (features at /4../32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per implementation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--worker", choices=["time", *[f"mem-{i}" for i in IMPLS]], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "time":
        print(json.dumps(_time_worker(args)))
        return
    if args.worker:
        print(json.dumps(_memory_worker(args, args.worker[len("mem-") :])))
        return

    passthrough = [
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--classes={args.classes}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--threads={args.threads}",
    ] + (["--small"] if args.small else [])
    times = _subprocess("time", passthrough)
    memory = {impl: _subprocess(f"mem-{impl}", passthrough) for impl in IMPLS}

    paired = [p / t for p, t in zip(times["port"], times["transformers"])]
    # Process CPU time (all threads) of each step: what the step itself cost, far less sensitive
    # than wall time to other jobs on a shared machine (with --threads 1 it is the step's compute).
    paired_cpu = [p / t for p, t in zip(times["port_cpu"], times["transformers_cpu"])]
    summary = {
        impl: {
            "median_step_s": statistics.median(times[impl]),
            "min_step_s": min(times[impl]),
            "peak_extra_mb": memory[impl]["peak_extra_mb"],
            "times_s": [round(t, 3) for t in times[impl]],
            "median_cpu_s": statistics.median(times[impl + "_cpu"]),
            "cpu_times_s": [round(t, 3) for t in times[impl + "_cpu"]],
        }
        for impl in IMPLS
    }
    time_ratio = statistics.median(paired)
    # Interference only ever adds time, so the ratio of the fastest steps is a second, robust view.
    min_ratio = summary["port"]["min_step_s"] / summary["transformers"]["min_step_s"]
    mem_ratio = summary["port"]["peak_extra_mb"] / summary["transformers"]["peak_extra_mb"]

    cfg = _config(args)
    print(
        f"Mask2Former training step on CPU ({args.threads} threads), batch {args.batch}, "
        f"{args.size}x{args.size} input, {args.classes} classes, {cfg}"
    )
    print(f"{'impl':<14}{'median step (s)':>17}{'min step (s)':>14}{'peak extra (MB)':>17}")
    for impl in IMPLS:
        s = summary[impl]
        print(f"{impl:<14}{s['median_step_s']:>17.3f}{s['min_step_s']:>14.3f}{s['peak_extra_mb']:>17.1f}")
    print(f"{'port / ref':<14}{time_ratio:>17.3f}{min_ratio:>14.3f}{mem_ratio:>17.3f}")
    print("(ratios: time = median of per-pair ratios, min = ratio of the fastest steps)")
    cpu_ratio = statistics.median(paired_cpu)
    print(
        f"process CPU time per step (median): transformers {summary['transformers']['median_cpu_s']:.3f} s, "
        f"port {summary['port']['median_cpu_s']:.3f} s, median paired ratio {cpu_ratio:.3f}"
    )

    record = {
        "benchmark": "mask2former_train_step_cpu",
        "config": {
            **cfg,
            "size": args.size,
            "batch": args.batch,
            "classes": args.classes,
            "threads": args.threads,
        },
        "steps_per_impl": args.steps,
        "peak_method": memory["port"]["peak_method"],
        "transformers": summary["transformers"],
        "port": summary["port"],
        "paired_time_ratios": [round(r, 4) for r in paired],
        "time_ratio": round(time_ratio, 4),
        "min_time_ratio": round(min_ratio, 4),
        "paired_cpu_time_ratios": [round(r, 4) for r in paired_cpu],
        "cpu_time_ratio": round(cpu_ratio, 4),
        "memory_ratio": round(mem_ratio, 4),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
