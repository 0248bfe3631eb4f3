"""Backbones: 4 levels at strides 4..32, the frozen regime, and where weights come from."""

from __future__ import annotations

import re

import pytest
import torch

from raybench.backbones import (
    Backbone,
    BackboneWeightsError,
    backbone_problems,
    build_backbone,
    check_weights,
)
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
        feats = self.backbone(x)
        # every level contributes, so that each output norm (if any) gets a gradient
        return self.decoder(feats[-1]).mean() + sum((f * f).mean() for f in feats[:-1])


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
    # The pretrained body: bit-identical, no gradient, no autograd graph.
    after = model.backbone.state_dict()
    for k, v in before.items():
        if not k.startswith("out_norms."):
            assert torch.equal(v, after[k]), f"backbone tensor {k} changed"
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.body.parameters())
    assert not torch.equal(dec_before, model.decoder.weight)  # the decoder did learn
    body_out: list[torch.Tensor] = []
    model.backbone.body.register_forward_hook(lambda m, i, o: body_out.extend(o))
    # No autograd graph through a frozen body, even for an input that asks for one.
    x = model.backbone.normalize(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)).requires_grad_()
    feats = model.backbone(x)
    assert len(body_out) == 4 and all(f.grad_fn is None and not f.requires_grad for f in body_out)
    if model.backbone.out_norms is None:  # ResNet: the features are the body's
        assert all(f.grad_fn is None for f in feats)
        assert all(not p.requires_grad for p in model.backbone.parameters())
    else:  # ConvNeXt: the output norms are head: they trained, and only they take gradients
        norms = {k: v for k, v in after.items() if k.startswith("out_norms.")}
        assert len(norms) == 8 and all(not torch.equal(v, before[k]) for k, v in norms.items())
        assert all(f.grad_fn is not None for f in feats)
        trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
        assert trainable == model.backbone.head_parameter_names() == sorted(norms, key=list(norms).index)


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


# --- output norms (ConvNeXt's official detection / segmentation backbones: norm0..3) ----------


def test_convnext_gets_four_output_layernorms_by_default():
    bb = build_backbone(PAPER[1][0])
    assert bb.out_norms is not None and len(bb.out_norms) == 4
    for norm, c in zip(bb.out_norms, [96, 192, 384, 768]):
        assert isinstance(norm, torch.nn.LayerNorm) and norm.normalized_shape == (c,) and norm.eps == 1e-6
    # Each level is LayerNorm over channels (channels-first) of the body's map, like the reference.
    with torch.no_grad():
        norm_w = [torch.rand(c) + 0.5 for c in bb.channels]
        for n, w in zip(bb.out_norms, norm_w):
            n.weight.copy_(w)
            n.bias.fill_(0.25)
        x = bb.normalize(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
        raw, feats = list(bb.body(x)), bb(x)
    for r, f, w in zip(raw, feats, norm_w):
        mu = r.mean(1, keepdim=True)
        var = (r - mu).pow(2).mean(1, keepdim=True)
        expected = (r - mu) / torch.sqrt(var + 1e-6) * w.view(1, -1, 1, 1) + 0.25
        assert torch.allclose(f, expected, atol=1e-4)


def test_output_norms_can_be_switched_off_and_resnet_has_none():
    assert build_backbone(spec("convnext_t", "convnext_tiny.fb_in1k", output_norms=False)).out_norms is None
    assert build_backbone(spec("resnet18", "resnet18")).out_norms is None
    assert build_backbone(spec("resnet18", "resnet18", output_norms=False)).out_norms is None
    bad = spec("resnet50_gn", "resnet50_gn.a1h_in1k", output_norms=True)
    assert [k for k, _ in backbone_problems(bad)] == ["output_norms"]
    with pytest.raises(
        ValueError, match=r"'resnet50_gn-supervised': output_norms: .*ConvNeXt backbones only"
    ):
        build_backbone(bad)


def test_frozen_output_norms_get_gradients_and_the_body_none():
    torch.manual_seed(0)
    model = Head(build_backbone(PAPER[1][0], frozen=True))
    x = model.backbone.normalize(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    model(x).backward()
    for norm in model.backbone.out_norms:
        assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
        assert norm.bias.grad is not None and norm.bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.body.parameters())


def test_a_registered_adapter_serves_its_model_class_first(monkeypatch):
    """docs/custom.md's extension point: ``register_adapter`` puts a family's adapter before the
    built-in ones; its checks are the entry's checks (study validation and build alike)."""
    from timm.models.resnet import ResNet

    import raybench.backbones.factory as factory
    from raybench.backbones import BackboneAdapter, adapter_for, register_adapter

    monkeypatch.setattr(factory, "ADAPTERS", list(factory.ADAPTERS))  # undone after the test
    adapter = register_adapter(
        BackboneAdapter(
            name="resnet-refuses",
            model_types=(ResNet,),
            create_kwargs=lambda s: {"features_only": True},
            wrap=lambda body, s: Backbone(body, s.id),
            problems=lambda s, info: [("timm_name", f"{info.model_class.__name__} is refused here")],
        )
    )
    r18 = spec("resnet18", "resnet18")
    assert factory.ADAPTERS[0] is adapter and adapter_for(r18) is adapter
    assert backbone_problems(r18) == [("timm_name", "ResNet is refused here")]
    with pytest.raises(
        ValueError, match=r"backbone 'resnet18-supervised': timm_name: ResNet is refused here"
    ):
        build_backbone(r18)
    assert adapter_for(spec("convnext_atto", "convnext_atto")).name == "features_only"


def test_a_paper_arch_named_without_a_tag_gets_its_pretrainings_tag():
    from raybench.backbones import resolve_timm_name

    assert resolve_timm_name(spec("convnext_t", "convnext_tiny", "dinov3")) == "convnext_tiny.dinov3_lvd1689m"
    assert resolve_timm_name(spec("convnext_t", "convnext_tiny")) == "convnext_tiny.fb_in1k"
    assert resolve_timm_name(spec("resnet50_gn", "resnet50_gn")) == "resnet50_gn.a1h_in1k"
    assert resolve_timm_name(spec("convnext_t", "convnext_tiny.fb_in22k")) == "convnext_tiny.fb_in22k"
    assert resolve_timm_name(spec("convnext_t", "convnext_tiny", "mae")) == "convnext_tiny"  # no tag known
    assert resolve_timm_name(spec("resnet18", "resnet18")) == "resnet18"  # not a paper arch


# --- weights: strict loading, clear errors ------------------------------------------------------


def _tiny_like(model_name: str) -> dict[str, torch.Tensor]:
    """The key set of a timm model with 1-element tensors of the right rank (a cheap 'file')."""
    import timm

    with torch.device("meta"):
        keys = timm.create_model(model_name, pretrained=False).state_dict()
    return {k: torch.zeros([1] * v.ndim) for k, v in keys.items()}


def _atto_state(seed: int = 3) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("convnext_atto", pretrained=False).state_dict()


ATTO = dict(arch="convnext_atto", timm_name="convnext_atto")


def _write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in content.items()}, str(path))
    else:
        torch.save(content, path)


