"""Joint transforms: defect-aware crop statistics, fused resize+crop, flip, pad, factory."""

from __future__ import annotations

import pytest
import torch

from raybench.data.transforms import (
    Compose,
    DefectAwareCrop,
    PadToDivisible,
    RandomHorizontalFlip,
    ResizeShortEdge,
    build_transforms,
    crop,
    resize,
)

SIZE, CROP = 256, 64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and thrash on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEFECT = (100, 104, 150, 154)  # rows, cols of a 4 x 4 defect in a 256 x 256 image


def _sparse() -> tuple[torch.Tensor, dict]:
    sem = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    r0, r1, c0, c1 = DEFECT
    sem[r0:r1, c0:c1] = 2
    sem[0:10, 0:10] = 255  # ignore is not a defect
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    return image, {"sem_seg": sem}


def _random_hit_rate() -> float:
    """P(a uniform crop offset contains part of the defect), exactly."""
    n = SIZE - CROP + 1
    r0, r1, c0, c1 = DEFECT
    rows = min(r1 - 1, n - 1) - max(0, r0 - CROP + 1) + 1
    cols = min(c1 - 1, n - 1) - max(0, c0 - CROP + 1) + 1
    return rows * cols / (n * n)


def _hit_rate(transform, trials: int = 1000, seed: int = 0) -> float:
    torch.manual_seed(seed)
    image, target = _sparse()
    hits = 0
    for _ in range(trials):
        _, out = transform(image, target)
        s = out["sem_seg"]
        hits += int(((s != 0) & (s != 255)).any())
    return hits / trials


def test_defect_aware_crop_hits_defects_at_p07() -> None:
    rate = _hit_rate(DefectAwareCrop(CROP, p=0.7))
    expected = 0.7 + 0.3 * _random_hit_rate()  # ~0.73
    assert rate >= 0.65 and abs(rate - expected) < 0.05


def test_defect_aware_crop_at_p0_is_a_random_crop() -> None:
    analytic = _random_hit_rate()  # 67 * 67 / 193^2 ~ 0.12
    rate = _hit_rate(DefectAwareCrop(CROP, p=0.0))
    assert abs(rate - analytic) < 0.035  # 1000 trials: sd ~ 0.01


def test_fused_resize_and_crop_keeps_the_guarantee() -> None:
    pipeline = Compose([ResizeShortEdge((192, 256, 384)), DefectAwareCrop(CROP, p=0.7)])
    assert _hit_rate(pipeline) >= 0.65


def test_fused_path_matches_sequential_resize_then_crop() -> None:
    torch.manual_seed(1)
    sem = torch.randint(0, 4, (40, 260), dtype=torch.int64)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(260.0), indexing="ij")
    image = (
        ((torch.sin(xx / 7) + torch.cos(yy / 5)) * 60 + 128).to(torch.uint8).expand(3, -1, -1).contiguous()
    )
    boxes = torch.tensor([[10.0, 5.0, 120.0, 30.0], [200.0, 0.0, 259.0, 40.0]])
    target = {
        "sem_seg": sem,
        "boxes": boxes,
        "labels": torch.tensor([1, 2]),
        "masks": (sem[None] > 1).repeat(2, 1, 1).to(torch.uint8),
    }
    # window origin grid-aligned: identical pixels; 101/40 can't align: <= half a pixel off
    for sizes, exact in (((30, 57, 60, 72, 96), True), ((101,), False)):
        rs, cp = ResizeShortEdge(sizes), DefectAwareCrop((64, 96), p=0.0)
        for seed in range(8):
            g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            rs.generator = cp.generator = g1
            fused_img, fused = Compose([rs, cp])(image, target)
            rs.generator = cp.generator = g2
            seq_img, seq = cp(*rs(image, target))
            assert torch.equal(fused["sem_seg"], seq["sem_seg"]) and torch.equal(fused["masks"], seq["masks"])
            assert torch.equal(fused["boxes"], seq["boxes"]) and torch.equal(fused["labels"], seq["labels"])
            diff = (fused_img.float() - seq_img.float()).abs()
            assert fused_img.shape == seq_img.shape
            if exact:
                assert diff.max() == 0
            else:  # gradient <= 60/7 per pixel -> a half-pixel shift moves values by <= ~5
                assert diff.mean() < 1.5 and diff.max() <= 5


