#!/usr/bin/env python
"""Host synchronisations of one Mask2Former training step, phase by phase (targets, forward, loss,
backward): counted by their causes on any device, measured by CUDA itself on a GPU.

A GPU step stalls whenever the host waits for the device: a scalar read (``.item()``, ``bool(t)``),
an op whose output size depends on data (``nonzero``, ``unique``, ``bincount``, boolean indexing),
a device-to-host copy (``.cpu()``, ``.tolist()``), or a blocking host-to-device copy of host data
(``torch.tensor(list, device=...)``, ``.to(device)`` of a tensor built on the host). The CPU has no
such waits, so on CPU this script counts their causes:

* a ``TorchDispatchMode`` counts the ops that synchronise on CUDA;
* ``Tensor.cpu`` / ``numpy`` / ``tolist`` / ``item`` are wrapped and counted as device-to-host reads;
* tensors made on the host (factories called without ``device=``, ``torch.from_numpy``,
  ``torch.as_tensor`` of host data) are tagged, the tag follows every op they feed, and a
  ``.to(device)`` of a tagged tensor counts as a host-to-device copy: blocking unless
  ``non_blocking=True`` (which is asynchronous from pinned memory).

On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` reports every real synchronisation; the script
counts those warnings per phase as well.

``--src DIR`` imports raybench from another checkout (e.g. an older revision, for before/after).
Prints a table and, as its last line, one JSON object.
Usage: python benchmarks/mask2former_syncs.py [--batch 2] [--size 128] [--src DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
import weakref
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHANNELS = (96, 192, 384, 768)
STRIDES = (4, 8, 16, 32)
PHASES = ("targets", "forward", "loss", "backward")

# Ops that make the host wait for a CUDA device (their output size or value is read on the host).
SYNC_OPS = {
    "aten::_local_scalar_dense": "scalar read (.item / bool / int / float)",
    "aten::nonzero": "data-dependent shape",
    "aten::_unique2": "data-dependent shape",
    "aten::unique_dim": "data-dependent shape",
    "aten::unique_consecutive": "data-dependent shape",
    "aten::bincount": "data-dependent shape",
    "aten::masked_select": "data-dependent shape",
    "aten::repeat_interleave": "data-dependent shape",
}


class _IdSet:
    """Weak set of tensors by identity (a WeakSet compares tensors with ``==``, elementwise)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t) -> None:
        key = id(t)
        self._refs[key] = weakref.ref(t, lambda _, key=key: self._refs.pop(key, None))

    def discard(self, t) -> None:
        self._refs.pop(id(t), None)

    def __contains__(self, t) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t


