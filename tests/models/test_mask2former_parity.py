"""raybench's Mask2Former port equals transformers' implementation, layer by layer and in the loss.

Method: build ``Mask2FormerForUniversalSegmentation`` offline (random init, default Swin config with
channels 96/192/384/768 - its backbone is never run), copy its head into the port with
``load_transformers_weights``, feed both the same random 4-level features (non-square, so that any
x/y mix-up shows) and compare: pixel decoder outputs, class and mask logits of every decoder
prediction (eval mode), then every loss term and every parameter gradient (train mode, dropout 0)
with the point sampling seeded identically for both.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers is in the test extra: if it is missing the parity proof must fail, not skip.

from raybench.models.mask2former import (  # noqa: E402
    Mask2FormerHead,
    load_transformers_weights,
    semantic_to_targets,
)
from raybench.models.mask2former.hf_weights import _pixel_decoder_key, _predictor_key  # noqa: E402
from raybench.study.model_options import Mask2FormerOptions  # noqa: E402

K = 3
CHANNELS = (96, 192, 384, 768)
SMALL = dict(num_queries=12, enc_layers=2, dec_layers=5)  # 4 masked layers: levels 0, 1, 2, 0
HEIGHT, WIDTH = 64, 96
ATOL = 1e-4


def _hf_model(num_points: int = 2000):
    from transformers import Mask2FormerConfig as HFConfig
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    config = HFConfig(
        num_labels=K,
        num_queries=SMALL["num_queries"],
        encoder_layers=SMALL["enc_layers"],
        decoder_layers=SMALL["dec_layers"],
        train_num_points=num_points,
        dropout=0.0,
    )
    return Mask2FormerForUniversalSegmentation(config)


def _port(dense_mask_grad: bool = False, **overrides) -> Mask2FormerHead:
    options = Mask2FormerOptions(**{**SMALL, **overrides})
    port = Mask2FormerHead.from_options(options, num_classes=K, in_channels=CHANNELS)
    port.predictor.dense_mask_grad = dense_mask_grad  # a switch of the built head, not an option
    return port


def _features(batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [
        torch.randn(batch, c, HEIGHT // s, WIDTH // s, generator=gen)
        for c, s in zip(CHANNELS, (4, 8, 16, 32))
    ]


def _targets() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    out = []
    for _ in range(2):
        sem = torch.randint(0, K, (4, 6), generator=gen).repeat_interleave(16, 0).repeat_interleave(16, 1)
        sem[:6, :10] = 255  # some ignore pixels
        out.append(semantic_to_targets(sem, K))
    return out


def _hf_forward(hf, features):
    """What Mask2FormerForUniversalSegmentation.forward does after its backbone."""
    pixel = hf.model.pixel_level_module.decoder(features)
    tm = hf.model.transformer_module(
        multi_scale_features=pixel.multi_scale_features,
        mask_features=pixel.mask_features,
        output_hidden_states=True,
    )
    logits = [hf.class_predictor(h.transpose(0, 1)) for h in tm.intermediate_hidden_states]
    return pixel, logits, list(tm.masks_queries_logits)


@pytest.fixture(scope="module")
def models():
    hf = _hf_model()
    port = _port(num_points=2000)
    load_transformers_weights(port, hf)
    return hf, port


def test_pixel_decoder_and_every_decoder_layer_match(models):
    hf, port = models
    hf.eval()
    port.eval()
    features = _features()
    with torch.no_grad():
        pixel, hf_logits, hf_masks = _hf_forward(hf, features)
        mask_features, multi_scale = port.pixel_decoder(features)
        out = port.predictor(multi_scale, mask_features)

    assert mask_features.shape == (2, 256, HEIGHT // 4, WIDTH // 4)
    assert (mask_features - pixel.mask_features).abs().max() <= ATOL
    assert len(multi_scale) == len(pixel.multi_scale_features) == 3
    for ours, ref in zip(multi_scale, pixel.multi_scale_features):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= ATOL

    predictions = [*out["aux_outputs"], out]
    assert len(predictions) == len(hf_logits) == SMALL["dec_layers"]
    for i, (pred, logits, masks) in enumerate(zip(predictions, hf_logits, hf_masks)):
        assert pred["pred_logits"].shape == (2, SMALL["num_queries"], K + 1)
        assert (pred["pred_logits"] - logits).abs().max() <= ATOL, f"class logits of prediction {i}"
        assert (pred["pred_masks"] - masks).abs().max() <= ATOL, f"mask logits of prediction {i}"


def _hf_loss(hf, features, targets, seed):
    _, logits, masks = _hf_forward(hf, features)
    aux = hf.get_auxiliary_logits(logits, masks)
    torch.manual_seed(seed)
    loss_dict = hf.get_loss_dict(
        masks[-1], logits[-1], [t["masks"].float() for t in targets], [t["labels"] for t in targets], aux
    )
    return hf.get_loss(loss_dict), loss_dict


def _port_name(hf_name: str) -> str:
    for ref, ours in (
        ("loss_cross_entropy", "loss_ce"),
        ("loss_mask", "loss_mask"),
        ("loss_dice", "loss_dice"),
    ):
        if hf_name.startswith(ref):
            return ours + hf_name[len(ref) :]
    raise KeyError(hf_name)


def _gradient_pairs(port, hf):
    hf_params = dict(hf.named_parameters())
    for name, param in port.named_parameters():
        if name.startswith("pixel_decoder."):
            hf_name, transform = _pixel_decoder_key(name[len("pixel_decoder.") :]), (lambda t: t)
        else:
            hf_name, transform = _predictor_key(name[len("predictor.") :])
        yield name, param.grad, transform(hf_params[hf_name].grad)


@pytest.mark.parametrize(
    "class_cost, dense_mask_grad, use_generator",
    [(2.0, False, False), (1.0, False, True), (2.0, True, False)],
    ids=["class_cost2", "class_cost1-generator", "dense_mask_grad"],
)
def test_loss_terms_and_gradients_match(class_cost, dense_mask_grad, use_generator):
    hf = _hf_model(num_points=2000)
    # transformers >= 5 takes the matcher's class cost from config.class_weight (2.0); older releases
    # hard-coded 1.0. Set it on the matcher directly so that the loss weight stays 2.0.
    hf.criterion.matcher.cost_class = class_cost
    port = _port(num_points=2000, class_cost=class_cost, dense_mask_grad=dense_mask_grad)
    load_transformers_weights(port, hf)
    hf.train()
    port.train()
    features, targets = _features(), _targets()

    hf_total, hf_terms = _hf_loss(hf, features, targets, seed=123)
    hf_total.backward()
    out = port(features)
    if use_generator:
        terms = port.loss(out, targets, generator=torch.Generator().manual_seed(123))
    else:
        torch.manual_seed(123)
        terms = port.loss(out, targets)
    terms["loss"].backward()

    assert set(terms) == {_port_name(k) for k in hf_terms} | {"loss"}
    assert len(hf_terms) == 3 * SMALL["dec_layers"]
    for name, value in hf_terms.items():
        assert terms[_port_name(name)].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    assert terms["loss"].item() == pytest.approx(hf_total.item(), rel=1e-5)

    scale = max(g.abs().max().item() for _, _, g in _gradient_pairs(port, hf))
    for name, ours, ref in _gradient_pairs(port, hf):
        assert ours is not None, f"no gradient for {name}"
        # Key-projection biases cancel in the softmax: both gradients are rounding noise around 0.
        tol = 1e-4 * max(ref.abs().max().item(), 1e-3 * scale)
        assert (ours - ref).abs().max().item() <= tol, name


def test_weight_loading_is_strict(models):
    hf, _ = models
    with pytest.raises(ValueError, match="shape mismatches"):
        load_transformers_weights(_port(num_queries=SMALL["num_queries"] + 1), hf)
    with pytest.raises(ValueError, match="port tensors without a source"):
        load_transformers_weights(_port(dec_layers=SMALL["dec_layers"] + 1), hf)
    with pytest.raises(ValueError, match="reference tensors not used"):
        load_transformers_weights(_port(enc_layers=SMALL["enc_layers"] - 1), hf)
