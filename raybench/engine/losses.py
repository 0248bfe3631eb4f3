"""Loss handling: each iteration's loss terms kept on the device, read back in batches,
checked for NaN / inf, and averaged over the logging window.

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

from raybench.engine.distributed import mean_across_workers


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite: training stops instead of corrupting the weights."""

    def __init__(self, iteration: int, term: str, value: float, losses: Mapping[str, float]) -> None:
        self.iteration, self.term, self.value = iteration, term, value
        others = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        super().__init__(f"non-finite loss at iteration {iteration}: {term} = {value} (all terms: {others})")


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


class LossMeters:
    """Per-term loss sums over the current logging window (checkpointed, for exact resume)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.iters = 0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.iters += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.iters) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.iters = {}, 0

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "iters": self.iters}

    def load(self, state: Mapping[str, Any]) -> None:
        self.sums, self.iters = {k: float(v) for k, v in state["sums"].items()}, int(state["iters"])


class LossTracker:
    """The loop's loss bookkeeping: iterations queue their terms in a :class:`LossBuffer`,
    read-backs add them to the window's :class:`LossMeters`."""

    def __init__(self, sync_period: int) -> None:
        self.pending = LossBuffer(sync_period)
        self.meters = LossMeters()

    def add(self, iteration: int, names: Sequence[str], terms: torch.Tensor) -> None:
        """Queue one iteration's terms (read back early only if the term names changed)."""
        for _, named in self.pending.add(iteration, names, terms):
            self.meters.add(named)

    @property
    def due(self) -> bool:
        """``sync_period`` iterations are queued: time to read them back."""
        return self.pending.due

    def read_back(self) -> None:
        """Read every queued iteration back (a non-finite term raises here) into the meters."""
        for _, named in self.pending.flush():
            self.meters.add(named)