class SyncCounter:
    """Counts, per phase, the causes of host synchronisations (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = {p: Counter() for p in PHASES}
        self.phase = PHASES[0]
        self.host = _IdSet()  # tensors holding host data
        self.read_back = _IdSet()  # results of .cpu() (their .numpy() is not a second read)
        self._undo: list = []

    def add(self, what: str, n: int = 1) -> None:
        self.counts[self.phase][what] += n

    @contextlib.contextmanager
    def active(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func._schema.name
                if name in SYNC_OPS:
                    counter.add(f"{name.split('::')[1]} ({SYNC_OPS[name]})")
                if name == "aten::index" and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])
                ):
                    counter.add("index with a bool mask (data-dependent shape)")
                out = func(*args, **kwargs)
                flat = torch.utils._pytree.tree_leaves((args, kwargs))
                if any(isinstance(t, torch.Tensor) and t in counter.host for t in flat):
                    for t in torch.utils._pytree.tree_leaves(out):
                        if isinstance(t, torch.Tensor):
                            counter.host.add(t)
                return out

        self._patch_python_level(torch)
        try:
            with Mode():
                yield self
        finally:
            for obj, name, original in reversed(self._undo):
                setattr(obj, name, original)
            self._undo.clear()

    def _wrap(self, obj, name: str, make) -> None:
        original = getattr(obj, name)
        self._undo.append((obj, name, original))
        setattr(obj, name, make(original))

    def _patch_python_level(self, torch) -> None:
        counter = self

        def reads(label):
            def make(original):
                def wrapper(t, *a, **k):
                    if not (label == "numpy" and t in counter.read_back):
                        counter.add(f"device -> host ({label})")
                    out = original(t, *a, **k)
                    if label == "cpu" and isinstance(out, torch.Tensor):
                        counter.read_back.add(out)
                    return out

                return wrapper

            return make

        for label in ("cpu", "tolist", "numpy"):  # .item() is counted as aten::_local_scalar_dense
            self._wrap(torch.Tensor, label, reads(label))

        def to_make(original):
            def wrapper(t, *a, **k):
                out = original(t, *a, **k)
                target = k.get("device")
                for x in a:
                    if isinstance(x, (str, torch.device)):
                        target = x
                if target is not None and t in counter.host:
                    blocking = not k.get("non_blocking", False)
                    counter.add("host -> device " + ("(blocking)" if blocking else "(non_blocking)"))
                    counter.host.discard(out)  # now device data (on a CPU run: the same object)
                return out

            return wrapper

        self._wrap(torch.Tensor, "to", to_make)

        def factory(original):
            name = getattr(original, "__name__", "")

            def wrapper(*a, **k):
                out = original(*a, **k)
                host_data = bool(a) and not isinstance(a[0], torch.Tensor)
                if k.get("device") is None:
                    if isinstance(out, torch.Tensor) and (name not in ("tensor", "as_tensor") or host_data):
                        counter.host.add(out)  # made on the host
                elif name in ("tensor", "as_tensor") and host_data:
                    counter.add("host -> device (blocking)")  # host data written straight to the device
                return out

            return wrapper

        for name in ("tensor", "as_tensor", "from_numpy", "full", "zeros", "ones", "empty", "arange"):
            self._wrap(torch, name, factory)


def _inputs(args, torch, device):
    gen = torch.Generator().manual_seed(0)
    size = args.size
    features = [
        torch.randn(args.batch, c, size // s, size // s, generator=gen).to(device)
        for c, s in zip(CHANNELS, STRIDES)
    ]
    sem = torch.zeros(args.batch, size, size, dtype=torch.int64)
    for b in range(args.batch):
        for c in range(1, args.classes):
            y, x = (int(v) for v in torch.randint(0, size - size // 4, (2,), generator=gen))
            sem[b, y : y + size // 8, x : x + size // 4] = c
        sem[b, : size // 16] = 255
    return features, sem.to(device)


def run(args) -> dict:
    sys.path.insert(0, str(Path(args.src).resolve()))
    import torch

    import raybench.models.mask2former as m2f

    device = torch.device(args.device)
    torch.manual_seed(0)
    from raybench.study.model_options import Mask2FormerOptions

    options = Mask2FormerOptions(
        num_queries=args.queries,
        enc_layers=args.enc_layers,
        dec_layers=args.dec_layers,
        num_points=args.points,
    )
    head = m2f.Mask2FormerHead.from_options(options, num_classes=args.classes, in_channels=CHANNELS).to(
        device
    )
    head.train()
    features, sem = _inputs(args, torch, device)
    features = [f.requires_grad_(True) for f in features]
    batched = getattr(m2f, "semantic_to_targets_batch", None)

    def step(mark) -> None:
        mark("targets")
        if batched is not None:
            targets = batched(sem, args.classes)
        else:
            targets = [m2f.semantic_to_targets(s, args.classes) for s in sem]
        mark("forward")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = head(features)
            mark("loss")
            loss = head.loss(out, targets)["loss"]
        mark("backward")
        loss.backward()
        mark("end")

    step(lambda _: None)  # warm-up: caches (position embeddings, constants) as in a training loop
    counter = SyncCounter()

    def set_phase(name: str) -> None:
        if name in PHASES:
            counter.phase = name

    with counter.active():
        step(set_phase)
    cuda_syncs: dict[str, int] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        # Another step with CUDA's own report of every synchronisation (one warning each).
        marks: list[tuple[str, int]] = []
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as records:
                warnings.simplefilter("always")
                step(lambda name: marks.append((name, len(records))))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        cuda_syncs = {name: stop - start for (name, start), (_, stop) in zip(marks, marks[1:])}
    return {
        "src": str(Path(args.src).resolve()),
        "device": str(device),
        "config": {
            "batch": args.batch,
            "size": args.size,
            "queries": args.queries,
            "enc_layers": args.enc_layers,
            "dec_layers": args.dec_layers,
            "points": args.points,
            "classes": args.classes,
        },
        "causes": {p: dict(counter.counts[p]) for p in PHASES},
        "syncs_total": {
            p: sum(v for k, v in counter.counts[p].items() if "non_blocking" not in k) for p in PHASES
        },
        "cuda_sync_warnings": cuda_syncs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(REPO), help="checkout whose raybench package to import")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 16 on CUDA")
    parser.add_argument("--size", type=int, default=None, help="input side; default 128 on CPU, 384 on CUDA")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--enc-layers", type=int, default=6)
    parser.add_argument("--dec-layers", type=int, default=10)
    parser.add_argument("--points", type=int, default=12544)
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (16 if cuda else 2)
    args.size = args.size or (384 if cuda else 128)
    result = run(args)
    print(f"Mask2Former step host-sync causes ({result['device']}, {result['config']}), src {result['src']}")
    for phase in PHASES:
        causes = result["causes"][phase]
        total = result["syncs_total"][phase]
        print(f"  {phase:9s} {total:5d}  " + ", ".join(f"{k}: {v}" for k, v in causes.items()))
    if result["cuda_sync_warnings"]:
        print("  CUDA-reported synchronisations per phase:", result["cuda_sync_warnings"])
    print(json.dumps({"benchmark": "mask2former_syncs", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
