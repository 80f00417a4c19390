import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.config import get_cfg
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.anchor_generator import RotatedAnchorGenerator
from heron.modeling.box_regression import Box2BoxTransform, Box2BoxTransformRotated
from heron.modeling.matcher import Matcher
from heron.modeling.proposal_generator.build import build_proposal_generator
from heron.modeling.proposal_generator.rrpn import RRPN, find_top_rrpn_proposals
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import RotatedBoxes


def _level(boxes, scores):
    return torch.tensor([boxes], dtype=torch.float32), torch.tensor([scores])


def test_find_top_rrpn_proposals_topk_clip_small_and_per_level_nms():
    # image (h, w) = (100, 200)
    level0, logits0 = _level(
        [
            [50, 50, 40, 20, 0.5],  # 0.9 kept; |angle| <= 1 so clipped, but inside already
            [190, 50, 40, 20, 0.0],  # 0.8 horizontal, x in [170, 210] -> [170, 200]
            [52, 50, 40, 20, 0.5],  # 0.7 IoU 38/42 = 0.90 with the first: suppressed
            [10, 10, 2, 30, 45.0],  # 0.6 side 2 is not > min_box_size 2: dropped
            [195, 95, 30, 10, 390.0],  # 0.5 tilted (390 -> 30): left unclipped
            [100, 50, 10, 10, 0.0],  # 0.1 sixth best of the level: cut by pre_nms_topk 5
        ],
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
    )
    # The same box as the 0.9 one on another level survives: NMS runs per level.
    level1, logits1 = _level([[51, 50, 40, 20, 0.5]], [0.85])
    (result,) = find_top_rrpn_proposals(
        [level0, level1], [logits0, logits1], [(100, 200)], 0.7, 5, 10, 2.0, False
    )
    expected = torch.tensor(
        [
            [50, 50, 40, 20, 0.5],
            [51, 50, 40, 20, 0.5],
            [185, 50, 30, 20, 0.0],  # centre (170 + 200) / 2, width 30
            [195, 95, 30, 10, 30.0],
        ]
    )
    assert isinstance(result.proposal_boxes, RotatedBoxes)
    torch.testing.assert_close(result.proposal_boxes.tensor, expected)
    torch.testing.assert_close(result.objectness_logits, torch.tensor([0.9, 0.85, 0.8, 0.5]))
    assert result.image_size == (100, 200)

    (top3,) = find_top_rrpn_proposals(
        [level0, level1], [logits0, logits1], [(100, 200)], 0.7, 5, 3, 2.0, False
    )
    torch.testing.assert_close(top3.proposal_boxes.tensor, expected[:3])


def test_find_top_rrpn_proposals_drops_non_finite_in_inference_and_raises_in_training():
    boxes, logits = _level(
        [[20, 20, 10, 10, 0], [60, 60, 10, 10, 20], [90, 20, 10, 10, 0]],
        [0.5, float("nan"), 0.2],
    )
    boxes[0, 2, 0] = float("inf")
    (result,) = find_top_rrpn_proposals([boxes], [logits], [(100, 100)], 0.7, 10, 10, 0.0, False)
    torch.testing.assert_close(result.proposal_boxes.tensor, torch.tensor([[20.0, 20, 10, 10, 0]]))
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_rrpn_proposals([boxes], [logits], [(100, 100)], 0.7, 10, 10, 0.0, True)


def test_find_top_rrpn_proposals_drops_a_nan_box_in_inference():
    # RotatedBoxes refuses NaN, so the filter must run before the boxes are wrapped
    boxes, logits = _level([[20, 20, 10, 10, 0], [60, 60, 10, 10, 20]], [0.5, 0.9])
    boxes[0, 1, 2] = float("nan")
    (result,) = find_top_rrpn_proposals([boxes], [logits], [(100, 100)], 0.7, 10, 10, 0.0, False)
    torch.testing.assert_close(result.proposal_boxes.tensor, torch.tensor([[20.0, 20, 10, 10, 0]]))


def test_find_top_rrpn_proposals_without_survivors_keeps_five_columns():
    boxes, logits = _level([[20, 20, 1, 1, 0]], [0.5])
    (result,) = find_top_rrpn_proposals([boxes], [logits], [(50, 50)], 0.7, 10, 10, 2.0, False)
    assert result.proposal_boxes.tensor.shape == (0, 5)
    assert result.objectness_logits.shape == (0,)


def test_find_top_rrpn_proposals_rejects_axis_aligned_boxes():
    with pytest.raises(ValueError, match=r"proposals\[0\] must be \(N, Hi\*Wi\*A, 5\)"):
        find_top_rrpn_proposals(
            [torch.zeros(1, 3, 4)], [torch.zeros(1, 3)], [(9, 9)], 0.7, 10, 10, 0.0, False
        )


