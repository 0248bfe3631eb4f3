"""The input protocol per decoder, checked against the references (issue 12, items 3 and 6).

- Mask2Former's SSD colour distortion (Detectron2 ``ColorAugSSDTransform``, OpenCV uint8 HSV):
  value ranges, draw probabilities, OpenCV parity (golden values computed with
  opencv-python-headless 4.14, AVX-512 build, through the reference's ``apply_image`` steps),
  determinism, labels untouched, training only;
- padding: Mask2Former (mapper pads training crops to the crop size with 128 / 255 before
  normalisation; the model pads the batch with 0.0 after normalisation) and torchvision R-CNN
  (0.0 after normalisation, as Detectron2), asserted on the tensor the backbone receives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch

from raybench.data.transforms import (
    M2F_IMAGE_PAD,
    ColorAugSSD,
    ColorParams,
    PadToSize,
    build_transforms,
    hsv_to_rgb_u8,
    rgb_to_hsv_u8,
)
from raybench.study import load_study
from raybench.study.spec import BackboneSpec
from raybench.tasks import DatasetMeta, build_task
from raybench.tasks.semantic import SemanticTask

#: A small timm backbone with strides 4..32 (random init, no hub).
REGNET = BackboneSpec(
    id="regnetx_002",
    arch="regnetx_002",
    timm_name="regnetx_002",
    pretraining="none",
    pretrained=False,
    out_indices=(1, 2, 3, 4),
)
TINY_M2F = {
    "num_queries": 8,
    "hidden_dim": 32,
    "conv_dim": 32,
    "mask_dim": 32,
    "enc_layers": 1,
    "dec_layers": 2,
    "nheads": 4,
    "dim_feedforward": 64,
    "enc_dim_feedforward": 64,
    "num_points": 64,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke(repo_root):
    return load_study(repo_root / "experiments" / "smoke.yaml", dry_run=True)


def _image() -> torch.Tensor:
    """The 4x100 RGB test image of the golden values (100 columns: 64 in one SIMD block, 36 in
    cv2's rounding scalar tail)."""
    y, x = torch.meshgrid(torch.arange(4), torch.arange(100), indexing="ij")
    rgb = torch.stack([(x * 16 + y * 3) % 256, (y * 32 + x * 5 + 40) % 256, (x * y * 7 + 90) % 256])
    return rgb.to(torch.uint8)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


# Reference values: the reference's ``apply_image`` steps (numpy + cv2.cvtColor) with fixed
# draws on :func:`_image`, computed with opencv-python-headless 4.14 (AVX-512 build); sha256 of
# the CHW uint8 bytes, plus a few pixels of channel 0, row 0 (columns 0, 1, 2, 50, 70, 99).
GOLDEN = {
    ColorParams(10.7, False, 1.37, 0.61, -13): (
        "cd2e717477c662a71fb24d97dfb31ce9639dc67de43f9da5b5342dea4f27451d",
        [61, 73, 86, 86, 180, 80],
    ),
    ColorParams(-25.3, True, 0.55, 1.45, 17): (
        "f7c50a2b42a94bf29600f36077a75f22f6d332c26251ac332fb4026eaf395354",
        [14, 9, 9, 18, 24, 32],
    ),
    ColorParams(saturation=1.2): (
        "906c43fbc35fabb7f208f87336b4dda5c04ff913f142427ec38dc350db349954",
        [0, 1, 20, 20, 88, 39],
    ),
    ColorParams(contrast_first=False, hue=5): (
        "bf4cfa7adaee2d51c3062062fe16cb33208eecfddfe80371dcda146581f2252e",
        [0, 15, 32, 39, 90, 59],
    ),
}
#: cv2.cvtColor(bgr, COLOR_BGR2HSV) of :func:`_image`: sha256, and (h, s, v) at row 1, column 7.
GOLDEN_HSV = ("8caa46935e2c379ef888113ff326e4b8098de7bf6a92c80b0231bda610a35ea3", [128, 59, 139])


# --- SSD colour distortion: OpenCV parity ---------------------------------------------------
def test_hsv_conversions_match_opencv_golden_values() -> None:
    hsv = rgb_to_hsv_u8(_image())
    assert hsv[:, 1, 7].tolist() == GOLDEN_HSV[1] and _sha256(hsv) == GOLDEN_HSV[0]
    # HSV -> RGB cases where rounding, truncation and fused multiply-adds disagree; a 64-pixel
    # row is one SIMD block (truncating), a 1-pixel row is cv2's scalar path (rounding).
    hsv = [[0, 1, 1], [1, 90, 85], [1, 90, 170], [1, 102, 75], [0, 0, 255]]
    hsv += [[179, 255, 255], [90, 128, 200], [30, 255, 1], [120, 17, 254], [0, 255, 255]]
    rgb = [[1, 0, 0], [85, 56, 55], [170, 112, 110], [75, 45, 44], [255, 255, 255]]
    rgb += [[255, 0, 8], [99, 199, 200], [1, 1, 0], [237, 237, 254], [255, 0, 0]]
    block = torch.tensor(hsv, dtype=torch.uint8).T.reshape(3, 1, -1).repeat(1, 1, 7)[..., :64]
    out = hsv_to_rgb_u8(block)
    assert out[..., :10].reshape(3, -1).T.tolist() == rgb
    scalar = [hsv_to_rgb_u8(torch.tensor(c, dtype=torch.uint8).view(3, 1, 1)).flatten().tolist() for c in hsv]
    rounded = [[1, 1, 1], [85, 56, 55], [170, 112, 110], [75, 46, 45], [255, 255, 255]]
    rounded += [[255, 0, 8], [100, 200, 200], [1, 1, 0], [237, 237, 254], [255, 0, 0]]
    assert scalar == rounded


@pytest.mark.parametrize("params", list(GOLDEN), ids=["all_on_a", "all_on_b", "saturation", "hue"])
def test_color_aug_matches_the_reference_pixel_for_pixel(params: ColorParams) -> None:
    digest, pixels = GOLDEN[params]
    out = ColorAugSSD.apply(_image(), params)
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 100)
    assert out[0, 0, [0, 1, 2, 50, 70, 99]].tolist() == pixels
    assert _sha256(out) == digest


