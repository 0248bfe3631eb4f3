"""Backbones: 4 levels at strides 4..32, the frozen regime, and where weights come from."""

from __future__ import annotations

import pytest
import torch

from raybench.backbones import Backbone, BackboneWeightsError, build_backbone
from raybench.study import BackboneSpec


def spec(arch: str, timm_name: str, pretraining: str = "supervised", **kw) -> BackboneSpec:
    return BackboneSpec(
        id=f"{arch}-{pretraining}",
        arch=arch,
        timm_name=timm_name,
        pretraining=pretraining,
        pretrained=kw.pop("pretrained", False),
        **kw,
    )


PAPER = [
    (spec("resnet50_gn", "resnet50_gn.a1h_in1k"), [256, 512, 1024, 2048]),
    (spec("convnext_t", "convnext_tiny.fb_in1k"), [96, 192, 384, 768]),
    (spec("convnext_t", "convnext_tiny.dinov3_lvd1689m", "dinov3"), [96, 192, 384, 768]),
]


@pytest.mark.parametrize("bspec,channels", PAPER, ids=lambda x: getattr(x, "timm_name", ""))
def test_paper_backbones_give_four_levels(bspec, channels):
    torch.manual_seed(0)
    bb = build_backbone(bspec)
    assert bb.channels == channels and bb.strides == [4, 8, 16, 32]
    x = bb.normalize(torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8))
    feats = bb(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]
    # ImageNet mean/std, in uint8 units
    assert torch.allclose(bb.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    assert torch.allclose(bb.std.flatten(), torch.tensor([0.229, 0.224, 0.225]) * 255)


def test_normalize_uses_the_pretraining_statistics():
    bb = build_backbone(PAPER[1][0])
    img = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = bb.normalize(img)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-5)


class Head(torch.nn.Module):
    """A whole model: a backbone plus a small trainable decoder."""

    def __init__(self, bb: Backbone):
        super().__init__()
        self.backbone = bb
        self.decoder = torch.nn.Conv2d(bb.channels[-1], 3, 1)

    def forward(self, x):
        return self.decoder(self.backbone(x)[-1]).mean()


@pytest.mark.parametrize(
    "bspec",
    [PAPER[0][0], PAPER[1][0], spec("resnet18", "resnet18")],
    ids=["resnet50_gn", "convnext_t", "resnet18_bn"],
)
def test_frozen_regime_leaves_backbone_bit_identical(bspec):
    torch.manual_seed(0)
    model = Head(build_backbone(bspec, frozen=True))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    dec_before = model.decoder.weight.clone()
    # an optimizer over *every* parameter of the model, with weight decay, several steps
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    model.train()
    assert not model.backbone.body.training  # norm layers stay in eval mode
    for _ in range(3):
        x = model.backbone.normalize(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"backbone tensor {k} changed"
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not torch.equal(dec_before, model.decoder.weight)  # the decoder did learn
    # No autograd graph through a frozen backbone, even for an input that asks for one.
    x = model.backbone.normalize(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)).requires_grad_()
    assert all(f.grad_fn is None and not f.requires_grad for f in model.backbone(x))


def test_full_regime_trains_the_backbone():
    torch.manual_seed(0)
    model = Head(build_backbone(PAPER[1][0]))
    w = model.backbone.body.stem_0.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = model.backbone.normalize(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    model(x).backward()
    opt.step()
    assert not torch.equal(w, model.backbone.body.stem_0.weight)


def test_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    import timm

    source = timm.create_model("convnext_tiny", pretrained=False)
    path = tmp_path / "convnext_tiny.pth"
    torch.save(source.state_dict(), path)
    bb = build_backbone(spec("convnext_t", "convnext_tiny.fb_in1k", pretrained=True, weights=str(path)))
    assert torch.equal(bb.body.stem_0.weight, source.stem[0].weight)
    assert torch.equal(bb.body.stages_3.blocks[2].conv_dw.weight, source.stages[3].blocks[2].conv_dw.weight)


def test_weights_through_the_study(tmp_path):
    """A study entry with `weights:` loads that file (relative to the study file)."""
    import timm
    import yaml

    from raybench.study import load_study

    torch.manual_seed(2)
    source = timm.create_model("resnet50_gn", pretrained=False)
    (tmp_path / "w").mkdir()
    torch.save(source.state_dict(), tmp_path / "w" / "r50.pth")
    study = yaml.safe_load(open("experiments/smoke.yaml"))
    study["backbones"][0].update(pretrained=True, weights="w/r50.pth")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    trial = load_study(tmp_path / "s.yaml", dry_run=True).trials[0]
    assert trial.backbone.weights == str(tmp_path / "w" / "r50.pth")
    bb = build_backbone(trial.backbone)
    assert torch.equal(bb.body.conv1.weight, source.conv1.weight)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneWeightsError, match="weights file not found: .*nope.pth"):
        build_backbone(
            spec("convnext_t", "convnext_tiny.fb_in1k", pretrained=True, weights=str(tmp_path / "nope.pth"))
        )


def test_offline_hub_error_names_model_hub_id_and_local_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(spec("convnext_t", "convnext_tiny.dinov3_lvd1689m", "dinov3", pretrained=True))
    msg = str(info.value)
    assert "convnext_t-dinov3" in msg
    assert "hf-hub:timm/convnext_tiny.dinov3_lvd1689m" in msg
    assert "weights: /path/to/model.safetensors" in msg and "pretrained: false" in msg


def test_wrong_strides_are_rejected():
    with pytest.raises(ValueError, match=r"strides \[2, 4, 8, 16\]"):
        build_backbone(spec("resnet18", "resnet18", out_indices=(0, 1, 2, 3)))