def _truncated(path) -> bytes:
    torch.save(_atto_state(), path)
    return path.read_bytes()[:5000]


def _truncated_safetensors(path) -> bytes:
    from safetensors.torch import save_file

    save_file(_atto_state(), str(path))
    return path.read_bytes()[:5000]


def _bad_shape():
    state = _atto_state()
    state["stages.3.blocks.1.conv_dw.weight"] = state["stages.3.blocks.1.conv_dw.weight"][:100]
    return state


BAD_WEIGHTS = {
    # id: (file name, backbone spec kwargs, content (or a function of the path), message regexes)
    "wrong_keys": (
        "w.pth",
        ATTO,
        lambda p: {"foo": torch.zeros(3)},
        [r"1 unexpected key\(s\): foo", r"124 missing key\(s\): stem\.0\.weight, stem\.0\.bias"],
    ),
    "resnet50_on_convnext": (
        "r50.pth",
        dict(arch="convnext_t", timm_name="convnext_tiny.fb_in1k"),
        lambda p: _tiny_like("resnet50_gn"),
        [
            r"178 missing key\(s\): stem\.0\.weight, stem\.0\.bias, stem\.1\.weight",
            r"unexpected key\(s\): conv1\.weight, bn1\.weight, bn1\.bias",
            "checkpoint filter for 'convnext_tiny' failed",
        ],
    ),
    "shape_mismatch": (
        "w.safetensors",
        ATTO,
        lambda p: _bad_shape(),
        [
            r"1 shape mismatch\(es\): stages\.3\.blocks\.1\.conv_dw\.weight: "
            r"file \(100, 1, 7, 7\), model \(320, 1, 7, 7\)"
        ],
    ),
    "non_tensor_values": (
        "w.pth",
        ATTO,
        lambda p: {"stem.0.weight": [1, 2]},
        [r"not a state dict: 1 non-tensor"],
    ),
    "empty_state_dict": ("w.pth", ATTO, lambda p: {}, ["holds an empty mapping"]),
    "text_in_safetensors": (
        "w.safetensors",
        ATTO,
        lambda p: b"this is not a tensor file\n",
        ["is not a readable safetensors file"],
    ),
    "text_in_pth": (
        "w.pth",
        ATTO,
        lambda p: b"<html>404 not found</html>\n",
        ["could not be read as a PyTorch"],
    ),
    "truncated_pth": ("w.pth", ATTO, _truncated, ["could not be read as a PyTorch checkpoint"]),
    "truncated_safetensors": (
        "w.safetensors",
        ATTO,
        _truncated_safetensors,
        ["is not a readable safetensors file"],
    ),
    "missing_file": ("nope.pth", ATTO, None, ["weights file not found"]),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_bad_weights_file_is_a_clear_error_naming_the_file(tmp_path, case):
    name, arch, content, patterns = BAD_WEIGHTS[case]
    path = tmp_path / name
    if content is not None:
        _write(path, content(path))
    bspec = spec(pretraining="supervised", pretrained=True, weights=str(path), **arch)
    for check in (check_weights, build_backbone):  # validation-time and build-time: same decision
        with pytest.raises(BackboneWeightsError) as info:
            check(bspec)
        msg = str(info.value)
        assert str(path) in msg and repr(bspec.id) in msg
        for pattern in patterns:
            assert re.search(pattern, msg), (pattern, msg)
        assert "hugging face" not in msg.lower()  # never blamed on hub access


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_good_weights_file_loads_every_tensor_bitwise(tmp_path, suffix):
    state = _atto_state(seed=7)
    path = tmp_path / f"atto{suffix}"
    _write(path, state)
    bspec = spec(pretraining="supervised", pretrained=True, weights=str(path), **ATTO)
    check_weights(bspec)
    torch.manual_seed(0)
    bb = build_backbone(bspec)
    loaded = bb.body.state_dict()
    # every tensor but the classifier's (head.norm.*, head.fc.*: in the file, ignored)
    assert len(loaded) == len(state) - 4
    for k, v in loaded.items():
        assert torch.equal(v, state[k.replace("stem_", "stem.").replace("stages_", "stages.")]), k


def test_fb_convnext_checkpoint_is_remapped_by_timms_filter(tmp_path):
    """A checkpoint in the official ConvNeXt repo's names (``{'model': ...}``, ``downsample_layers``,
    ``dwconv``, ``pwconv``) loads through timm's checkpoint filter, every tensor checked."""
    state = _atto_state(seed=5)
    fb: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k2 = (
            k.replace("stem.", "downsample_layers.0.")
            .replace("conv_dw", "dwconv")
            .replace("mlp.fc", "pwconv")
        )
        k2 = re.sub(r"stages\.(\d)\.blocks\.(\d+)", r"stages.\1.\2", k2)
        k2 = re.sub(r"stages\.(\d)\.downsample\.(\d)", r"downsample_layers.\1.\2", k2)
        k2 = k2.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        fb[k2] = v
    path = tmp_path / "convnext_atto_fb.pth"
    torch.save({"model": fb}, path)
    bb = build_backbone(spec(pretraining="supervised", pretrained=True, weights=str(path), **ATTO))
    assert torch.equal(bb.body.stages_2.blocks[1].mlp.fc1.weight, state["stages.2.blocks.1.mlp.fc1.weight"])
    assert torch.equal(bb.body.stem_0.weight, state["stem.0.weight"])


def test_hub_weights_are_checked_as_strictly(monkeypatch):
    """``pretrained: true`` without a file: the hub's state dict gets the same strict check."""
    import raybench.backbones.hub as hub

    monkeypatch.setattr(hub, "load_state_dict_from_hf", lambda *a, **k: {"foo": torch.zeros(1)})
    with pytest.raises(BackboneWeightsError) as info:
        build_backbone(spec("convnext_t", "convnext_tiny.fb_in1k", pretrained=True))
    msg = str(info.value)
    assert "hf-hub:timm/convnext_tiny.fb_in1k" in msg and "unexpected key(s): foo" in msg
    assert "178 missing key(s): stem.0.weight" in msg

    good = _atto_state(seed=9)
    monkeypatch.setattr(hub, "load_state_dict_from_hf", lambda *a, **k: dict(good))
    bb = build_backbone(spec(pretraining="supervised", pretrained=True, **ATTO))
    assert torch.equal(bb.body.stem_0.weight, good["stem.0.weight"])


def test_weights_do_not_move_the_global_rng(tmp_path):
    """The decoder built after the backbone gets the same init whatever the weights' source."""
    path = tmp_path / "atto.pth"
    torch.save(_atto_state(), path)
    draws = []
    for kw in ({"pretrained": False}, {"pretrained": True, "weights": str(path)}):
        torch.manual_seed(0)
        build_backbone(spec(pretraining="supervised", **ATTO, **kw))
        draws.append(torch.rand(3))
    assert torch.equal(*draws)


def test_bad_weights_stop_the_trial_before_any_iteration(tmp_path):
    """Through the engine: the error comes from building the model; nothing is written."""
    import dataclasses

    from raybench.engine import train
    from raybench.study import load_study

    (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
    trial = load_study("experiments/smoke.yaml", dry_run=True).trial("gdxray-convnext_t-supervised-full-s42")
    trial = trial.replace(
        backbone=dataclasses.replace(trial.backbone, pretrained=True, weights=str(tmp_path / "w.pth"))
    )

    class Empty(torch.utils.data.Dataset):
        task, num_classes, class_names = "detection", 2, ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise AssertionError("no image may be read: nothing trains")

    out = tmp_path / "out"
    with pytest.raises(BackboneWeightsError, match=re.escape(str(tmp_path / "w.pth"))):
        train(trial, out, datasets={"train": Empty(), "val": Empty()}, verbose=False)
    assert not out.exists()
