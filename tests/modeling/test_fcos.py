"""FCOS: anchor-point matching rules, centerness targets, losses on a hand-computed case,
inference scores sqrt(cls * ctrness), config building, and a short overfit run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from heron.config import get_cfg
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.meta_arch.build import build_model
from heron.modeling.meta_arch.fcos import FCOS, FCOSHead, add_fcos_config, fcos_match_quality
from heron.structures.boxes import Boxes, pairwise_iou
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import EventStorage
from tests.modeling.rcnn_fixtures import small_rcnn_cfg, synthetic_batch


class _TinyBackbone(Backbone):
    """One stride-8 feature map "p3" with 4 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self._out_features = ["p3"]
        self._out_feature_channels = {"p3": 4}
        self._out_feature_strides = {"p3": 8}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"p3": self.conv(x)}


def _tiny_fcos(num_classes: int = 1, **kwargs) -> FCOS:
    head = FCOSHead(
        input_shape=[ShapeSpec(channels=4, stride=8)], conv_dims=[4], num_classes=num_classes
    )
    return FCOS(
        backbone=_TinyBackbone(),
        head=head,
        num_classes=num_classes,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        **kwargs,
    )


def small_fcos_cfg():
    """ResNet-18 FPN FCOS (P3-P7, 32 channels, 2 tower convs with GN, 2 classes)."""
    cfg = add_fcos_config(small_rcnn_cfg())
    m = cfg.MODEL
    m.META_ARCHITECTURE = "FCOS"
    m.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    m.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    m.FCOS.NUM_CLASSES = 2
    m.FCOS.NUM_CONVS = 2
    return cfg


def _square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


# ------------------------------------------------------------------- matching


def test_match_quality_needs_center_region_inside_box_and_level_range():
    # level 0 (stride 8): points at (4, 4), (12, 4), (28, 4); level 1 (stride 16): (8, 8)
    anchors = [
        Boxes(torch.tensor([_square(4, 4, 8), _square(12, 4, 8), _square(28, 4, 8)])),
        Boxes(torch.tensor([_square(8, 8, 16)])),
    ]
    gt = Boxes(torch.tensor([[0.0, 0.0, 16.0, 8.0]]))  # centre (8, 4), area 128
    quality = fcos_match_quality(gt, anchors, center_sampling_radius=1.5)
    # (4, 4): |dx|, |dy| = 4, 0 < 1.5 * 8; inside (l, t, r, b = 4, 4, 12, 4); max 12 in (0, 64)
    # (12, 4): likewise (12, 4, 4, 4); (28, 4): 20 px from the centre, outside the region
    # (8, 8) on level 1: on the bottom edge (b = 0), not strictly inside
    expected = torch.tensor([[1e8 - 128, 1e8 - 128, 0.0, 0.0]])
    torch.testing.assert_close(quality, expected)


def test_match_quality_limits_each_level_to_its_size_range():
    # the same point (4, 4) on level 0 (stride 8, range (0, 64)) and on the last level
    # (stride 16, range (64, inf))
    anchors = [Boxes(torch.tensor([_square(4, 4, 8)])), Boxes(torch.tensor([_square(4, 4, 16)]))]
    gt = Boxes(torch.tensor([[-100.0, 0.0, 8.0, 8.0]]))  # l, t, r, b = 104, 4, 4, 4; area 864
    quality = fcos_match_quality(gt, anchors, center_sampling_radius=10.0)
    # centre (-46, 4) is 50 px away: within 10 * 8 and 10 * 16; max distance 104 > 64
    torch.testing.assert_close(quality, torch.tensor([[0.0, 1e8 - 864]]))


def test_label_anchors_prefers_the_smaller_box_and_handles_no_ground_truth():
    model = _tiny_fcos(num_classes=3)
    anchors = [Boxes(torch.tensor([_square(4, 4, 8), _square(12, 4, 8), _square(60, 60, 8)]))]
    gt = Instances(
        (64, 64),
        gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 16.0, 8.0], [0.0, 0.0, 8.0, 8.0]])),
        gt_classes=torch.tensor([2, 1]),
    )
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    labels, boxes = model.label_anchors(anchors, [gt, empty])
    # (4, 4) is in both boxes: the 8x8 (area 64) beats the 16x8; (12, 4) only in the first
    # ((12, 4) lies on the 8x8 box's right edge); (60, 60) in neither -> background 3
    assert labels[0].tolist() == [1, 2, 3]
    torch.testing.assert_close(
        boxes[0][:2], torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 8.0]])
    )
    assert labels[1].tolist() == [3, 3, 3]
    assert boxes[1].shape == (3, 4)


# ------------------------------------------------------------------- losses


def test_centerness_target_is_sqrt_of_side_ratios():
    model = _tiny_fcos()
    anchors = [Boxes(torch.tensor([_square(4, 4, 8)]))]
    targets = model.compute_ctrness_targets(anchors, [torch.tensor([[0.0, 0.0, 16.0, 8.0]])])
    # l, t, r, b = 4, 4, 12, 4: sqrt(min/max(l, r) * min/max(t, b)) = sqrt(1/3)
    torch.testing.assert_close(targets, torch.tensor([[math.sqrt(1 / 3)]]))


