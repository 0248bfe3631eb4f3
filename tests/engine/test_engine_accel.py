"""The engine's fast paths: model preparation, backend flags, loader options (the deferred
loss read-back: test_engine_losses.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from raybench.engine.accel import configure_backends, is_compiled, loader_options, prepare_model
from raybench.recipes import build_optimizer
from raybench.study.spec import OptimizerSpec
from tests.helpers.batches import detection_batch


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean((2, 3)))


def test_prepare_model_on_cpu_changes_no_layout_and_compiles_in_place():
    torch.manual_seed(0)
    eager = _Net()
    net = _Net()
    net.load_state_dict(eager.state_dict())
    keys = list(net.state_dict())
    configure_backends(torch.device("cpu"))  # a no-op on CPU: bitwise CPU results stay
    out = prepare_model(net, torch.device("cpu"), channels_last=True, compile_modules=[net.backbone])
    assert out is net and list(net.state_dict()) == keys  # checkpoints look the same compiled or not
    assert net.backbone[0].weight.is_contiguous()  # channels_last is for CUDA only
    assert is_compiled(net.backbone) and not is_compiled(net.head)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x), eager(x), rtol=1e-4, atol=1e-5)


def test_loader_options():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_options(0, cpu) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(6, cuda) == {
        "num_workers": 6,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 4,
    }


def test_cpu_optimizers_keep_the_default_implementation():
    net = _Net()
    for spec in (OptimizerSpec(name="adamw", lr=1e-3), OptimizerSpec(name="sgd", lr=0.1)):
        opt = build_optimizer(net, spec)
        assert not opt.defaults.get("fused")  # fused kernels only when every parameter is on CUDA


def _semantic_batch(task) -> object:
    g = torch.Generator().manual_seed(0)
    sem = torch.randint(0, 3, (64, 64), generator=g)
    sem[40:] = 255
    items = [
        (torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g), {"sem_seg": sem}) for _ in "ab"
    ]
    return task.collate(items)


@pytest.mark.parametrize(
    "name",
    [
        "gdxray-convnext_t-dinov3-full-s42",
        "rareplanes-convnext_t-dinov3-full-s42",
        "severstal-convnext_t-dinov3-full-s42",
    ],
)
def test_channels_last_gives_the_same_losses_and_gradients(repo_root, name):
    """What the engine does on CUDA (weights channels-last), checked on CPU for every decoder:
    no op may depend on the layout (a ``view`` on an NHWC tensor would raise, a kernel that
    ignores strides would return other numbers)."""
    from raybench.study import load_study
    from raybench.tasks import DatasetMeta, build_task

    trial = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True).trial(name)
    task = build_task(trial)
    meta = DatasetMeta(trial.task, 2, ("a", "b"))
    batch = _semantic_batch(task) if trial.task == "semantic" else detection_batch(name.startswith("rare"))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = task.build_model(meta)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        torch.manual_seed(1)  # the same proposal / point sampling in both runs
        losses = task.train_step(model, batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    (la, ga), (lb, gb) = results
    assert la.keys() == lb.keys() and all(math.isfinite(v) for v in la.values())
    for k in la:
        assert lb[k] == pytest.approx(la[k], rel=1e-4, abs=1e-5), k
    assert ga.keys() == gb.keys() and len(ga) > 0
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-5, msg=n)


def test_cudnn_autotuning_is_the_tasks_choice(repo_root):
    from raybench.study import load_study
    from raybench.tasks import build_task

    study = load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)
    choice = {t.decoder: build_task(t).cudnn_autotune() for t in study.trials}
    # Mask R-CNN's mask head sees a new number of regions nearly every step: no autotuning there.
    assert choice == {"mask2former": True, "mask_rcnn": False, "faster_rcnn": True}
    flags = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:  # configure_backends only sets flags, so CUDA's branch is testable without a GPU
        torch.backends.cudnn.benchmark = False
        configure_backends(torch.device("cuda"), autotune=True)
        assert torch.backends.cudnn.benchmark is True and torch.backends.cuda.matmul.allow_tf32 is True
        configure_backends(torch.device("cuda"), autotune=False)
        assert torch.backends.cudnn.benchmark is False
        configure_backends(torch.device("cpu"), autotune=True)  # CPU: nothing changes
        assert torch.backends.cudnn.benchmark is False
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = flags


def test_engine_and_tasks_never_import_ray():
    """The loop must run where Ray is not installed (a plain GPU box, `raybench train`)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import raybench.engine, raybench.tasks, raybench.data, raybench.evaluation, raybench.study\n"
        "from raybench.engine import cli\n"
        "from raybench.tasks import build_task\n"
        "from raybench.study import load_study\n"
        "for t in load_study('experiments/smoke.yaml', dry_run=True).trials:\n"
        "    build_task(t)\n"
        "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