def test_hsv_round_trip_matches_opencv_exhaustively_when_installed() -> None:
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 64, 512), generator=g, dtype=torch.uint8)
    bgr = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[:, :, ::-1])
    ref_hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    assert np.array_equal(rgb_to_hsv_u8(rgb).permute(1, 2, 0).numpy(), ref_hsv)
    ref_rgb = cv2.cvtColor(ref_hsv, cv2.COLOR_HSV2BGR)[:, :, ::-1]
    assert np.array_equal(
        hsv_to_rgb_u8(torch.from_numpy(ref_hsv).permute(2, 0, 1)).permute(1, 2, 0).numpy(), ref_rgb
    )


# --- SSD colour distortion: ranges, probabilities, determinism -----------------------------
def test_draws_follow_the_reference_ranges_and_probabilities() -> None:
    aug = ColorAugSSD(generator=torch.Generator().manual_seed(1))
    draws = [aug.draw() for _ in range(2000)]

    def on(name: str) -> list:
        return [getattr(d, name) for d in draws if getattr(d, name) is not None]

    for name in ("brightness", "contrast", "saturation", "hue"):
        assert 0.45 < len(on(name)) / len(draws) < 0.55, name  # each step with p = 0.5
    assert 0.45 < sum(d.contrast_first for d in draws) / len(draws) < 0.55
    b, c, s, h = on("brightness"), on("contrast"), on("saturation"), on("hue")
    assert -32 <= min(b) < -30 and 30 < max(b) <= 32
    assert 0.5 <= min(c) < 0.52 and 1.48 < max(c) <= 1.5
    assert 0.5 <= min(s) < 0.52 and 1.48 < max(s) <= 1.5
    assert all(isinstance(v, int) for v in h) and set(h) == set(range(-18, 19))


