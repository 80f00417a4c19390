"""RetinaNet and the DenseDetector base: layout of dense predictions, anchor labels,
losses on hand-computed cases, inference thresholds/top-k/NMS order, and a short
overfit run on the synthetic images."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from heron.layers.batch_norm import CycleBatchNormList
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.anchor_generator import DefaultAnchorGenerator
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.matcher import Matcher
from heron.modeling.meta_arch.build import build_model
from heron.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from heron.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from heron.structures.boxes import Boxes, pairwise_iou
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


def _tiny_retinanet(num_classes: int = 2, **kwargs) -> RetinaNet:
    backbone = _TinyBackbone()
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=4, stride=8)],
        num_classes=num_classes,
        num_anchors=1,
        conv_dims=[4],
    )
    return RetinaNet(
        backbone=backbone,
        head=head,
        head_in_features=["p3"],
        anchor_generator=DefaultAnchorGenerator(sizes=[[16]], aspect_ratios=[[1.0]], strides=[8]),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        **kwargs,
    )


def small_retinanet_cfg():
    """ResNet-18 FPN RetinaNet (P3-P7, 32 channels, 2 tower convs, 2 classes)."""
    cfg = small_rcnn_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE = "RetinaNet"
    m.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    m.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    m.RETINANET.NUM_CLASSES = 2
    m.RETINANET.NUM_CONVS = 2
    m.ANCHOR_GENERATOR.SIZES = [
        [s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)] for s in (32, 64, 128, 256, 512)
    ]
    return cfg


# ------------------------------------------------------------------- layout


def test_permute_to_N_HWA_K_puts_location_major_then_anchor():
    N, A, K, H, W = 2, 2, 3, 2, 3
    # value encodes (image, channel, y, x) so every output cell can be checked by hand
    n = torch.arange(N).view(N, 1, 1, 1) * 1000
    c = torch.arange(A * K).view(1, A * K, 1, 1) * 100
    y = torch.arange(H).view(1, 1, H, 1) * 10
    x = torch.arange(W).view(1, 1, 1, W)
    out = permute_to_N_HWA_K(n + c + y + x, K)
    assert out.shape == (N, H * W * A, K)
    # row (y * W + x) * A + a, column k holds channel a * K + k at (y, x)
    assert out[0, 0].tolist() == [0, 100, 200]  # y=0, x=0, anchor 0: channels 0..2
    assert out[0, 1].tolist() == [300, 400, 500]  # y=0, x=0, anchor 1: channels 3..5
    assert out[0, 2].tolist() == [1, 101, 201]  # y=0, x=1, anchor 0
    assert out[1, (1 * W + 2) * A + 1].tolist() == [1312, 1412, 1512]  # image 1, y=1, x=2, a=1


def test_permute_to_N_HWA_K_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        permute_to_N_HWA_K(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="not a multiple of K=4"):
        permute_to_N_HWA_K(torch.zeros(1, 6, 2, 2), 4)


def test_transpose_dense_predictions_flattens_each_kind_with_its_K():
    model = _tiny_retinanet(num_classes=3)
    logits = [torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 2, 3)]
    deltas = [torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 2, 3)]
    out_logits, out_deltas = model._transpose_dense_predictions([logits, deltas], [3, 4])
    assert [t.shape for t in out_logits] == [(2, 20, 3), (2, 6, 3)]
    assert [t.shape for t in out_deltas] == [(2, 20, 4), (2, 6, 4)]


# ------------------------------------------------------------------- head


def test_retinanet_head_uses_detectron2_keys_and_prior_bias():
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=8, stride=8)] * 2,
        num_classes=3,
        num_anchors=2,
        conv_dims=[8, 8],
        prior_prob=0.01,
    )
    keys = set(head.state_dict())
    assert {"cls_subnet.0.weight", "cls_subnet.2.weight", "bbox_subnet.2.bias"} <= keys
    assert {"cls_score.weight", "bbox_pred.bias"} <= keys
    # bias = -log((1 - 0.01) / 0.01) = -log(99)
    torch.testing.assert_close(head.cls_score.bias, torch.full((6,), -math.log(99.0)))
    logits, deltas = head([torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])
    assert [t.shape for t in logits] == [(1, 6, 4, 4), (1, 6, 2, 2)]
    assert [t.shape for t in deltas] == [(1, 8, 4, 4), (1, 8, 2, 2)]
    with pytest.raises(ValueError, match="built for 2 levels, got 1"):
        head([torch.zeros(1, 8, 4, 4)])


def test_retinanet_head_bn_keeps_statistics_per_level():
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=4, stride=8)] * 2,
        num_classes=1,
        num_anchors=1,
        conv_dims=[4],
        norm="BN",
    )
    assert isinstance(head.cls_subnet[1], CycleBatchNormList)
    assert set(head.state_dict()) >= {"cls_subnet.1.weight", "cls_subnet.1.0.running_mean"}
    head.train()
    head([torch.zeros(2, 4, 4, 4), torch.full((2, 4, 4, 4), 5.0)])
    # conv weights are random but the two levels' inputs differ, so their stats must too
    bn = head.cls_subnet[1]
    assert not torch.equal(bn[0].running_mean, bn[1].running_mean)


def test_retinanet_head_gn_adds_group_norm_after_each_conv():
    head = RetinaNetHead(
        input_shape=[ShapeSpec(channels=32, stride=8)],
        num_classes=1,
        num_anchors=1,
        conv_dims=[32, 32],
        norm="GN",
    )
    kinds = [type(m).__name__ for m in head.bbox_subnet]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU"]


# ------------------------------------------------------------------- labels and losses


def test_label_anchors_fg_ignore_bg_and_low_quality_match():
    model = _tiny_retinanet(num_classes=2)
    anchors = [
        Boxes(
            torch.tensor(
                [
                    [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 -> class 1
                    [0.0, 0.0, 10.0, 4.5],  # IoU 45 / 100 = 0.45 in [0.4, 0.5) -> ignored
                    [20.0, 20.0, 30.0, 30.0],  # IoU 0 -> background (2)
                    [45.0, 45.0, 55.0, 55.0],  # IoU 25 / 175 with gt 1, its best -> class 0
                ]
            )
        )
    ]
    gt = Instances(
        (64, 64),
        gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])),
        gt_classes=torch.tensor([1, 0]),
    )
    empty = Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    labels, boxes = model.label_anchors(anchors, [gt, empty])
    assert labels[0].tolist() == [1, -1, 2, 0]
    torch.testing.assert_close(boxes[0][3], torch.tensor([40.0, 40.0, 50.0, 50.0]))
    assert labels[1].tolist() == [2, 2, 2, 2]
    assert boxes[1].shape == (4, 4)


def test_losses_match_hand_computed_focal_and_smooth_l1():
    model = _tiny_retinanet(num_classes=2, smooth_l1_beta=1.0)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]]))]
    # anchor 0: foreground of class 0; anchor 1: ignored, with logits that would be costly
    pred_logits = [torch.tensor([[[0.0, -math.log(3.0)], [9.0, 9.0]]])]
    pred_deltas = [torch.tensor([[[0.5, 0.5, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]]])]
    gt_labels = [torch.tensor([0, -1])]
    gt_boxes = [torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])]
    losses = model.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)
    # class 0 (target 1): p = 0.5, CE = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25
    # class 1 (target 0): p = 1/4, CE = ln(4/3), (1 - p_t)^2 = 1/16, alpha_t = 0.75
    focal = 0.25 * 0.25 * math.log(2.0) + 0.75 / 16 * math.log(4.0 / 3.0)
    # gt deltas vs anchor: dx = 0, dy = (10 - 5) / 10 = 0.5, dw = 0, dh = ln 2
    # smooth L1 (beta 1) of diffs (0.5, 0, 0, ln 2): 0.5 * 0.25 + 0.5 * ln(2)^2
    box = 0.125 + 0.5 * math.log(2.0) ** 2
    normalizer = 100 * 0.9 + 1 * 0.1  # EMA from 100 with one foreground anchor
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(focal / normalizer))
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(box / normalizer))
    # The normalizer keeps averaging: second call divides by 90.1 * 0.9 + 0.1
    again = model.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)
    torch.testing.assert_close(again["loss_cls"], torch.tensor(focal / (normalizer * 0.9 + 0.1)))


def test_giou_box_loss_on_decoded_boxes():
    model = _tiny_retinanet(num_classes=1, box_reg_loss_type="giou")
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))]
    # zero deltas decode to the anchor; IoU with gt = 100 / 200, enclosing box = gt -> GIoU 0.5
    losses = model.losses(
        anchors,
        [torch.zeros(1, 1, 1)],
        [torch.tensor([0])],
        [torch.zeros(1, 1, 4)],
        [torch.tensor([[0.0, 0.0, 10.0, 20.0]])],
    )
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.5 / 90.1))


def test_unknown_box_loss_type_is_rejected():
    with pytest.raises(ValueError, match=r"box_reg_loss_type must be one of .* got 'l2'"):
        _tiny_retinanet(box_reg_loss_type="l2")


# ------------------------------------------------------------------- inference


def test_inference_thresholds_topk_per_level_then_classwise_nms():
    model = _tiny_retinanet(num_classes=2, test_topk_candidates=2)
    anchors = [
        Boxes(
            torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
        ),
        Boxes(torch.tensor([[1.0, 0.0, 11.0, 10.0]])),
    ]
    scores = [
        # level 0 candidates > 0.05: 0.9 (a0 c0), 0.6 (a1 c0), 0.7 (a1 c1), 0.5 (a2 c1);
        # top 2 per level: 0.9 and 0.7
        torch.tensor([[0.9, 0.04], [0.6, 0.7], [0.03, 0.5]]),
        # level 1: both kept; after NMS, 0.8 (c0) overlaps a0 (IoU 90 / 110) and 0.06 (c1)
        # overlaps a1's decoded box exactly, both at lower scores: suppressed
        torch.tensor([[0.8, 0.06]]),
    ]
    deltas = [torch.tensor([[0.0] * 4, [0.1, 0.0, 0.0, 0.0], [0.0] * 4]), torch.zeros(1, 4)]
    # a1 with dx = 0.1 moves by 0.1 * width = 1 px: [1, 0, 11, 10]
    result = model.inference_single_image(anchors, scores, deltas, (64, 64))
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.7]))
    assert result.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(
        result.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    )
    model.max_detections_per_image = 1
    assert model.inference_single_image(anchors, scores, deltas, (64, 64)).scores.tolist() == [
        pytest.approx(0.9)
    ]


def test_inference_with_nothing_above_threshold_is_empty():
    model = _tiny_retinanet(num_classes=2)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))]
    result = model.inference_single_image(
        anchors, [torch.tensor([[0.05, 0.01]])], [torch.zeros(1, 4)], (8, 8)
    )
    assert len(result) == 0
    assert result.pred_boxes.tensor.shape == (0, 4)


def test_eval_forward_rescales_to_requested_size():
    torch.manual_seed(0)
    model = _tiny_retinanet(num_classes=2, test_score_thresh=0.0).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 16, 16) * 255, "height": 32, "width": 48}])
    inst = out[0]["instances"]
    assert inst.image_size == (32, 48)
    # 2 x 2 locations x 2 classes, no overlap suppression across classes: at most 8
    assert 0 < len(inst) <= 8
    assert (inst.pred_boxes.tensor[:, 2] <= 48).all() and (inst.pred_boxes.tensor[:, 3] <= 32).all()


def test_training_without_instances_names_the_missing_key():
    model = _tiny_retinanet().train()
    with pytest.raises(KeyError, match="instances"):
        model([{"image": torch.zeros(3, 16, 16)}])


# ------------------------------------------------------------------- training


def test_retinanet_from_config_reads_retinanet_keys():
    cfg = small_retinanet_cfg()
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.3
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "diou"
    model = build_model(cfg)
    assert isinstance(model, RetinaNet)
    assert model.test_score_thresh == 0.3 and model.box_reg_loss_type == "diou"
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.head.cls_score.out_channels == 9 * 2  # 9 anchors x 2 classes


def test_retinanet_trains_on_empty_ground_truth():
    torch.manual_seed(0)
    model = build_model(small_retinanet_cfg()).train()
    batch = synthetic_batch(size=64)
    for x in batch:
        x["instances"] = x["instances"][torch.zeros(len(x["instances"]), dtype=torch.bool)]
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_retinanet_overfits_two_images():
    torch.manual_seed(0)
    model = build_model(small_retinanet_cfg()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = synthetic_batch()
    totals = []
    with EventStorage() as storage:
        for step in range(30):
            storage.iter = step
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    end = sum(totals[-5:]) / 5
    print(f"retinanet: total loss {totals[0]:.3f} -> {end:.3f} ({end / totals[0]:.1%})")
    assert end < 0.5 * totals[0], totals
    _assert_detects_every_object(model, batch)


def _assert_detects_every_object(model, batch):
    """Each object has a detection of its class with IoU > 0.5 and score > 0.5."""
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for inputs, outputs_i in zip(batch, outputs):
        gt, pred = inputs["instances"], outputs_i["instances"]
        iou = pairwise_iou(gt.gt_boxes, pred.pred_boxes)  # (G, D)
        for g in range(len(gt)):
            hit = (iou[g] > 0.5) & (pred.pred_classes == gt.gt_classes[g]) & (pred.scores > 0.5)
            assert hit.any(), f"object {g} ({gt.gt_boxes.tensor[g].tolist()}) not detected: {pred}"
