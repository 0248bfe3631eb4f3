"""Unit tests of the Mask2Former port's parts: deformable attention, matcher, targets, inference, loss."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from raybench.models.mask2former import (
    HungarianMatcher,
    Mask2FormerCriterion,
    Mask2FormerHead,
    MaskedTransformerDecoder,
    MSDeformAttnPixelDecoder,
    multi_scale_deformable_attention,
    semantic_inference,
    semantic_to_targets,
)
from raybench.models.mask2former.matcher import pairwise_dice, pairwise_sigmoid_ce
from raybench.models.mask2former.ms_deform_attn import multi_scale_deformable_attention_grid_sample
from raybench.study.model_options import Mask2FormerOptions

RESNET_CHANNELS = (256, 512, 1024, 2048)


def test_deformable_attention_matches_grid_sample_with_gradients():
    """Values and all three gradients equal the per-level grid_sample formulation.

    Non-square levels and locations beyond every border (zero padding) are included.
    """
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 10), (3, 5), (2, 3)]
    batch, heads, channels, points = 2, 4, 8, 3
    num_values = sum(h * w for h, w in shapes)
    num_queries = 7
    value = torch.randn(batch, num_values, heads, channels, generator=gen, dtype=torch.float64)
    locations = torch.rand(
        batch, num_queries, heads, len(shapes), points, 2, generator=gen, dtype=torch.float64
    )
    locations = locations * 1.6 - 0.3
    weights = torch.rand(batch, num_queries, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    inputs = [t.requires_grad_(True) for t in (value, locations, weights)]
    ours = multi_scale_deformable_attention(inputs[0], shapes, inputs[1], inputs[2])
    ref = multi_scale_deformable_attention_grid_sample(
        inputs[0].float(), shapes, inputs[1].float(), inputs[2].float()
    )
    assert ours.shape == (batch, num_queries, heads * channels)
    assert torch.allclose(ours.double(), ref.double(), atol=1e-5)
    grad_out = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out.float())
    for name, a, b in zip(("value", "locations", "weights"), ours_grads, ref_grads):
        assert torch.allclose(a.double(), b.double(), atol=1e-4), name


def test_pairwise_costs_match_elementwise_definitions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=gen)
    targets = (torch.rand(3, 50, generator=gen) > 0.5).float()
    ce = torch.nn.functional.binary_cross_entropy_with_logits
    expected_ce = torch.stack([torch.stack([ce(q, t) for t in targets]) for q in logits])
    assert torch.allclose(pairwise_sigmoid_ce(logits, targets), expected_ce, atol=1e-5)
    p = logits.sigmoid()
    expected_dice = 1 - (2 * p @ targets.t() + 1) / (p.sum(1)[:, None] + targets.sum(1)[None] + 1)
    assert torch.allclose(pairwise_dice(logits, targets), expected_dice, atol=1e-6)


def test_matcher_finds_the_known_assignment():
    """Query 3 predicts target 0 perfectly, query 1 target 1; the other queries predict nothing."""
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16] = True
    masks[1, 20:, 8:24] = True
    labels = torch.tensor([2, 0])
    num_queries, num_classes = 5, 3
    pred_masks = torch.full((1, num_queries, 8, 8), -8.0)
    small = torch.nn.functional.interpolate(masks[None].float(), size=(8, 8), mode="area")[0]
    pred_masks[0, 3] = (small[0] - 0.5) * 16
    pred_masks[0, 1] = (small[1] - 0.5) * 16
    pred_logits = torch.zeros(1, num_queries, num_classes + 1)
    pred_logits[0, :, -1] = 4.0  # "no object" by default
    pred_logits[0, 3, 2] = 6.0
    pred_logits[0, 1, 0] = 6.0
    matcher = HungarianMatcher(class_cost=2.0, mask_cost=5.0, dice_cost=5.0, num_points=3000)
    gen = torch.Generator().manual_seed(0)
    [(queries, tgts)] = matcher(pred_logits, pred_masks, [{"labels": labels, "masks": masks}], gen)
    assignment = dict(zip(tgts.tolist(), queries.tolist()))
    assert assignment == {0: 3, 1: 1}
    assert queries.dtype == tgts.dtype == torch.int64


def test_matcher_handles_an_image_without_targets():
    matcher = HungarianMatcher(class_cost=2.0, mask_cost=5.0, dice_cost=5.0, num_points=100)
    target = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    [(queries, tgts)] = matcher(torch.randn(1, 4, 3), torch.randn(1, 4, 4, 4), [target])
    assert queries.numel() == tgts.numel() == 0


def test_semantic_to_targets_one_mask_per_present_class():
    sem = torch.tensor([[0, 0, 3], [255, 3, 3], [1, 255, 0]])
    targets = semantic_to_targets(sem, num_classes=4)
    assert targets["labels"].tolist() == [0, 1, 3]
    assert targets["labels"].dtype == torch.int64
    assert targets["masks"].dtype == torch.bool
    assert targets["masks"].shape == (3, 3, 3)
    for label, mask in zip(targets["labels"], targets["masks"]):
        assert torch.equal(mask, sem == label)
    # Ignore pixels belong to no mask (they are negatives of every mask in the loss).
    assert not targets["masks"][:, sem == 255].any()
    empty = semantic_to_targets(torch.full((4, 4), 255), num_classes=4)
    assert empty["labels"].numel() == 0 and empty["masks"].shape == (0, 4, 4)
    with pytest.raises(ValueError):
        semantic_to_targets(torch.tensor([[4]]), num_classes=4)


def test_semantic_inference_shapes_and_values():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 4, generator=gen)  # K = 3 plus "no object"
    masks = torch.randn(2, 6, 5, 7, generator=gen)
    scores = semantic_inference(logits, masks)
    assert scores.shape == (2, 3, 5, 7)
    probs = logits.softmax(-1)[..., :-1]
    b, c, y, x = 1, 2, 3, 4
    expected = sum(probs[b, q, c] * masks[b, q, y, x].sigmoid() for q in range(6))
    assert scores[b, c, y, x].item() == pytest.approx(expected.item(), rel=1e-5)
    upsampled = semantic_inference(logits, masks, size=(20, 28))
    assert upsampled.shape == (2, 3, 20, 28)
    # A single confident query: its class wins where its mask is on.
    one_logits = torch.tensor([[[0.0, 9.0, 0.0, 0.0]]])
    one_mask = torch.full((1, 1, 2, 2), -9.0)
    one_mask[0, 0, 0, 0] = 9.0
    assert semantic_inference(one_logits, one_mask)[0].argmax(0)[0, 0].item() == 1


def test_head_shapes_loss_keys_and_empty_targets():
    options = Mask2FormerOptions(
        hidden_dim=64,
        conv_dim=64,
        mask_dim=64,
        num_queries=6,
        nheads=4,
        enc_layers=1,
        dec_layers=3,
        enc_dim_feedforward=64,
        dim_feedforward=64,
        num_points=64,
    )
    head = Mask2FormerHead.from_options(options, num_classes=2, in_channels=RESNET_CHANNELS).train()
    features = [torch.randn(2, c, 64 // s, 48 // s) for c, s in zip(RESNET_CHANNELS, (4, 8, 16, 32))]
    out = head(features)
    assert out["pred_logits"].shape == (2, 6, 3)
    assert out["pred_masks"].shape == (2, 6, 16, 12)
    assert len(out["aux_outputs"]) == 2  # dec_layers counts the prediction from the learnt queries
    sem = torch.zeros(64, 48, dtype=torch.int64)
    sem[10:30, 5:20] = 1
    targets = [semantic_to_targets(sem, 2), semantic_to_targets(torch.full((64, 48), 255), 2)]
    terms = head.loss(out, targets, generator=torch.Generator().manual_seed(0))
    expected = {f"{n}{s}" for n in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")} | {"loss"}
    assert set(terms) == expected
    terms["loss"].backward()
    assert all(p.grad is not None for p in head.parameters())
    # A batch without any target trains every query towards "no object"; the mask terms are zero.
    out = head(features)
    empty = [semantic_to_targets(torch.full((64, 48), 255), 2)] * 2
    terms = head.loss(out, empty)
    assert terms["loss_mask"].item() == 0.0 and terms["loss_ce"].item() > 0
    terms["loss"].backward()


def test_config_validation():
    with pytest.raises(ValueError):
        Mask2FormerHead.from_options(Mask2FormerOptions(), num_classes=2, in_channels=(96, 192, 384))
    with pytest.raises(ValueError):
        Mask2FormerHead.from_options(
            Mask2FormerOptions(dec_layers=0), num_classes=2, in_channels=RESNET_CHANNELS
        )


def test_the_options_are_the_one_declaration_of_the_heads_defaults():
    """The head and its configurable parts take keyword-only arguments without defaults (the
    official Mask2Former's pattern); the head's arguments are exactly the fields of
    ``Mask2FormerOptions`` plus what the data and the backbone give, so no copier renames one."""
    for cls in (
        Mask2FormerHead,
        Mask2FormerCriterion,
        HungarianMatcher,
        MSDeformAttnPixelDecoder,
        MaskedTransformerDecoder,
    ):
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        assert params, cls.__name__
        assert [p.name for p in params if p.kind is not p.KEYWORD_ONLY] == [], cls.__name__
        assert [p.name for p in params if p.default is not p.empty] == [], cls.__name__
    head_args = set(inspect.signature(Mask2FormerHead.__init__).parameters) - {"self"}
    fields = {f.name for f in dataclasses.fields(Mask2FormerOptions)}
    assert head_args == fields | {"num_classes", "in_channels"}