class _FixedHead(nn.Module):
    """An RPN head returning fixed maps (and a parameter, so losses have a graph)."""

    def __init__(self, logits: torch.Tensor, deltas: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.deltas = nn.Parameter(deltas)

    def forward(self, features):
        return [self.logits], [self.deltas]


def _hand_rrpn(**kwargs):
    # One 1x2 feature map of stride 16, one 8x8 anchor at angle 0 per location: anchors
    # centred at (0.5 * 16, 8) = (8, 8) and (1.5 * 16, 8) = (24, 8).
    logits = torch.tensor([2.0, 1.0]).view(1, 1, 1, 2)  # (N, A, H, W)
    # Anchor 0: dx 0.5 -> cx 8 + 0.5 * 8 = 12; dw log 2 -> w 16; da pi/6 -> 30 degrees.
    # Anchor 1: zero deltas -> the anchor itself.
    deltas = torch.tensor(
        [[0.5, 0.0], [0.0, 0.0], [math.log(2), 0.0], [0.0, 0.0], [math.pi / 6, 0]]
    )
    args = dict(
        in_features=["p"],
        head=_FixedHead(logits, deltas.view(1, 5, 1, 2)),
        anchor_generator=RotatedAnchorGenerator(
            sizes=[[8]], aspect_ratios=[[1.0]], strides=[16], angles=[[0]]
        ),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransformRotated(weights=(1.0, 1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(10, 10),
        post_nms_topk=(10, 10),
    )
    args.update(kwargs)
    return RRPN(**args)


def test_rrpn_decodes_known_deltas_into_clipped_sorted_proposals():
    rrpn = _hand_rrpn().eval()
    images = ImageList(torch.zeros(1, 3, 32, 26), [(32, 26)])
    features = {"p": torch.zeros(1, 4, 1, 2)}
    (proposals,), losses = rrpn(images, features)
    assert losses == {}
    # Proposal 0 = (12, 8, 16, 8, 30): tilted, left unclipped. Proposal 1 = the anchor
    # (24, 8, 8, 8, 0): horizontal, x in [20, 28] clipped to [20, 26] -> cx 23, w 6.
    expected = torch.tensor([[12.0, 8, 16, 8, 30], [23, 8, 6, 8, 0]])
    torch.testing.assert_close(proposals.proposal_boxes.tensor, expected)
    torch.testing.assert_close(proposals.objectness_logits, torch.tensor([2.0, 1.0]))


def test_rrpn_losses_on_a_hand_labelled_pair_of_anchors():
    rrpn = _hand_rrpn().train()
    images = ImageList(torch.zeros(1, 3, 32, 40), [(32, 40)])
    # gt (24, 8, 16, 8, 30) reaches x in about [15, 33]: anchor 0 (x in [4, 12]) has IoU 0,
    # a negative; anchor 1 has IoU < 64 / 128 = 0.5, below 0.7, but it is the gt's best
    # anchor, so the low-quality rule makes it the one positive.
    gt = Instances((32, 40), gt_boxes=RotatedBoxes(torch.tensor([[24.0, 8, 16, 8, 30]])))
    _, losses = rrpn(images, {"p": torch.zeros(1, 4, 1, 2)}, [gt])
    # Both anchors sampled (1 positive, 1 negative); sums are divided by 256 * 1 images.
    # cls: BCE(2, 0) + BCE(1, 1) = softplus(2) + softplus(-1)
    expected_cls = (F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0))) / 256
    # loc: anchor 1 predicts zero deltas; its targets are (0, 0, log(16/8), 0, pi/6); L1.
    expected_loc = torch.tensor(math.log(2) + math.pi / 6) / 256
    torch.testing.assert_close(losses["loss_rpn_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_rpn_loc"], expected_loc)
    sum(losses.values()).backward()  # the losses reach the head


def test_rrpn_without_ground_truth_labels_every_anchor_negative():
    rrpn = _hand_rrpn().train()
    images = ImageList(torch.zeros(1, 3, 32, 40), [(32, 40)])
    gt = Instances((32, 40), gt_boxes=RotatedBoxes(torch.zeros(0, 5)))
    _, losses = rrpn(images, {"p": torch.zeros(1, 4, 1, 2)}, [gt])
    expected_cls = (F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(1.0))) / 256
    torch.testing.assert_close(losses["loss_rpn_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_rpn_loc"], torch.tensor(0.0))


def test_rrpn_rejects_boundary_threshold_and_axis_aligned_coding():
    with pytest.raises(ValueError, match="BOUNDARY_THRESH"):
        _hand_rrpn(anchor_boundary_thresh=0.0)
    with pytest.raises(TypeError, match="Box2BoxTransformRotated"):
        _hand_rrpn(box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)))


def _rrpn_cfg():
    cfg = get_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RRPN"
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RotatedAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.ANGLES = [[-45, 0, 45]]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0)
    return cfg


def test_rrpn_from_config_builds_rotated_parts():
    rrpn = build_proposal_generator(_rrpn_cfg(), {"res4": ShapeSpec(channels=8, stride=16)})
    assert isinstance(rrpn, RRPN)
    assert isinstance(rrpn.box2box_transform, Box2BoxTransformRotated)
    assert rrpn.box2box_transform.weights == (1.0, 1.0, 1.0, 1.0, 1.0)
    # 2 ratios x 3 angles = 6 anchors per location, 5 deltas each
    assert rrpn.rpn_head.anchor_deltas.out_channels == 30
    assert rrpn.rpn_head.objectness_logits.out_channels == 6


def test_rrpn_from_config_names_the_weights_key():
    cfg = _rrpn_cfg()
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(
        ValueError, match=r"MODEL.RPN.BBOX_REG_WEIGHTS .*got \(1.0, 1.0, 1.0, 1.0\)"
    ):
        build_proposal_generator(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
