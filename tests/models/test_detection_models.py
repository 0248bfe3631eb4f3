"""torchvision Faster / Mask R-CNN on the paper's three backbones, both regimes, a few steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raybench.recipes import build_optimizer, build_scheduler
from raybench.study import load_study
from raybench.tasks import DatasetMeta, build_task, list_tasks, task_class
from raybench.tasks.detection import DetectionTask
from tests.helpers.batches import detection_batch

DECODER_TRIAL = {"faster_rcnn": "gdxray", "mask_rcnn": "rareplanes"}
BACKBONES = ("resnet50_gn-supervised", "convnext_t-supervised", "convnext_t-dinov3")


@pytest.fixture(scope="module")
def study(repo_root):
    return load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)


def test_registry_serves_both_detectors():
    assert {"faster_rcnn", "mask_rcnn"} <= set(list_tasks())
    with pytest.raises(
        ValueError, match="no task is registered for decoder 'nope'; known decoders: .*faster_rcnn"
    ):
        task_class("nope")


@pytest.mark.parametrize("decoder", ["faster_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("regime", ["frozen", "full"])
def test_few_iterations(study, decoder: str, backbone: str, regime: str):
    name = f"{DECODER_TRIAL[decoder]}-{backbone}-{regime}-s42"
    if regime == "frozen" and backbone.startswith("resnet50_gn"):
        # The paper runs ResNet-50 only fine-tuned: the study has no frozen ResNet trial.
        trial = study.trial(name.replace("frozen", "full")).replace(regime="frozen")
    else:
        trial = study.trial(name)
    torch.manual_seed(0)
    task = build_task(trial)
    assert isinstance(task, DetectionTask)
    meta = DatasetMeta(trial.task, 2, ("a", "b"))
    model = task.build_model(meta)
    backbone_module = task.backbone(model)
    opt = build_optimizer(model, trial.recipe.optimizer, backbone=backbone_module)
    sched = build_scheduler(opt, trial.recipe.schedule)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = detection_batch(masks=decoder == "mask_rcnn")
    model.train()
    for _ in range(2):
        opt.zero_grad()
        losses = task.train_step(model, batch)
        expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        assert set(losses) == expected | ({"loss_mask"} if decoder == "mask_rcnn" else set())
        sum(losses.values()).backward()
        opt.step()
        sched.step()

    backbone_names = {f"backbone.body.{n}" for n, _ in backbone_module.named_parameters()}
    decoder_changed = [
        n for n, p in model.named_parameters() if n not in backbone_names and not torch.equal(p, before[n])
    ]
    n_decoder = sum(1 for n, _ in model.named_parameters() if n not in backbone_names)
    # Every decoder tensor moved (FPN, RPN, box head/predictor, mask head).
    assert len(decoder_changed) == n_decoder
    backbone_changed = [
        n for n in backbone_names if not torch.equal(dict(model.named_parameters())[n], before[n])
    ]
    if regime == "frozen":
        # The pretrained body is fixed; ConvNeXt's output norms (new layers, head) train.
        head = {f"backbone.body.{n}" for n in backbone_module.head_parameter_names()}
        assert sorted(backbone_changed) == sorted(head)
        assert len(head) == (8 if backbone_module.out_norms is not None else 0)
        assert all(not p.requires_grad for p in backbone_module.body.parameters())
        assert not backbone_module.body.training  # frozen norms stay in eval mode
    else:
        # Trained, though not every tensor moves in 2 steps: timm's ResNet zero-inits each
        # block's last norm, so the norms before it get no gradient in the first step.
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert all(id(p) in in_opt for p in backbone_module.parameters())
        assert len(backbone_changed) > 0.5 * len(backbone_names)

    # Inference: torchvision's outputs in the input frame.
    model.eval()
    with torch.no_grad():
        out = task.predict(model, batch)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4
    if decoder == "mask_rcnn":
        assert out[0]["masks"].shape[-2:] == (64, 80)


def test_detector_configuration(study):
    trial = study.trial("gdxray-convnext_t-supervised-full-s42")
    # Multi-scale training sizes and a different test size, like a real recipe.
    inp = dataclasses.replace(
        trial.recipe.input, train_short_edge=(48, 64), train_max_size=100, test_short_edge=96
    )
    trial = trial.replace(recipe=dataclasses.replace(trial.recipe, input=inp))
    model = build_task(trial).build_model(DatasetMeta("detection", 1, ("defect",)))
    opts = trial.recipe.model_options("faster_rcnn")
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # K + background
    gen = model.rpn.anchor_generator
    assert opts.anchor_sizes[0] == 8  # the gdxray override of the smoke study
    assert gen.sizes == tuple((s,) for s in opts.anchor_sizes)
    assert gen.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert model.rpn._pre_nms_top_n == {"training": 200, "testing": 100}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.backbone.out_channels == 32
    # The backbone's own normalisation.
    body = model.backbone.body
    assert model.transform.image_mean == pytest.approx((body.mean.flatten() / 255).tolist())
    assert model.transform.image_std == pytest.approx((body.std.flatten() / 255).tolist())
    # Sizes: train picks from the train short edges, eval uses the test short edge.
    image = torch.rand(3, 60, 80)
    model.transform.train()
    torch.manual_seed(0)
    train_sizes = {tuple(model.transform([image])[0].image_sizes[0]) for _ in range(20)}
    assert train_sizes == {(48, 64), (64, 85)}
    model.transform.eval()
    # 96 / 60 = 1.6 -> 96 x 128: wider than the train max size (100), within the test max (128).
    assert model.transform([image])[0].image_sizes[0] == (96, 128)
    # Five FPN levels (P2..P6) feed the RPN.
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
