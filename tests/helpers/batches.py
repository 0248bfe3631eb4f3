"""Hand-made batches in the tasks' contracts, shared by the model and engine tests."""

from __future__ import annotations

import torch


def detection_batch(masks: bool) -> tuple[list[torch.Tensor], list[dict]]:
    """Two 64 x 80 uint8 images with one and two boxes (classes 1, 2), and their instance
    masks (the boxes filled) when ``masks``: the detection dataset contract."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=g) for _ in range(2)]
    targets = []
    for k in range(2):
        boxes = torch.tensor([[8.0, 10.0, 30.0, 40.0], [40.0, 20.0, 70.0, 50.0]])[: k + 1]
        t = {"boxes": boxes, "labels": torch.tensor([1, 2][: k + 1]), "image_id": k}
        if masks:
            m = torch.zeros(len(boxes), 64, 80, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
                m[i, y1:y2, x1:x2] = 1
            t["masks"] = m
        targets.append(t)
    return images, targets