def test_brightness_and_contrast_values_on_plain_images() -> None:
    flat = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    assert (ColorAugSSD.apply(flat, ColorParams(brightness=12.9)) == 112).all()  # truncated
    assert (ColorAugSSD.apply(flat, ColorParams(brightness=-7.5)) == 92).all()
    bright = torch.full((3, 2, 2), 250, dtype=torch.uint8)
    assert (ColorAugSSD.apply(bright, ColorParams(brightness=31.0)) == 255).all()  # clipped
    assert (ColorAugSSD.apply(flat // 10, ColorParams(brightness=-31.0)) == 0).all()
    ramp = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).repeat(3, 1, 1)
    out = ColorAugSSD.apply(ramp, ColorParams(contrast=1.25))
    assert out[0].flatten()[200] == 250 and (out[0].flatten()[205:] == 255).all()
    # Random draws with only brightness / contrast kept: the shift stays within +-32 and the
    # factor measured on a gradient within [0.5, 1.5].
    aug = ColorAugSSD(generator=torch.Generator().manual_seed(2))
    mid = torch.arange(64, 192, dtype=torch.uint8).reshape(1, 8, 16).repeat(3, 1, 1)
    shifts, factors = set(), []
    for _ in range(200):
        p = aug.draw()
        d = ColorAugSSD.apply(mid, ColorParams(brightness=p.brightness)).int() - mid.int()
        assert d.min() == d.max() and -32 <= int(d.min()) <= 32
        shifts.add(int(d.min()))
        if p.contrast is not None:
            out = ColorAugSSD.apply(mid, ColorParams(contrast=p.contrast)).float()
            factors.append(float(out.flatten()[36]) / 100)  # the pixel of value 100
    assert len(shifts) > 20 and 0 in shifts
    assert all(0.5 - 0.01 <= f <= 1.5 for f in factors) and min(factors) < 0.6 and max(factors) > 1.4


def test_hue_and_saturation_changes_stay_in_range() -> None:
    # A saturated orange: H = 15 (30 degrees), S = 255, V = 255 in OpenCV units.
    colour = hsv_to_rgb_u8(torch.tensor([15, 255, 255], dtype=torch.uint8).reshape(3, 1, 1)).expand(3, 4, 4)
    half = hsv_to_rgb_u8(torch.tensor([15, 128, 200], dtype=torch.uint8).reshape(3, 1, 1)).expand(3, 4, 4)
    aug = ColorAugSSD(generator=torch.Generator().manual_seed(3))
    hues, sats = [], []
    for _ in range(300):
        p = aug.draw()
        if p.hue is not None:
            h = int(rgb_to_hsv_u8(ColorAugSSD.apply(colour.contiguous(), ColorParams(hue=p.hue)))[0, 0, 0])
            hues.append((h - 15 + 90) % 180 - 90)  # circular: 15 - 18 wraps to 177
            assert abs((h - 15 - p.hue + 90) % 180 - 90) <= 1  # the drawn shift, +-1 quantisation
        if p.saturation is not None:
            out = ColorAugSSD.apply(half.contiguous(), ColorParams(saturation=p.saturation))
            sats.append(int(rgb_to_hsv_u8(out)[1, 0, 0]) / 128)
    assert all(-19 <= d <= 19 for d in hues) and min(hues) <= -15 and max(hues) >= 15
    assert all(0.5 - 0.02 <= f <= 1.5 + 0.02 for f in sats) and min(sats) < 0.6 and max(sats) > 1.4


def test_color_aug_is_seeded_and_leaves_labels_alone() -> None:
    image = torch.randint(0, 256, (3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    sem = torch.randint(0, 5, (16, 16))
    target = {"sem_seg": sem, "boxes": torch.tensor([[1.0, 2.0, 5.0, 6.0]])}

    def run(seed: int) -> list[torch.Tensor]:
        aug = ColorAugSSD(generator=torch.Generator().manual_seed(seed))
        outs = []
        for _ in range(6):
            out, out_target = aug(image, target)
            assert out_target is target and out_target["sem_seg"] is sem  # labels untouched
            assert out.dtype == torch.uint8 and out.shape == image.shape
            outs.append(out)
        return outs

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert any(not torch.equal(x, image) for x in a)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        ColorAugSSD()(image.float(), target)


def test_color_aug_is_in_the_semantic_training_pipeline_only(smoke, repo_root) -> None:
    train = build_transforms("semantic", "train", test_short_edge=64, color_aug_ssd=True)
    kinds = [type(t).__name__ for t in train.transforms]
    # Mask2Former's semantic mapper order: resize, crop, colour, flip, pad.
    assert kinds == [
        "ResizeShortEdge",
        "DefectAwareCrop",
        "ColorAugSSD",
        "RandomHorizontalFlip",
        "PadToSize",
        "PadToDivisible",
    ]
    val = build_transforms("semantic", "val", test_short_edge=64, color_aug_ssd=True)
    assert [type(t).__name__ for t in val.transforms] == ["ResizeShortEdge", "PadToDivisible"]
    off = build_transforms("semantic", "train", test_short_edge=64)
    assert "ColorAugSSD" not in [type(t).__name__ for t in off.transforms]
    # Through the task, from the recipe: on in paper.yaml and smoke.yaml.
    paper = load_study(repo_root / "experiments" / "paper.yaml", dry_run=True)
    assert paper.trial("severstal-convnext_t-dinov3-full-s42").recipe.input.color_aug_ssd is True
    trial = smoke.trial("severstal-convnext_t-dinov3-full-s42")
    assert trial.recipe.input.color_aug_ssd is True
    task = build_task(trial)
    g = torch.Generator()
    assert any(isinstance(t, ColorAugSSD) for t in task.transforms("train", g).transforms)
    assert not any(isinstance(t, ColorAugSSD) for t in task.transforms("val", g).pipeline.transforms)
    # Same seed -> same sample; another seed -> another one.
    image = torch.randint(0, 256, (3, 48, 80), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    sem = torch.zeros(48, 80, dtype=torch.int64)
    sem[10:20, 30:50] = 2

    def sample(seed: int) -> torch.Tensor:
        return task.transforms("train", torch.Generator().manual_seed(seed))(image, {"sem_seg": sem})[0]

    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), sample(4))


def test_detection_recipes_refuse_color_aug_ssd(smoke) -> None:
    trial = smoke.trial("gdxray-convnext_t-supervised-full-s42")
    inp = dataclasses.replace(trial.recipe.input, color_aug_ssd=True)
    trial = trial.replace(recipe=dataclasses.replace(trial.recipe, input=inp))
    with pytest.raises(ValueError, match="gdxray-convnext_t-supervised-full-s42: recipe input.color_aug_ssd"):
        build_task(trial)


# --- padding: Mask2Former ----------------------------------------------------------------
def test_pad_to_size_uses_the_mapper_values() -> None:
    image = torch.full((3, 5, 7), 9, dtype=torch.uint8)
    target = {"sem_seg": torch.ones(5, 7, dtype=torch.int64), "masks": torch.ones(1, 5, 7, dtype=torch.uint8)}
    out, t = PadToSize((8, 8))(image, target)
    assert out.shape == (3, 8, 8) and (out[:, 5:] == M2F_IMAGE_PAD).all() and (out[:, :, 7:] == 128).all()
    assert (out[:, :5, :7] == 9).all()
    assert (
        (t["sem_seg"][5:] == 255).all()
        and (t["sem_seg"][:, 7:] == 255).all()
        and (t["sem_seg"][:5, :7] == 1).all()
    )
    assert t["masks"].shape == (1, 8, 8) and t["masks"][0, 7, 7] == 0
    same, _ = PadToSize((4, 4))(image, target)  # larger inputs are kept
    assert same is image


def _m2f_task(smoke, **input_changes) -> tuple[SemanticTask, torch.nn.Module]:
    trial = smoke.trial("severstal-convnext_t-dinov3-full-s42").replace(backbone=REGNET)
    inp = dataclasses.replace(trial.recipe.input, **input_changes)
    trial = trial.replace(recipe=dataclasses.replace(trial.recipe, input=inp, model=dict(TINY_M2F)))
    task = build_task(trial)
    assert isinstance(task, SemanticTask) and trial.decoder == "mask2former"
    torch.manual_seed(0)
    return task, task.build_model(DatasetMeta("semantic", 4, ("a", "b", "c", "d")))


def _backbone_input(model: torch.nn.Module, backbone: torch.nn.Module, call) -> torch.Tensor:
    seen = []
    handle = backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        call()
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def test_mask2former_training_pads_crop_with_128_and_255_before_normalisation(smoke) -> None:
    """A 48-pixel short edge under a 64x64 crop: the crop is 48x64 and the mapper pads it to
    64x64 with 128 (image, before normalisation) and 255 (label)."""
    task, model = _m2f_task(smoke, train_short_edge=(48,), crop_size=(64, 64), flip=False)
    image = torch.randint(0, 256, (3, 30, 50), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    sem = torch.zeros(30, 50, dtype=torch.int64)
    sem[5:15, 10:30] = 1
    tf = task.transforms("train", torch.Generator().manual_seed(0))
    items = [tf(image, {"sem_seg": sem}) for _ in range(2)]
    for im, t in items:
        assert im.shape == (3, 64, 64) and (im[:, 48:] == 128).all() and (t["sem_seg"][48:] == 255).all()
        assert (t["sem_seg"][:48] != 255).all()
    batch = task.collate(items)
    assert batch.sizes == ((64, 64), (64, 64))  # the mapper's padding is part of the image
    model.train()
    x = _backbone_input(model, model.backbone, lambda: task.train_step(model, batch))
    mean, std = model.backbone.mean.flatten(), model.backbone.std.flatten()
    expected = ((128 - mean) / std).view(1, 3, 1, 1).expand(2, 3, 16, 64)
    torch.testing.assert_close(x[:, :, 48:], expected)  # 128 normalised, not 0.0
    assert torch.equal(batch.sem_seg[:, 48:], torch.full((2, 16, 64), 255))


def test_mask2former_batch_padding_is_zero_after_normalisation(smoke) -> None:
    task, model = _m2f_task(smoke)
    tf = task.transforms("val", torch.Generator())
    items = []
    for h, w, value in ((20, 40, 200), (30, 20, 40)):  # -> 64x128 and 96x64 at test size 64
        sem = torch.zeros(h, w, dtype=torch.int64)
        items.append(tf(torch.full((3, h, w), value, dtype=torch.uint8), {"sem_seg": sem}))
    batch = task.collate(items)
    assert batch.sizes == ((64, 128), (96, 64)) and batch.images.shape == (2, 3, 96, 128)
    model.eval()
    with torch.no_grad():
        x = _backbone_input(model, model.backbone, lambda: task.predict(model, batch))
    mean, std = model.backbone.mean.view(3, 1, 1), model.backbone.std.view(3, 1, 1)
    torch.testing.assert_close(x[0, :, :64, :], ((200 - mean) / std).expand(3, 64, 128))
    torch.testing.assert_close(x[1, :, :, :64], ((40 - mean) / std).expand(3, 96, 64))
    assert (x[0, :, 64:] == 0.0).all() and (x[1, :, :, 64:] == 0.0).all()  # ImageList pad 0.0
    assert (batch.sem_seg[0, 64:] == 255).all() and (batch.sem_seg[1, :, 64:] == 255).all()


# --- padding: torchvision Faster / Mask R-CNN --------------------------------------------
@pytest.mark.parametrize(
    "name", ["gdxray-convnext_t-supervised-full-s42", "rareplanes-convnext_t-supervised-full-s42"]
)
def test_rcnn_batch_padding_is_zero_after_normalisation(smoke, name: str) -> None:
    trial = smoke.trial(name).replace(backbone=REGNET)
    task = build_task(trial)
    torch.manual_seed(0)
    model = task.build_model(DatasetMeta(trial.dataset.task, 3, ("a", "b", "c")))
    body = model.backbone.body
    mean, std = body.mean.view(3, 1, 1), body.std.view(3, 1, 1)
    images = [torch.full((3, 40, 60), 200, dtype=torch.uint8), torch.full((3, 50, 30), 40, dtype=torch.uint8)]
    batch = (images, [{} for _ in images])
    model.eval()
    with torch.no_grad():
        x = _backbone_input(model, model.backbone, lambda: task.predict(model, batch))
        image_list, _ = model.transform([im.float() / 255 for im in images])
    assert torch.equal(x, image_list.tensors)
    # torchvision's resize: scale = min(short / min(h, w), max_size / max(h, w)), floor of h, w
    spec = trial.recipe.input

    def resized(h: int, w: int) -> tuple[int, int]:
        scale = min(spec.test_short_edge / min(h, w), spec.test_max_size / max(h, w))
        return math.floor(h * scale), math.floor(w * scale)

    (h0, w0), (h1, w1) = image_list.image_sizes
    assert (h0, w0) == resized(40, 60) and (h1, w1) == resized(50, 30)
    assert (h0, w0) != (40, 60) and (h1, w1) != (50, 30)  # the test sizes really resize
    d = spec.size_divisibility
    assert x.shape == (2, 3, -(-max(h0, h1) // d) * d, -(-max(w0, w1) // d) * d)
    torch.testing.assert_close(x[0, :, :h0, :w0], ((200 - mean) / std).expand(3, h0, w0))
    torch.testing.assert_close(x[1, :, :h1, :w1], ((40 - mean) / std).expand(3, h1, w1))
    assert (x[0, :, h0:] == 0.0).all() and (x[1, :, h1:] == 0.0).all() and (x[1, :, :, w1:] == 0.0).all()
    # Training: multi-scale sizes, still padded with 0.0 after normalisation.
    model.train()
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])} for _ in images]
    image_list, _ = model.transform([im.float() / 255 for im in images], targets)
    for i, (h, w) in enumerate(image_list.image_sizes):
        assert (image_list.tensors[i, :, h:] == 0.0).all() and (image_list.tensors[i, :, :, w:] == 0.0).all()
        assert image_list.tensors.shape[-2] % 32 == 0 and image_list.tensors.shape[-1] % 32 == 0


# --- the paper study's input options -------------------------------------------------------
def test_paper_input_options_follow_the_references(repo_root) -> None:
    paper = load_study(repo_root / "experiments" / "paper.yaml", dry_run=True)
    for name in ("severstal-convnext_t-dinov3-full-s42", "rubber_rings-convnext_t-dinov3-full-s42"):
        inp = paper.trial(name).recipe.input
        base = inp.test_short_edge
        # Mask2Former: MIN_SIZE_TRAIN = [int(x * 0.1 * base) for x in range(5, 21)], "choice".
        assert inp.train_short_edge == tuple(int(x * 0.1 * base) for x in range(5, 21)), name
        assert inp.crop_size == (base, base) and inp.crop_defect_p == 0.7 and inp.flip, name
        assert inp.color_aug_ssd and inp.size_divisibility == 32, name
    det = paper.trial("rareplanes-convnext_t-dinov3-full-s42").recipe.input
    assert det.train_short_edge == (640, 672, 704, 736, 768, 800) and det.train_max_size == 1333
    assert (det.test_short_edge, det.test_max_size, det.flip, det.color_aug_ssd) == (800, 1333, True, False)
