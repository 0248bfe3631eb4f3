"""Recipes: LR schedules, parameter groups (layer decay, no-wd groups, frozen), clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raybench.backbones import build_backbone
from raybench.recipes import (
    build_optimizer,
    build_scheduler,
    clip_gradients,
    layer_ids,
    lr_factor,
    param_groups,
)
from raybench.study.spec import BackboneSpec, ClipSpec, OptimizerSpec, ScheduleSpec

CONVNEXT_T = BackboneSpec(
    id="cnx", arch="convnext_t", timm_name="convnext_tiny.fb_in1k", pretraining="supervised", pretrained=False
)
RESNET50_GN = BackboneSpec(
    id="r50", arch="resnet50_gn", timm_name="resnet50_gn.a1h_in1k", pretraining="supervised", pretrained=False
)


class _Model(nn.Module):
    """A backbone plus a small 'decoder' with the parameter kinds the groups care about."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(8, 8, 3)  # weight + bias
        self.norm = nn.GroupNorm(2, 8)
        self.query_embed = nn.Embedding(4, 8)
        self.level_embed = nn.Parameter(torch.zeros(3, 8))


@pytest.fixture(scope="module")
def convnext_model() -> _Model:
    return _Model(build_backbone(CONVNEXT_T))


def _lr_of(groups: list[dict], param: torch.Tensor) -> float:
    return next(g["lr"] for g in groups if any(p is param for p in g["params"]))


def _wd_of(groups: list[dict], param: torch.Tensor) -> float:
    return next(g["weight_decay"] for g in groups if any(p is param for p in g["params"]))


def test_warmup_then_multistep_for_a_scaled_3x_schedule():
    # 3x = 270k iterations, steps at 210k and 250k -> scaled to 2700: 2100 and 2500.
    spec = ScheduleSpec(name="multistep", length="3x", iterations=2700, warmup_iters=100, warmup_factor=0.001)
    f = lr_factor(spec)
    expected = {
        0: 0.001,
        50: 0.001 * 0.5 + 0.5,
        99: 0.001 * 0.01 + 0.99,
        100: 1.0,
        2099: 1.0,
        2100: 0.1,
        2499: 0.1,
        2500: 0.01,
        2699: 0.01,
    }
    for it, value in expected.items():
        assert f(it) == pytest.approx(value, rel=1e-12), it
    # As a LambdaLR over a real optimizer: the LR used at iteration k, after k steps.
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.02)
    sched = build_scheduler(opt, spec)
    seen = {}
    for it in range(2700):
        seen[it] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    for it, value in expected.items():
        assert seen[it] == pytest.approx(0.02 * value, rel=1e-9), it


def test_6x_and_explicit_steps():
    six = lr_factor(ScheduleSpec(name="multistep", length="6x", iterations=5400))
    # 6x = 540k: steps at 480k and 520k -> 4800 and 5200 of 5400.
    assert [six(i) for i in (4799, 4800, 5199, 5200)] == pytest.approx([1, 0.1, 0.1, 0.01])
    explicit = lr_factor(ScheduleSpec(name="multistep", iterations=10, steps=(3, 7), gamma=0.5))
    assert [explicit(i) for i in range(10)] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])


def test_poly_and_constant():
    f = lr_factor(ScheduleSpec(name="poly", iterations=100, power=0.9))
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5**0.9)
    assert f(99) == pytest.approx(0.01**0.9)
    warm = lr_factor(ScheduleSpec(name="poly", iterations=100, power=0.9, warmup_iters=10, warmup_factor=0.1))
    assert warm(5) == pytest.approx((1 - 0.05) ** 0.9 * (0.1 * 0.5 + 0.5))
    const = lr_factor(ScheduleSpec(name="constant", iterations=10, warmup_iters=2, warmup_factor=0.5))
    assert [const(i) for i in range(4)] == pytest.approx([0.5, 0.75, 1, 1])


