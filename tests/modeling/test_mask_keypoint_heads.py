import math

import torch

from heron.layers.shape_spec import ShapeSpec
from heron.modeling.roi_heads.keypoint_head import (
    KRCNNConvDeconvUpsampleHead,
    keypoint_rcnn_loss,
)
from heron.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from heron.modeling.roi_heads.roi_heads import (
    select_foreground_proposals,
    select_proposals_with_visible_keypoints,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.structures.keypoints import Keypoints
from heron.structures.masks import BitMasks


def _regions(n=2, size=32):
    inst = Instances((size, size))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 16, 16]] * n))
    inst.gt_classes = torch.tensor([0, 1][:n])
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, :8, :] = True  # top half of each box
    inst.gt_masks = BitMasks(masks)
    return inst


def test_mask_loss_of_zero_logits_is_log_two():
    logits = torch.zeros(2, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_loss(logits, [_regions()])
    torch.testing.assert_close(loss, torch.tensor(math.log(2)))
    loss.backward()
    # only each region's gt-class channel gets a gradient
    assert logits.grad[0, 0].abs().sum() > 0 and logits.grad[0, 1].abs().sum() == 0
    assert logits.grad[1, 1].abs().sum() > 0


def test_mask_loss_without_regions_is_a_zero_with_a_graph():
    logits = torch.zeros(0, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_loss(logits, [_regions(0)])
    assert loss.item() == 0.0 and loss.requires_grad


def test_mask_inference_picks_the_predicted_class_channel():
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2] = 10.0
    logits[1, 0] = -10.0
    inst = Instances((8, 8), pred_classes=torch.tensor([2, 0]))
    mask_rcnn_inference(logits, [inst])
    assert inst.pred_masks.shape == (2, 1, 4, 4)
    torch.testing.assert_close(
        inst.pred_masks[0, 0], torch.full((4, 4), torch.sigmoid(torch.tensor(10.0)).item())
    )
    torch.testing.assert_close(
        inst.pred_masks[1, 0], torch.full((4, 4), torch.sigmoid(torch.tensor(-10.0)).item())
    )


def test_mask_head_doubles_resolution_and_names_layers_like_detectron2():
    head = MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=8, height=14, width=14), num_classes=3, conv_dims=[8, 8, 4]
    )
    assert [n for n, _ in head.named_children()] == [
        "mask_fcn1",
        "mask_fcn2",
        "deconv",
        "deconv_relu",
        "predictor",
    ]
    assert head.layers(torch.zeros(5, 8, 14, 14)).shape == (5, 3, 28, 28)


def test_keypoint_loss_of_zero_logits_is_log_of_the_cell_count():
    inst = _regions(1)
    inst.gt_keypoints = Keypoints(torch.tensor([[[4.0, 4.0, 2.0], [8.0, 8.0, 0.0]]]))
    logits = torch.zeros(1, 2, 6, 6)
    # one visible keypoint, uniform over 36 cells: CE = log 36, normalized by 1 visible
    torch.testing.assert_close(
        keypoint_rcnn_loss(logits, [inst], normalizer=None), torch.tensor(math.log(36))
    )


def test_keypoint_head_output_is_four_times_the_pooled_size():
    head = KRCNNConvDeconvUpsampleHead(
        ShapeSpec(channels=4, height=14, width=14),
        num_keypoints=3,
        conv_dims=[4, 4],
        loss_normalizer="visible",
    )
    assert head.layers(torch.zeros(2, 4, 14, 14)).shape == (2, 3, 56, 56)


def test_foreground_selection_and_visible_keypoints():
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(
        torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    )
    inst.gt_classes = torch.tensor([1, 3, 0])  # 3 = background for K = 3
    inst.gt_keypoints = Keypoints(torch.tensor([[[5.0, 5, 2]], [[5.0, 5, 2]], [[5.0, 5, 2]]]))
    (fg,), (mask,) = select_foreground_proposals([inst], bg_label=3)
    assert mask.tolist() == [True, False, True] and len(fg) == 2
    (with_kp,) = select_proposals_with_visible_keypoints([fg])
    # the keypoint (5, 5) lies inside the first box only
    assert len(with_kp) == 1
