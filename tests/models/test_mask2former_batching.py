"""The batched criterion / matcher / targets equal the reference, and a step makes no stray host syncs.

The parity tests (``test_mask2former_parity.py``) compare whole models on one batch layout; these
cover what batching could get wrong there: images with no target, with more targets than queries,
of different sizes, and the host synchronisations a GPU step would pay.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch.utils._python_dispatch import TorchDispatchMode

from raybench.models.mask2former import (
    HungarianMatcher,
    Mask2FormerHead,
    ms_deform_attn,
    semantic_to_targets,
    semantic_to_targets_batch,
)
from raybench.models.mask2former.criterion import Mask2FormerCriterion
from raybench.models.mask2former.matcher import pairwise_dice, pairwise_sigmoid_ce, sample_targets
from raybench.models.mask2former.point_sampling import point_sample
from raybench.study.model_options import Mask2FormerOptions

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers (imported in a test) stays offline

K = 3


def _targets(gen: torch.Generator, sizes, counts) -> list[dict[str, torch.Tensor]]:
    out = []
    for (h, w), n in zip(sizes, counts):
        labels = torch.randperm(K, generator=gen)[:n] if n <= K else torch.randint(0, K, (n,), generator=gen)
        masks = torch.rand(n, h, w, generator=gen) > 0.6
        out.append({"labels": labels.to(torch.int64), "masks": masks})
    return out


def _predictions(gen: torch.Generator, num_preds: int, batch: int, queries: int, h: int, w: int):
    return [
        (
            torch.randn(batch, queries, K + 1, generator=gen),
            torch.randn(batch, queries, h, w, generator=gen) * 3,
        )
        for _ in range(num_preds)
    ]


@pytest.mark.parametrize("sizes", [[(32, 48)] * 3, [(32, 48), (40, 24), (16, 16)]], ids=["same", "mixed"])
def test_batched_matching_equals_per_image_matching(sizes):
    """One batched cost computation + one host copy gives each (prediction, image) its own optimum."""
    gen = torch.Generator().manual_seed(0)
    queries, points = 4, 500
    counts = [2, 0, 6]  # an image without targets, one with more targets than queries
    targets = _targets(gen, sizes, counts)
    predictions = _predictions(gen, 3, len(targets), queries, 8, 12)
    coords = torch.rand(len(predictions), len(targets), points, 2, generator=gen)
    matcher = HungarianMatcher(class_cost=2.0, mask_cost=5.0, dice_cost=5.0, num_points=points)
    labels = torch.nn.utils.rnn.pad_sequence([t["labels"] for t in targets], batch_first=True)
    masks = [t["masks"].float() for t in targets]
    matching = matcher.match(predictions, labels, counts, sample_targets(masks, coords), coords)

    pairs = []
    for i, (logits, pred_masks) in enumerate(predictions):
        for b, t in enumerate(targets):
            tgt = point_sample(masks[b][None], coords[i, b][None])[0]
            pred = point_sample(pred_masks[b : b + 1], coords[i, b][None])[0]
            cost = (
                5.0 * pairwise_sigmoid_ce(pred, tgt)
                - 2.0 * logits[b].softmax(-1)[:, t["labels"]]
                + 5.0 * pairwise_dice(pred, tgt)
            )
            rows, cols = linear_sum_assignment(cost.numpy())
            got_rows, got_cols = matching.host[i][b]
            assert len(got_rows) == min(queries, counts[b])
            # Same optimal total cost (ties may pick another optimum), and a valid one-to-one match.
            assert cost.numpy()[got_rows, got_cols].sum() == pytest.approx(
                cost.numpy()[rows, cols].sum(), rel=1e-5, abs=1e-5
            )
            assert len(set(got_cols.tolist())) == len(got_cols)
            pairs += [(i, b, q, j) for q, j in zip(got_rows.tolist(), got_cols.tolist())]
    flat = torch.stack([matching.pred, matching.image, matching.query, matching.target], 1).tolist()
    assert [tuple(p) for p in flat] == pairs  # device indices in prediction -> image -> query order
    matched = [min(queries, n) for n in counts]
    slots = [i * matched[b] + r for i in range(3) for b in range(3) for r in range(matched[b])]
    assert matching.slot.tolist() == slots


def _hf_criterion(queries: int, points: int):
    from transformers import Mask2FormerConfig as HFConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = HFConfig(num_labels=K, num_queries=queries, train_num_points=points)
    return Mask2FormerLoss(config, {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})


@pytest.mark.parametrize(
    "sizes, counts",
    [([(32, 48), (32, 48), (32, 48)], [2, 0, 6]), ([(32, 48), (40, 24), (24, 40)], [3, 1, 2])],
    ids=["empty-image-and-more-targets-than-queries", "mixed-sizes"],
)
def test_batched_criterion_equals_transformers_loss(sizes, counts):
    """Loss terms and gradients equal transformers' ``Mask2FormerLoss`` (looped per image and layer)."""
    gen = torch.Generator().manual_seed(1)
    queries, points, num_preds = 4, 600, 3
    targets = _targets(gen, sizes, counts)
    raw = _predictions(gen, num_preds, len(targets), queries, 8, 12)
    ours_in = [(a.clone().requires_grad_(True), m.clone().requires_grad_(True)) for a, m in raw]
    ref_in = [(a.clone().requires_grad_(True), m.clone().requires_grad_(True)) for a, m in raw]

    ref = _hf_criterion(queries, points)
    torch.manual_seed(7)
    ref_terms = ref(
        ref_in[0][1],
        ref_in[0][0],
        [t["masks"].float() for t in targets],
        [t["labels"] for t in targets],
        [{"masks_queries_logits": m, "class_queries_logits": a} for a, m in ref_in[1:]],
    )
    options = Mask2FormerOptions(num_points=points)
    matcher = HungarianMatcher(
        class_cost=options.class_cost,
        mask_cost=options.mask_weight,
        dice_cost=options.dice_weight,
        num_points=points,
    )
    criterion = Mask2FormerCriterion(
        num_classes=K,
        matcher=matcher,
        class_weight=options.class_weight,
        mask_weight=options.mask_weight,
        dice_weight=options.dice_weight,
        no_object_weight=options.no_object_weight,
        num_points=points,
        oversample_ratio=options.oversample_ratio,
        importance_sample_ratio=options.importance_sample_ratio,
    )
    outputs = {
        "pred_logits": ours_in[0][0],
        "pred_masks": ours_in[0][1],
        "aux_outputs": [{"pred_logits": a, "pred_masks": m} for a, m in ours_in[1:]],
    }
    torch.manual_seed(7)
    terms = criterion(outputs, targets)

    weights = {
        "loss_cross_entropy": ("loss_ce", 2.0),
        "loss_mask": ("loss_mask", 5.0),
        "loss_dice": ("loss_dice", 5.0),
    }
    assert len(terms) == len(ref_terms) == 3 * num_preds
    for name, value in ref_terms.items():
        base = next(k for k in weights if name.startswith(k))
        ours_name, weight = weights[base][0] + name[len(base) :], weights[base][1]
        assert terms[ours_name].item() == pytest.approx(value.item() * weight, rel=1e-5, abs=1e-6), name
    sum(terms.values()).backward()
    sum(ref_terms[n] * weights[next(k for k in weights if n.startswith(k))][1] for n in ref_terms).backward()
    for (a, m), (ra, rm) in zip(ours_in, ref_in):
        assert torch.allclose(a.grad, ra.grad, atol=1e-6, rtol=1e-4)
        assert torch.allclose(m.grad, rm.grad, atol=1e-7, rtol=1e-4)