def test_layer_decay_per_convnext_stage(convnext_model: _Model):
    spec = OptimizerSpec(name="adamw", lr=1e-4, weight_decay=0.05, layer_decay=0.95)
    groups = param_groups(convnext_model, spec, backbone=convnext_model.backbone)
    params = dict(convnext_model.backbone.named_parameters())
    lids = layer_ids(convnext_model.backbone)
    assert lids.num_layers == 8  # ConvNeXt-T: stem, 6 backbone layers... + decoder = ids 0..7
    # ConvNeXt detection rule: stem 0, stage1 1, stage2 2, stage3 blocks in threes 3..5, stage4 6.
    expected_ids = {
        "body.stem_0.weight": 0,
        "body.stages_0.blocks.2.conv_dw.weight": 1,
        "body.stages_1.downsample.1.weight": 2,
        "body.stages_1.blocks.0.mlp.fc1.weight": 2,
        "body.stages_2.downsample.1.weight": 3,
        "body.stages_2.blocks.0.mlp.fc1.weight": 3,
        "body.stages_2.blocks.3.mlp.fc1.weight": 4,
        "body.stages_2.blocks.8.mlp.fc1.weight": 5,
        "body.stages_3.blocks.2.mlp.fc2.weight": 6,
    }
    for name, layer in expected_ids.items():
        assert lids.ids[name] == layer, name
        assert _lr_of(groups, params[name]) == pytest.approx(1e-4 * 0.95 ** (7 - layer)), name
    assert _lr_of(groups, convnext_model.head.weight) == pytest.approx(1e-4)
    # Every stage-level LR appears, and nothing else.
    backbone_lrs = {round(g["lr"] / 1e-4, 12) for g in groups if g["name"].startswith("backbone")}
    assert backbone_lrs == {round(0.95**k, 12) for k in range(1, 8)}


def test_backbone_multiplier_and_no_weight_decay_groups(convnext_model: _Model):
    spec = OptimizerSpec(
        name="adamw",
        lr=1e-4,
        weight_decay=0.05,
        backbone_lr_mult=0.1,
        norm_weight_decay=0.0,
        bias_weight_decay=0.01,
        embed_weight_decay=0.0,
    )
    groups = param_groups(convnext_model, spec, backbone=convnext_model.backbone)
    m = convnext_model
    bb = dict(m.backbone.named_parameters())
    assert _lr_of(groups, bb["body.stem_0.weight"]) == pytest.approx(1e-5)
    assert _lr_of(groups, m.head.weight) == pytest.approx(1e-4)
    assert _wd_of(groups, m.head.weight) == 0.05
    assert _wd_of(groups, m.head.bias) == 0.01  # bias
    assert _wd_of(groups, m.norm.weight) == 0.0 and _wd_of(groups, m.norm.bias) == 0.0  # norm
    assert _wd_of(groups, bb["body.stem_1.weight"]) == 0.0  # timm LayerNorm2d in the stem
    assert _wd_of(groups, bb["body.stages_0.blocks.0.norm.bias"]) == 0.0
    assert _wd_of(groups, bb["body.stages_0.blocks.0.conv_dw.bias"]) == 0.01
    assert _wd_of(groups, m.query_embed.weight) == 0.0  # nn.Embedding
    assert _wd_of(groups, m.level_embed) == 0.05  # a plain Parameter decays (as in Mask2Former)
    # Unset (None) kinds fall back to weight_decay.
    plain = param_groups(m, OptimizerSpec(name="adamw", lr=1e-4, weight_decay=0.05), backbone=m.backbone)
    assert {g["weight_decay"] for g in plain} == {0.05}
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters() if p.requires_grad)


def test_resnet_stage_ids():
    backbone = build_backbone(RESNET50_GN)
    lids = layer_ids(backbone)
    assert lids.num_layers == 6
    assert lids.ids["body.conv1.weight"] == 0 and lids.ids["body.bn1.weight"] == 0
    assert [lids.ids[f"body.layer{k}.0.conv1.weight"] for k in (1, 2, 3, 4)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no layer-id rule"):
        layer_ids(nn.Sequential(nn.Linear(2, 2)))


def test_frozen_parameters_are_not_in_the_optimizer():
    model = _Model(build_backbone(RESNET50_GN, frozen=True))
    opt = build_optimizer(
        model, OptimizerSpec(name="sgd", lr=0.02, weight_decay=1e-4), backbone=model.backbone
    )
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in model.backbone.parameters()}
    assert in_opt == {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_clipping_types():
    def grads() -> list[nn.Parameter]:
        a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
        a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])
        return [a, b]

    ps = grads()  # full model: one norm over all = sqrt(25 + 0.25)
    total = clip_gradients(ps, ClipSpec("full_model", 1.0))
    assert float(total) == pytest.approx(25.25**0.5)
    assert float(torch.cat([p.grad for p in ps]).norm()) == pytest.approx(1.0, rel=1e-5)
    ps = grads()  # per parameter: a -> norm 1, b (norm 0.5) unchanged
    clip_gradients(ps, ClipSpec("norm", 1.0))
    assert float(ps[0].grad.norm()) == pytest.approx(1.0, rel=1e-5) and ps[1].grad.tolist() == [0.0, 0.5]
    ps = grads()
    clip_gradients(ps, ClipSpec("value", 0.4))
    assert ps[0].grad.tolist() == pytest.approx([0.4, 0.4]) and ps[1].grad.tolist() == pytest.approx(
        [0.0, 0.4]
    )
    assert clip_gradients(grads(), None) is None