def test_losses_match_hand_computed_values():
    model = _tiny_fcos(num_classes=1)
    anchors = [Boxes(torch.tensor([_square(4, 4, 8), _square(60, 60, 8)]))]
    # anchor 0: foreground; deltas 0.5 * stride = 4 px each side -> box [0, 0, 8, 8]
    # anchor 1: background with logit 0
    pred_logits = [torch.zeros(1, 2, 1)]
    pred_deltas = [torch.tensor([[[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]]])]
    pred_ctr = [torch.tensor([[[0.0], [5.0]]])]
    gt_labels = [torch.tensor([0, 1])]
    gt_boxes = [torch.tensor([[0.0, 0.0, 16.0, 8.0], [0.0, 0.0, 16.0, 8.0]])]
    losses = model.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr)
    # focal: fg (target 1) p = 0.5 -> 0.25 * 0.25 * ln 2; bg (target 0) p = 0.5 -> 0.75 * 0.25 * ln 2
    focal = (0.0625 + 0.1875) * math.log(2.0)
    # GIoU of [0, 0, 8, 8] vs [0, 0, 16, 8]: IoU 64 / 128, enclosing box = gt -> loss 0.5
    giou = 0.5
    # centerness BCE, logit 0 vs target sqrt(1/3): -(t ln 0.5 + (1 - t) ln 0.5) = ln 2
    ctr = math.log(2.0)
    normalizer = 300 * 0.9 + 1 * 0.1  # EMA from 300 with one foreground point
    torch.testing.assert_close(losses["loss_fcos_cls"], torch.tensor(focal / normalizer))
    torch.testing.assert_close(losses["loss_fcos_loc"], torch.tensor(giou / normalizer))
    torch.testing.assert_close(losses["loss_fcos_ctr"], torch.tensor(ctr / normalizer))


# ------------------------------------------------------------------- inference


def test_inference_score_is_sqrt_of_class_times_centerness():
    model = _tiny_fcos(num_classes=1).eval()  # test_score_thresh 0.2
    features = [torch.zeros(1, 4, 1, 2)]  # two points: (4, 4) and (12, 4), stride 8
    logits = [torch.full((1, 1, 1, 2), math.log(4.0))]  # sigmoid = 0.8 at both points
    deltas = [torch.full((1, 4, 1, 2), 0.5)]  # 4 px to each side
    # centerness probs 0.2 and 1/80: scores sqrt(0.16) = 0.4 and sqrt(0.01) = 0.1 < 0.2
    ctr = [torch.tensor([math.log(0.25), -math.log(79.0)]).view(1, 1, 1, 2)]
    images = ImageList(torch.zeros(1, 3, 8, 16), [(8, 16)])
    (result,) = model.forward_inference(images, features, (logits, deltas, ctr))
    torch.testing.assert_close(result.scores, torch.tensor([0.4]))
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert result.pred_classes.tolist() == [0]


def test_fcos_head_outputs_and_keys():
    head = FCOSHead(
        input_shape=[ShapeSpec(channels=32, stride=8)] * 2, conv_dims=[32], num_classes=3, norm="GN"
    )
    assert {"ctrness.weight", "cls_subnet.1.weight", "bbox_pred.weight"} <= set(head.state_dict())
    logits, deltas, ctr = head([torch.zeros(1, 32, 4, 4), torch.zeros(1, 32, 2, 2)])
    assert [t.shape for t in logits] == [(1, 3, 4, 4), (1, 3, 2, 2)]
    assert [t.shape for t in deltas] == [(1, 4, 4, 4), (1, 4, 2, 2)]
    assert [t.shape for t in ctr] == [(1, 1, 4, 4), (1, 1, 2, 2)]


# ------------------------------------------------------------------- config and training


def test_head_in_features_default_to_all_backbone_outputs_by_stride():
    assert _tiny_fcos().head_in_features == ["p3"]
    with pytest.raises(KeyError, match=r"\['p9'\] are not backbone outputs"):
        _tiny_fcos(head_in_features=["p9"])


def test_fcos_from_config_needs_the_fcos_section():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    with pytest.raises(KeyError, match="add_fcos_config"):
        FCOS.from_config(cfg)


def test_add_fcos_config_uses_detectron2_lazy_defaults_and_keeps_existing_keys():
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.3
    add_fcos_config(cfg)
    f = cfg.MODEL.FCOS
    assert (f.SCORE_THRESH_TEST, f.NMS_THRESH_TEST, f.HEAD_NORM) == (0.3, 0.6, "GN")
    assert f.CENTER_SAMPLING_RADIUS == 1.5 and f.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]


def test_fcos_trains_on_empty_ground_truth():
    torch.manual_seed(0)
    model = build_model(small_fcos_cfg()).train()
    batch = synthetic_batch(size=64)
    for x in batch:
        x["instances"] = x["instances"][torch.zeros(len(x["instances"]), dtype=torch.bool)]
    losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert losses["loss_fcos_loc"].item() == 0.0 and losses["loss_fcos_ctr"].item() == 0.0
    assert losses["loss_fcos_cls"].item() > 0
    sum(losses.values()).backward()


def test_fcos_overfits_two_images():
    torch.manual_seed(0)
    model = build_model(small_fcos_cfg()).train()
    assert isinstance(model, FCOS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = synthetic_batch()
    sums = []  # losses times the normalizer: the EMA from 300 would mask the drop
    with EventStorage() as storage:
        for step in range(30):
            storage.iter = step
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            sums.append(total.item() * model.loss_normalizer)
    end = sum(sums[-5:]) / 5
    print(f"fcos: summed loss {sums[0]:.3f} -> {end:.3f} ({end / sums[0]:.1%})")
    assert end < 0.5 * sums[0], sums
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for inputs, outputs_i in zip(batch, outputs):
        gt, pred = inputs["instances"], outputs_i["instances"]
        iou = pairwise_iou(gt.gt_boxes, pred.pred_boxes)  # (G, D)
        for g in range(len(gt)):
            hit = (iou[g] > 0.5) & (pred.pred_classes == gt.gt_classes[g]) & (pred.scores > 0.5)
            assert hit.any(), f"object {g} ({gt.gt_boxes.tensor[g].tolist()}) not detected: {pred}"