def test_semantic_to_targets_batch_equals_per_image():
    gen = torch.Generator().manual_seed(2)
    sem = torch.randint(0, 4, (3, 5, 7), generator=gen)
    sem[0, :2] = 255
    sem[1] = 255  # all ignore: no target
    sem[2] = torch.where(sem[2] == 1, 3, sem[2])  # class 1 absent
    batched = semantic_to_targets_batch(sem, 4)
    assert len(batched) == 3
    for b, got in enumerate(batched):
        want = semantic_to_targets(sem[b], 4)
        assert got["labels"].tolist() == want["labels"].tolist() and got["labels"].dtype == torch.int64
        assert got["masks"].dtype == torch.bool and torch.equal(got["masks"], want["masks"])
    assert batched[1]["labels"].numel() == 0 and batched[1]["masks"].shape == (0, 5, 7)
    sem[2, 0, 0] = 7
    with pytest.raises(ValueError, match=r"0\.\.3 or be 255, got \[.*7\]"):
        semantic_to_targets_batch(sem, 4)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        semantic_to_targets_batch(sem[0], 4)


# Ops that make the host wait for a CUDA device.
_SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::_unique2",
    "aten::bincount",
    "aten::masked_select",
}


class _CountSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in _SYNC_OPS:
            self.ops[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def test_training_step_reads_the_device_once(monkeypatch):
    """Targets, forward, loss and backward: no scalar read, no data-dependent shape, and exactly
    one device-to-host copy in the loss (the matcher's costs) and one for the targets."""
    options = Mask2FormerOptions(
        hidden_dim=32, conv_dim=32, mask_dim=32, num_queries=5, nheads=4,
        enc_layers=1, dec_layers=3, enc_dim_feedforward=32, dim_feedforward=32, num_points=64,
    )  # fmt: skip
    channels = (96, 192, 384, 768)
    head = Mask2FormerHead.from_options(options, num_classes=K, in_channels=channels).train()
    gen = torch.Generator().manual_seed(3)
    features = [torch.randn(2, c, 64 // s, 64 // s, generator=gen) for c, s in zip(channels, (4, 8, 16, 32))]
    sem = torch.randint(0, K, (2, 64, 64), generator=gen)
    sem[1, :8] = 255
    head.loss(head(features), semantic_to_targets_batch(sem, K))["loss"].backward()  # warm caches

    reads = Counter()
    original_cpu = torch.Tensor.cpu

    def counting_cpu(t, *a, **k):
        reads["cpu"] += 1
        return original_cpu(t, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    with _CountSyncs() as mode:
        targets = semantic_to_targets_batch(sem, K)
        assert reads["cpu"] == 1
        out = head(features)
        assert reads["cpu"] == 1
        terms = head.loss(out, targets)
        assert reads["cpu"] == 2
        terms["loss"].backward()
    assert reads["cpu"] == 2
    assert not mode.ops, dict(mode.ops)


def test_deformable_attention_chunking_does_not_change_gradients(monkeypatch):
    """The corner-weight gradients are chunked (small on CPU, large on a GPU): same numbers."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(6, 10), (3, 5)]
    value = torch.randn(2, 75, 2, 8, generator=gen)
    locations = torch.rand(2, 9, 2, 2, 3, 2, generator=gen) * 1.4 - 0.2
    weights = torch.rand(2, 9, 2, 2, 3, generator=gen)
    grad_out = torch.randn(2, 9, 16, generator=gen)

    def grads(budget: int):
        monkeypatch.setitem(ms_deform_attn._CHUNK_BYTES, "cpu", budget)
        inputs = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        out = ms_deform_attn.multi_scale_deformable_attention(inputs[0], shapes, inputs[1], inputs[2])
        return torch.autograd.grad(out, inputs, grad_out)

    for small, large in zip(grads(1), grads(1 << 30)):
        assert torch.equal(small, large)


def test_matcher_forward_keeps_its_per_image_api():
    """``matcher(logits, masks, targets)`` still returns per-image CPU index pairs."""
    gen = torch.Generator().manual_seed(5)
    targets = _targets(gen, [(16, 16), (16, 16)], [2, 3])
    ((logits, masks),) = _predictions(gen, 1, 2, 4, 4, 4)
    matcher = HungarianMatcher(class_cost=2.0, mask_cost=5.0, dice_cost=5.0, num_points=100)
    out = matcher(logits, masks, targets, torch.Generator().manual_seed(0))
    assert [len(q) for q, _ in out] == [2, 3]
    assert all(q.dtype == j.dtype == torch.int64 and q.device.type == "cpu" for q, j in out)
    assert all(np.all(np.diff(q.numpy()) > 0) for q, _ in out)  # queries ascending, as scipy returns
