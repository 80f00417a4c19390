"""SemSegFPNHead (layout, shapes, loss) and SemanticSegmentor (padding, outputs, training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heron.layers.shape_spec import ShapeSpec
from heron.modeling.meta_arch.build import build_model
from heron.modeling.meta_arch.semantic_seg import (
    SEM_SEG_HEADS_REGISTRY,
    SemanticSegmentor,
    SemSegFPNHead,
    build_sem_seg_head,
    pad_sem_seg_targets,
)
from heron.utils.events import EventStorage
from tests.modeling.rcnn_fixtures import OBJECTS, small_rcnn_cfg, synthetic_batch

FPN_SHAPES = {f"p{i}": ShapeSpec(channels=8, stride=2**i) for i in (2, 3, 4, 5)}


def _head(**kwargs) -> SemSegFPNHead:
    args = {"num_classes": 3, "conv_dims": 4, "common_stride": 4, "norm": ""}
    args.update(kwargs)
    return SemSegFPNHead(FPN_SHAPES, **args)


def test_head_parameters_follow_detectron2_state_dict_layout():
    from tests.parity.kit import spec

    expected = {
        key[len("sem_seg_head.") :]: shape
        for key, shape, _ in spec("semantic_R50_FPN")["state_dict"]
        if key.startswith("sem_seg_head.")
    }
    shapes = {k: ShapeSpec(channels=256, stride=v.stride) for k, v in FPN_SHAPES.items()}
    head = SemSegFPNHead(shapes, num_classes=54, conv_dims=128, common_stride=4, norm="GN")
    ours = {k: list(v.shape) for k, v in head.state_dict().items()}
    assert ours == expected


def test_scale_heads_upsample_each_level_to_the_common_stride():
    head = _head()
    # stride 4: one conv, no upsampling; stride 2**k: k - 2 conv + 2x upsample blocks
    kinds = {
        name: [type(m).__name__ for m in getattr(head, name)] for name in ("p2", "p3", "p4", "p5")
    }
    assert kinds["p2"] == ["Conv2d"]
    assert kinds["p3"] == ["Conv2d", "Upsample"]
    assert kinds["p5"] == ["Conv2d", "Upsample"] * 3
    features = {k: torch.rand(2, 8, 64 // v.stride, 96 // v.stride) for k, v in FPN_SHAPES.items()}
    assert head.layers(features).shape == (2, 3, 16, 24)
    logits, losses = head.eval()(features)
    assert logits.shape == (2, 3, 64, 96) and losses == {}


def test_head_with_zero_convs_predicts_the_bias_everywhere():
    head = _head().eval()
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
    head.predictor.bias.data = torch.tensor([1.0, -2.0, 0.5])
    features = {k: torch.rand(1, 8, 32 // v.stride, 32 // v.stride) for k, v in FPN_SHAPES.items()}
    logits, _ = head(features)
    # every ReLU(conv) is 0, so the sum is 0 and the 1x1 predictor gives its bias
    torch.testing.assert_close(
        logits, torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    )


def test_loss_is_mean_cross_entropy_over_labelled_pixels():
    head = SemSegFPNHead(
        {"p1": ShapeSpec(channels=2, stride=1)},
        num_classes=2,
        conv_dims=2,
        common_stride=1,
        loss_weight=0.5,
        ignore_value=255,
    )
    logits = torch.tensor([[2.0, 0.0, 5.0], [0.0, 0.0, -5.0]]).view(1, 2, 1, 3)
    targets = torch.tensor([[[0, 1, 255]]])
    # pixel 0: -log(e^2 / (e^2 + 1)) = log(1 + e^-2); pixel 1: log 2; pixel 2 ignored
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2
    loss = head.losses(logits, targets)["loss_sem_seg"]
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_loss_upsamples_predictions_by_the_common_stride():
    head = SemSegFPNHead(
        {"p1": ShapeSpec(channels=2, stride=2)}, num_classes=2, conv_dims=2, common_stride=2
    )
    logits = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # constant: upsampling keeps it
    targets = torch.tensor([[[1, 1], [0, -1]]])  # default ignore_value is -1
    # two pixels labelled 1: log(1 + e^-1); one labelled 0: log(1 + e^1)
    expected = (2 * math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 3
    torch.testing.assert_close(head.losses(logits, targets)["loss_sem_seg"], torch.tensor(expected))
    with pytest.raises(ValueError, match=r"targets of shape \(1, 3, 3\)"):
        head.losses(logits, torch.zeros(1, 3, 3, dtype=torch.long))


def test_head_rejects_bad_configuration_and_missing_targets():
    with pytest.raises(ValueError, match="stride 2, below common_stride=4"):
        SemSegFPNHead(
            {"p1": ShapeSpec(channels=2, stride=2)}, num_classes=2, conv_dims=2, common_stride=4
        )
    with pytest.raises(ValueError, match="input_shape is empty"):
        SemSegFPNHead({}, num_classes=2, conv_dims=2, common_stride=4)
    features = {k: torch.rand(1, 8, 32 // v.stride, 32 // v.stride) for k, v in FPN_SHAPES.items()}
    with pytest.raises(ValueError, match="targets are required"):
        _head().train()(features)


def test_build_sem_seg_head_reads_the_config_and_names_unknown_heads():
    cfg = small_rcnn_cfg()
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p3", "p2"]  # used in stride order
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 0.25
    head = build_sem_seg_head(cfg, FPN_SHAPES)
    assert head.in_features == ["p2", "p3"]
    assert head.predictor.weight.shape == (5, 32, 1, 1)
    assert isinstance(head.p2[0].norm, nn.GroupNorm)  # NORM defaults to "GN"
    assert (head.ignore_value, head.loss_weight, head.common_stride) == (255, 0.25, 4)
    assert "SemSegFPNHead" in SEM_SEG_HEADS_REGISTRY
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p7"]
    with pytest.raises(KeyError, match=r"\['p7'\]"):
        build_sem_seg_head(cfg, FPN_SHAPES)
    cfg.MODEL.SEM_SEG_HEAD.NAME = "NoSuchHead"
    with pytest.raises(KeyError, match="SemSegFPNHead"):
        build_sem_seg_head(cfg, FPN_SHAPES)


def _semantic_cfg():
    cfg = small_rcnn_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    return cfg


def _semantic_batch(size: int = 64) -> list[dict]:
    """The synthetic rectangles at half size, labelled 1 + class, background 0."""
    batch = []
    for inputs, objects in zip(synthetic_batch(2 * size), OBJECTS):
        image = nn.functional.interpolate(inputs["image"][None], size=(size, size))[0]
        sem_seg = torch.zeros(size, size, dtype=torch.long)
        for x0, y0, x1, y1, cls in objects:
            sem_seg[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = cls + 1
        batch.append({"image": image, "sem_seg": sem_seg})
    return batch


def test_pad_sem_seg_targets_pads_with_the_ignore_value():
    model = build_model(_semantic_cfg())
    batch = [
        {"sem_seg": torch.ones(30, 40, dtype=torch.long)},
        {"sem_seg": torch.zeros(32, 20, dtype=torch.long)},
    ]
    targets = pad_sem_seg_targets(batch, model.backbone, 255, torch.device("cpu"))
    # the FPN's size divisibility is 32: (32, 40) rounds up to (32, 64)
    assert targets.shape == (2, 32, 64)
    assert (targets[0, :30, :40] == 1).all() and (targets[0, 30:] == 255).all()
    assert (targets[0, :, 40:] == 255).all() and (targets[1, :, 20:] == 255).all()
    with pytest.raises(ValueError, match=r"input 1: 'sem_seg' must be an integer \(H, W\)"):
        pad_sem_seg_targets(
            [batch[0], {"sem_seg": torch.zeros(32, 20)}], model.backbone, 255, "cpu"
        )
    with pytest.raises(KeyError, match="input 0 has no 'sem_seg'"):
        pad_sem_seg_targets([{"image": 0}], model.backbone, 255, "cpu")


def test_semantic_segmentor_outputs_logits_at_the_requested_size():
    model = build_model(_semantic_cfg()).eval()
    assert isinstance(model, SemanticSegmentor)
    batch = [{"image": torch.rand(3, 40, 50) * 255, "height": 80, "width": 100}]
    batch.append({"image": torch.rand(3, 64, 64) * 255})
    with torch.no_grad():
        outputs = model(batch)
    assert outputs[0]["sem_seg"].shape == (3, 80, 100)
    assert outputs[1]["sem_seg"].shape == (3, 64, 64)
    with pytest.raises(KeyError, match="input 0 has no 'sem_seg'"):
        model.train()(batch)


def _pixel_accuracy(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    model.train()
    hits = [(o["sem_seg"].argmax(0) == x["sem_seg"]).float().mean() for o, x in zip(outputs, batch)]
    return float(sum(hits) / len(hits))


def test_semantic_segmentor_overfits_two_images():
    torch.manual_seed(0)
    model = build_model(_semantic_cfg()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _semantic_batch()
    accuracy_before = _pixel_accuracy(model, batch)
    totals = []
    with EventStorage():
        for _ in range(30):
            losses = model(batch)
            assert set(losses) == {"loss_sem_seg"}
            optimizer.zero_grad()
            losses["loss_sem_seg"].backward()
            optimizer.step()
            totals.append(losses["loss_sem_seg"].item())
    accuracy_after = _pixel_accuracy(model, batch)
    end = sum(totals[-3:]) / 3
    print(
        f"loss {totals[0]:.3f} -> {end:.3f}; pixel accuracy {accuracy_before:.3f} -> "
        f"{accuracy_after:.3f}"
    )
    assert end < 0.3 * totals[0], totals
    assert accuracy_after > 0.9 and accuracy_after > accuracy_before + 0.2
