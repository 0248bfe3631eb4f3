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
    # The output norms (reference: backbone.norm{i}, its `else` branch = num_max_layer + 1)
    # take the decoder's id: scale 1.
    for i in range(4):
        assert lids.ids[f"out_norms.{i}.weight"] == 7
        assert _lr_of(groups, params[f"out_norms.{i}.weight"]) == pytest.approx(1e-4)
    # Every stage-level LR appears, and nothing else.
    backbone_lrs = {round(g["lr"] / 1e-4, 12) for g in groups if g["name"].startswith("backbone")}
    assert backbone_lrs == {round(0.95**k, 12) for k in range(0, 8)}


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


# --- each recipe of paper.yaml against its reference's parameter groups ----------------------
#: Mask2Former's / Detectron2's norm_module_types (train_net.py build_optimizer, solver/build.py).
REF_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)
REF_NORMS += (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)


@pytest.fixture(scope="module")
def paper():
    from pathlib import Path

    from raybench.study import load_study

    return load_study(Path(__file__).parents[2] / "experiments" / "paper.yaml", dry_run=True)


def _built(paper, name: str):
    import dataclasses

    from raybench.tasks import DatasetMeta, build_task

    trial = paper.trial(name)
    trial = trial.replace(backbone=dataclasses.replace(trial.backbone, pretrained=False))  # no hub here
    task = build_task(trial)
    torch.manual_seed(0)
    model = task.build_model(DatasetMeta(trial.task, 3, ("a", "b", "c")))
    backbone = task.backbone(model)
    return trial, model, backbone, param_groups(model, trial.recipe.optimizer, backbone=backbone)


def _group_of(groups: list[dict]) -> dict[int, dict]:
    return {id(p): g for g in groups for p in g["params"]}


@pytest.mark.parametrize("regime", ["full", "frozen"])
def test_mask2former_recipe_is_its_build_optimizer(paper, regime):
    """Mask2Former's build_optimizer, per parameter: lr x BACKBONE_MULTIPLIER when "backbone" is
    in the module's name; wd WEIGHT_DECAY_NORM (0) for norm modules, WEIGHT_DECAY_EMBED (0) for
    nn.Embedding; WEIGHT_DECAY (0.05) for everything else -- biases and ConvNeXt's layer-scale
    gamma included. The one [ours] difference: in the frozen regime the output norms are head."""
    trial, model, backbone, groups = _built(paper, f"severstal-convnext_t-supervised-{regime}-s42")
    by_param = _group_of(groups)
    head = {id(p) for n, p in backbone.named_parameters() if n in backbone.head_parameter_names()}
    checked = gammas = 0
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            lr = 1e-4 * (0.1 if "backbone" in module_name and id(p) not in head else 1.0)
            wd = 0.0 if isinstance(module, (*REF_NORMS, nn.Embedding)) else 0.05
            g = by_param[id(p)]
            assert (g["lr"], g["weight_decay"]) == (pytest.approx(lr), wd), f"{module_name}.{pname}"
            checked += 1
            gammas += pname == "gamma"
    assert checked == len(by_param) == sum(p.requires_grad for p in model.parameters())
    assert gammas == (18 if regime == "full" else 0)  # ConvNeXt-T: 3 + 3 + 9 + 3 blocks
    if regime == "frozen":
        assert len(head) == 8 and all(by_param[i]["lr"] == pytest.approx(1e-4) for i in head)
        assert not any(p.requires_grad for p in backbone.body.parameters())


def test_detectron2_resnet_recipe_is_its_default_optimizer_params(paper):
    """Detectron2 get_default_optimizer_params: SGD lr 0.02 for all (no backbone multiplier, no
    layer decay), WEIGHT_DECAY_NORM 0 for norm modules (ResNet-50-GN's GroupNorms), and
    WEIGHT_DECAY (1e-4) for everything else -- biases too (WEIGHT_DECAY_BIAS None = WEIGHT_DECAY)."""
    trial, model, backbone, groups = _built(paper, "rareplanes-resnet50_gn-supervised-full-s42")
    assert backbone.out_norms is None
    by_param = _group_of(groups)
    biases = 0
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            wd = 0.0 if isinstance(module, REF_NORMS) else 1e-4
            g = by_param[id(p)]
            assert (g["lr"], g["weight_decay"]) == (0.02, wd), f"{module_name}.{pname}"
            biases += pname == "bias" and wd == 1e-4
    assert biases > 0  # FPN / RPN / box-head biases decay
    opt = build_optimizer(model, trial.recipe.optimizer, backbone=backbone)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


@pytest.mark.parametrize("regime", ["full", "frozen"])
def test_convnext_detection_recipe_exempts_every_1d_parameter(paper, regime):
    """ConvNeXt's LayerDecayOptimizerConstructor: ``len(param.shape) == 1 or name.endswith(".bias")``
    -> wd 0 (norms, biases, layer-scale gamma, model-wide), else 0.05; lr x 0.95 ** (7 - layer
    id), the output norms (backbone.norm{i} there) at the decoder's id; drop path 0.4."""
    trial, model, backbone, groups = _built(paper, f"rareplanes-convnext_t-supervised-{regime}-s42")
    assert trial.recipe.optimizer.one_d_weight_decay == 0.0
    by_param = _group_of(groups)
    named = dict(model.named_parameters())
    ones = [n for n, p in named.items() if p.requires_grad and (p.ndim == 1 or n.endswith(".bias"))]
    assert all(by_param[id(named[n])]["weight_decay"] == 0.0 for n in ones)
    assert all(
        by_param[id(p)]["weight_decay"] == 0.05 for n, p in named.items() if p.requires_grad and n not in ones
    )
    gammas = [n for n in ones if n.endswith(".gamma")]
    assert len(gammas) == (18 if regime == "full" else 0)
    out_norms = [n for n in named if ".out_norms." in n]
    assert len(out_norms) == 8 and all(named[n].requires_grad for n in out_norms)
    for n in out_norms:  # decoder LR, no decay, in both regimes
        assert (by_param[id(named[n])]["lr"], by_param[id(named[n])]["weight_decay"]) == (
            pytest.approx(1e-4),
            0.0,
        )
    if regime == "full":
        bb = dict(backbone.named_parameters())
        assert by_param[id(bb["body.stem_0.weight"])]["lr"] == pytest.approx(1e-4 * 0.95**7)
        assert by_param[id(bb["body.stages_3.blocks.2.gamma"])]["lr"] == pytest.approx(1e-4 * 0.95)
        assert backbone.body.stages_3.blocks[2].drop_path.drop_prob == pytest.approx(0.4)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_update_is_opt_in_on_cpu_and_the_same_update(name: str) -> None:
    """``fused`` None keeps torch's CPU default (exact numbers); True gives the fused kernel,
    whose step equals the default one up to rounding."""

    def step(fused: bool | None) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
        spec = OptimizerSpec(name=name, lr=1e-2, weight_decay=0.05, norm_weight_decay=0.0, fused=fused)
        opt = build_optimizer(model, spec)
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 8)).square().mean().backward()
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    default, a = step(None)
    fused, b = step(True)
    never, c = step(False)
    assert not default.defaults["fused"] and fused.defaults["fused"] and not never.defaults["fused"]
    assert all(torch.equal(x, z) for x, z in zip(a, c))  # False = the CPU default, exactly
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))
