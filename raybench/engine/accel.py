"""The fast paths of a training step, kept in one place so the engine and the train-step
benchmark (``benchmarks/train_step.py``) run exactly the same code: CUDA backend flags,
model placement (channels-last, ``torch.compile``) and DataLoader options. Nothing here
changes what runs on the CPU, so CPU runs stay bitwise reproducible. (Loss read-back and
NaN detection: :mod:`raybench.engine.losses`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def configure_backends(device: torch.device, *, autotune: bool = True) -> None:
    """TF32 matmuls and (``autotune``) cuDNN autotuning on CUDA. Autotuning pays off when
    convolutions see a few shapes again and again (fixed crops, a handful of resize sizes);
    it costs a search per new shape, so tasks whose heads convolve a data-dependent number
    of regions turn it off (:meth:`raybench.tasks.Task.cudnn_autotune`). TF32 only affects
    fp32 ops outside bf16 autocast. Nothing on CPU, so CPU runs stay bitwise reproducible."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = autotune
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def prepare_model(
    model: nn.Module, device: torch.device, *, channels_last: bool, compile_modules: Sequence[nn.Module] = ()
) -> nn.Module:
    """Move ``model`` to ``device``; on CUDA store convolution weights channels-last (the
    tensor-core layout: every conv then runs NHWC without transposes); compile
    ``compile_modules`` in place (``nn.Module.compile`` keeps parameter names, so checkpoints
    are the same with or without it)."""
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    for module in compile_modules:
        module.compile()
    return model


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place by :func:`prepare_model`."""
    return getattr(module, "_compiled_call_impl", None) is not None


def loader_options(workers: int, device: torch.device, prefetch: int = 4) -> dict[str, Any]:
    """DataLoader options: pinned host memory on CUDA (asynchronous copies), and with worker
    processes: kept alive between evaluations and ``prefetch`` batches ahead per worker."""
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch)
    return options
