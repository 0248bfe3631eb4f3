"""Loss handling: the deferred read-back of the loss terms and its NaN / inf check."""

from __future__ import annotations

import math

import pytest
import torch

from raybench.engine.losses import LossBuffer, NonFiniteLossError


def test_loss_buffer_reads_back_in_order_once_due():
    buf = LossBuffer(3)
    names = ["a", "b"]
    assert buf.add(1, names, torch.tensor([1.0, 2.0])) == []
    assert buf.add(2, names, torch.tensor([3.0, 4.0])) == []
    assert not buf.due
    buf.add(3, names, torch.tensor([5.0, 6.0]))
    assert buf.due and len(buf) == 3
    assert buf.flush() == [(1, {"a": 1.0, "b": 2.0}), (2, {"a": 3.0, "b": 4.0}), (3, {"a": 5.0, "b": 6.0})]
    assert len(buf) == 0 and buf.flush() == []


def test_loss_buffer_flushes_when_the_terms_change():
    buf = LossBuffer(10)
    buf.add(1, ["a"], torch.tensor([1.0]))
    # A different set of terms cannot be stacked with the pending rows: they are read back first.
    assert buf.add(2, ["a", "b"], torch.tensor([2.0, 3.0])) == [(1, {"a": 1.0})]
    assert buf.flush() == [(2, {"a": 2.0, "b": 3.0})]


def test_loss_buffer_names_the_first_non_finite_iteration_and_term():
    buf = LossBuffer(5)
    buf.add(7, ["a", "b"], torch.tensor([1.0, 1.0]))
    buf.add(8, ["a", "b"], torch.tensor([1.0, math.inf]))
    buf.add(9, ["a", "b"], torch.tensor([math.nan, math.nan]))
    with pytest.raises(NonFiniteLossError, match=r"iteration 8: b = inf") as info:
        buf.flush()
    assert (info.value.iteration, info.value.term) == (8, "b")
    with pytest.raises(ValueError, match="sync period must be >= 1"):
        LossBuffer(0)
