"""The fast paths of a training step, kept in one place so the engine and the train-step
benchmark run exactly the same code.

On a GPU a step is launched asynchronously; anything that reads a value back to the host
(``.item()``, ``.cpu()``, ``bool(tensor)``) makes the CPU wait for the GPU and leaves the
GPU idle while the next step is prepared. So the engine keeps each iteration's loss terms
on the device in a :class:`LossBuffer` and reads them back once every ``sync_period``
iterations (and at every log / eval / checkpoint boundary): one transfer, one all-reduce,
and a NaN still reported with its exact iteration and term. On the CPU the same code runs
(the buffer is then just a list), so CPU results do not depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from raybench.engine.distributed import mean_across_workers


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite: training stops instead of corrupting the weights."""

    def __init__(self, iteration: int, term: str, value: float, losses: Mapping[str, float]) -> None:
        self.iteration, self.term, self.value = iteration, term, value
        others = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        super().__init__(f"non-finite loss at iteration {iteration}: {term} = {value} (all terms: {others})")


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


class LossBuffer:
    """Each iteration's loss terms, kept on the device until :meth:`flush` reads them back.

    ``add(iteration, terms)`` takes the iteration's terms as one ``[T]`` tensor (already the
    weighted sum over its micro-batches); :meth:`flush` stacks the pending rows, averages them
    over workers (one all-reduce), copies them to the host (one sync) and returns them in
    order, raising :class:`NonFiniteLossError` for the first non-finite term. Every worker sees
    the same averaged values, so every worker raises together (none is left waiting in a
    collective).
    """

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"sync period must be >= 1, got {period}")
        self.period = period
        self._names: tuple[str, ...] | None = None
        self._rows: list[tuple[int, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def due(self) -> bool:
        return len(self._rows) >= self.period

    def add(
        self, iteration: int, names: Sequence[str], terms: torch.Tensor
    ) -> list[tuple[int, dict[str, float]]]:
        """Queue one iteration; returns what a flush forced by a change of term names read back."""
        names = tuple(names)
        flushed = self.flush() if self._names is not None and names != self._names else []
        self._names = names
        self._rows.append((iteration, terms.detach()))
        return flushed

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        """``[(iteration, {term: value})]`` of every pending iteration, oldest first."""
        if not self._rows:
            return []
        names, rows = self._names or (), self._rows
        self._rows = []
        stacked = mean_across_workers(torch.stack([r for _, r in rows]).to(torch.float64)).cpu()
        out: list[tuple[int, dict[str, float]]] = []
        for (iteration, _), values in zip(rows, stacked.tolist()):
            named = dict(zip(names, values))
            bad = next((k for k, v in named.items() if not math.isfinite(v)), None)
            if bad is not None:
                raise NonFiniteLossError(iteration, bad, named[bad], named)
            out.append((iteration, named))
        return out
