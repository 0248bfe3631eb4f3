"""The benchmarks keep running: each at its smallest setting, on CPU, in a subprocess.

No timing is asserted (figures live in docs/performance.md); these tests check that every
script still runs against the current code and that its last line is the promised JSON object
with the promised fields.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _last_json(args: list[str], timeout: float = 300) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def test_train_step_benchmark_reports_every_figure():
    out = _last_json(
        [
            "benchmarks/train_step.py",
            "--decoders",
            "faster_rcnn",
            "--backbones",
            "convnext_t",
            "--regimes",
            "frozen",
            "--steps",
            "1",
            "--cpu-size",
            "64",
        ]
    )
    assert out["benchmark"] == "train_step" and out["device"] == "cpu"
    (row,) = out["results"]
    assert (row["decoder"], row["backbone"], row["regime"]) == ("faster_rcnn", "convnext_t", "frozen")
    assert row["size"] == [64, 64] and row["batch"] == 2 and row["compiled"] is False
    assert row["imgs_per_s"] > 0 and row["step_s"] > 0 and "error" not in row


def test_mask2former_benchmark_compares_both_implementations():
    out = _last_json(
        [
            "benchmarks/mask2former_vs_transformers.py",
            "--small",
            "--size",
            "64",
            "--steps",
            "1",
            "--warmup",
            "0",
        ]
    )
    for key in ("time_ratio", "memory_ratio"):
        assert key in out and math.isfinite(out[key]) and out[key] > 0, (key, out)


def test_data_throughput_benchmark_covers_the_asked_datasets():
    out = _last_json(
        [
            "benchmarks/data_throughput.py",
            "--images",
            "4",
            "--seconds",
            "0.2",
            "--datasets",
            "severstal",
            "gdxray",
        ]
    )
    assert out["benchmark"] == "data_throughput" and set(out["results"]) == {"severstal", "gdxray"}
    assert out["results"]["severstal"]["image_size"] == "1600x256"  # the real size, not a toy one
    assert all(r["images_per_s"] > 0 for r in out["results"].values())


def test_engine_gpu_benchmark_refuses_cpu_unless_asked(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal is for CPU-only machines")
    proc = subprocess.run(
        [sys.executable, "benchmarks/engine_gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no CUDA device visible" in proc.stderr and "--allow-cpu" in proc.stderr
    out = _last_json(
        [
            "benchmarks/engine_gpu.py",
            "--allow-cpu",
            "--iterations",
            "2",
            "--workers",
            "0",
            "--trials",
            "gdxray-resnet50_gn-supervised-full-s42",
            "--compile-trial",
            "",
            "--out",
            str(tmp_path / "gpu"),
        ]
    )
    assert out["failures"] == []
    (run,) = out["runs"]
    assert run["trial"] == "gdxray-resnet50_gn-supervised-full-s42" and run["iterations"] == 2
    assert run["checkpoint_iteration"] == 1 and run["losses_finite"] is True
    # On CPU the resumed run is bit-exact, so its final metrics equal the straight run's.
    assert run["resumed_metrics"]["train/loss"] == run["metrics"]["train/loss"]