def test_resize_scales_boxes_and_masks() -> None:
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[4.0, 2.0, 8.0, 10.0]]),
        "masks": torch.zeros(1, 20, 40, dtype=torch.uint8),
    }
    target["masks"][0, 2:10, 4:8] = 1
    out_img, out = resize(image, target, (40, 80))
    assert out_img.shape == (3, 40, 80) and out["boxes"].tolist() == [[8.0, 4.0, 16.0, 20.0]]
    assert int(out["masks"].sum()) == 4 * 8 * 4
    rs = ResizeShortEdge(800, max_size=1333)
    assert rs.output_size(256, 1600) == (213, 1333)  # long edge capped
    assert ResizeShortEdge(384).output_size(256, 1600) == (384, 2400)


def test_crop_drops_degenerate_boxes_with_their_labels_and_masks() -> None:
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 45.0, 45.0]]),
        "labels": torch.tensor([1, 2]),
        "masks": torch.ones(2, 50, 50, dtype=torch.uint8),
        "image_id": 7,
    }
    out_img, out = crop(image, target, 20, 20, 20, 20)
    assert out_img.shape == (3, 20, 20)
    assert out["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]] and out["labels"].tolist() == [2]
    assert out["masks"].shape == (1, 20, 20) and out["image_id"] == 7


def test_flip_and_pad() -> None:
    image = torch.arange(2 * 5, dtype=torch.uint8).reshape(1, 2, 5).repeat(3, 1, 1)
    target = {"boxes": torch.tensor([[1.0, 0.0, 2.0, 1.0]]), "sem_seg": torch.arange(10).reshape(2, 5)}
    img, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert img[0, 0].tolist() == [4, 3, 2, 1, 0] and out["boxes"].tolist() == [[3.0, 0.0, 4.0, 1.0]]
    assert out["sem_seg"][0].tolist() == [4, 3, 2, 1, 0]
    same, _ = RandomHorizontalFlip(p=0.0)(image, target)
    assert torch.equal(same, image)
    img, out = PadToDivisible(4)(
        image, {"sem_seg": target["sem_seg"], "masks": torch.ones(1, 2, 5, dtype=torch.uint8)}
    )
    assert img.shape == (3, 4, 8) and img[:, 2:, :].sum() == 0
    assert (
        out["sem_seg"].shape == (4, 8)
        and (out["sem_seg"][2:] == 255).all()
        and (out["sem_seg"][:, 5:] == 255).all()
    )
    assert out["masks"].shape == (1, 4, 8) and out["masks"][0, 3, 7] == 0


def test_pipelines_are_deterministic_given_a_seed() -> None:
    image, target = _sparse()
    tf = build_transforms("semantic", "train", test_short_edge=128)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append([tf(image, target)[1]["sem_seg"] for _ in range(5)])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_build_transforms_defaults() -> None:
    train = build_transforms("semantic", "train", test_short_edge=384)
    kinds = [type(t).__name__ for t in train.transforms]
    # Mask2Former's mapper: training crops padded to the crop size (128 / 255); no colour by default.
    assert kinds == [
        "ResizeShortEdge",
        "DefectAwareCrop",
        "RandomHorizontalFlip",
        "PadToSize",
        "PadToDivisible",
    ]
    assert train.transforms[0].sizes[0] == 192 and train.transforms[0].sizes[-1] == 768
    assert train.transforms[1].size == (384, 384) and train.transforms[1].p == 0.7
    assert (train.transforms[3].size, train.transforms[3].fill, train.transforms[3].seg_fill) == (
        (384, 384),
        128,
        255,
    )
    val = build_transforms("semantic", "val", test_short_edge=384)
    img, out = val(
        torch.zeros(3, 256, 1600, dtype=torch.uint8), {"sem_seg": torch.zeros(256, 1600, dtype=torch.int64)}
    )
    assert img.shape == (3, 384, 2400) and out["sem_seg"].shape == (384, 2400)
    det = build_transforms("detection", "train")
    assert det.transforms[0].sizes == (640, 672, 704, 736, 768, 800) and det.transforms[0].max_size == 1333
    assert [type(t).__name__ for t in det.transforms] == [
        "ResizeShortEdge",
        "RandomHorizontalFlip",
        "PadToDivisible",
    ]
    custom = build_transforms(
        "instance",
        "train",
        train_short_edge=(100,),
        train_max_size=200,
        crop_size=(64, 32),
        crop_defect_p=0.5,
        flip=False,
        size_divisibility=1,
    )
    assert [type(t).__name__ for t in custom.transforms] == ["ResizeShortEdge", "DefectAwareCrop"]
    with pytest.raises(ValueError, match="unknown task 'panoptic'"):
        build_transforms("panoptic", "train")
