import math

import torch

from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    fast_rcnn_inference_single_image,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances


def test_inference_thresholds_nms_per_class_and_top_k():
    boxes = torch.tensor([[0.0, 0, 10, 10] * 2, [1.0, 0, 11, 10] * 2, [20.0, 20, 30, 30] * 2])
    scores = torch.tensor([[0.8, 0.1, 0.1], [0.7, 0.25, 0.05], [0.02, 0.9, 0.08]])  # last: bg
    result, kept = fast_rcnn_inference_single_image(boxes, scores, (25, 25), 0.05, 0.5, 10)
    # class 0: regions 0 (0.8) and 1 (0.7) overlap (IoU 0.82): 1 suppressed; region 2 (0.02)
    # is under the threshold. class 1: regions 2 (0.9), 1 (0.25), 0 (0.1): 0 suppressed by 1.
    assert result.scores.tolist() == [0.8999999761581421, 0.800000011920929, 0.25]
    assert result.pred_classes.tolist() == [1, 0, 1]
    assert kept.tolist() == [2, 0, 1]
    # region 2's box is clipped to the (25, 25) image
    torch.testing.assert_close(result.pred_boxes.tensor[0], torch.tensor([20.0, 20, 25, 25]))
    top1, _ = fast_rcnn_inference_single_image(boxes, scores, (25, 25), 0.05, 0.5, 1)
    assert len(top1) == 1


def _zero_layers(num_classes=3, **kwargs):
    layers = FastRCNNOutputLayers(
        8,
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        num_classes=num_classes,
        **kwargs,
    )
    for p in layers.parameters():
        torch.nn.init.zeros_(p)
    return layers


def _proposals():
    p = Instances((32, 32))
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]))
    p.gt_classes = torch.tensor([1, 3])  # one foreground region, one background (K = 3)
    p.gt_boxes = Boxes(torch.tensor([[2.0, 0, 12, 10], [0.0, 0, 1, 1]]))
    return [p]


def test_losses_of_an_untrained_head_have_closed_forms():
    layers = _zero_layers()
    preds = layers(torch.zeros(2, 8))
    losses = layers.losses(preds, _proposals())
    # uniform softmax over K + 1 = 4 classes: CE = log 4; box: the foreground region's
    # deltas (0.2, 0, 0, 0) against zero predictions, L1 sum 0.2, over 2 regions
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(math.log(4)))
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.1))


def test_sigmoid_cross_entropy_is_k_times_log_two_for_zero_logits():
    layers = _zero_layers(use_sigmoid_ce=True)
    losses = layers.losses(layers(torch.zeros(2, 8)), _proposals())
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(3 * math.log(2)))


def test_predict_probs_and_boxes_split_per_image():
    layers = _zero_layers()
    props = _proposals() + _proposals()[:1]
    preds = layers(torch.zeros(4, 8))
    probs = layers.predict_probs(preds, props)
    assert [p.shape for p in probs] == [(2, 4), (2, 4)]
    torch.testing.assert_close(probs[0], torch.full((2, 4), 0.25))
    boxes = layers.predict_boxes(preds, props)
    torch.testing.assert_close(boxes[1][:, :4], props[1].proposal_boxes.tensor)


def test_giou_box_loss_of_a_shifted_box():
    layers = _zero_layers(box_reg_loss_type="giou")
    losses = layers.losses(layers(torch.zeros(2, 8)), _proposals())
    # zero deltas decode to the proposal (0,0,10,10); gt (2,0,12,10): IoU = 80/120, and the
    # enclosing box (0,0,12,10) equals the union, so GIoU = 2/3 and the loss 1/3, over 2 regions
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(1 / 6))


def test_federated_loss_covers_present_classes_and_sampled_negatives():
    torch.manual_seed(0)
    layers = _zero_layers(
        num_classes=5,
        use_sigmoid_ce=True,
        use_fed_loss=True,
        fed_loss_num_classes=3,
        get_fed_loss_cls_weights=lambda: torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0]),
    )
    assert "fed_loss_cls_weights" in dict(layers.named_buffers())
    props = _proposals()
    props[0].gt_classes = torch.tensor([1, 5])  # class 1 and background (K = 5)
    losses = layers.losses(layers(torch.zeros(2, 8)), props)
    # The 3 slots hold the labels present, background included (as in Detectron2), plus one
    # sampled negative; background is no sigmoid column, so class 1 and the negative count:
    # each adds BCE(0, target) = log 2 per region, averaged over regions -> 2 log 2
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2 * math.log(2)))


def test_federated_loss_needs_sigmoid_and_weights():
    import pytest

    with pytest.raises(ValueError, match="use_sigmoid_ce"):
        _zero_layers(use_fed_loss=True)
