import torch

from heron.modeling.anchor_generator import DefaultAnchorGenerator
from heron.modeling.box_regression import Box2BoxTransform
from heron.modeling.matcher import Matcher
from heron.modeling.proposal_generator.rpn import RPN, StandardRPNHead
from heron.structures.boxes import Boxes
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances


def _rpn(**kwargs):
    torch.manual_seed(0)
    return RPN(
        in_features=["p3"],
        head=StandardRPNHead(in_channels=4, num_anchors=1),
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[8]], aspect_ratios=[[1.0]], strides=[8], offset=0.5
        ),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=16,
        positive_fraction=0.5,
        pre_nms_topk=(100, 50),
        post_nms_topk=(20, 10),
        **kwargs,
    )


def _gt():
    # anchors are 8x8 squares centred at (4 + 8i, 4 + 8j) on a 4x4 grid (32x32 image)
    return [Instances((32, 32), gt_boxes=Boxes(torch.tensor([[8.0, 8.0, 16.0, 16.0]])))]


def test_anchor_labels_mark_the_matching_anchor_positive():
    rpn = _rpn()
    anchors = rpn.anchor_generator([torch.zeros(1, 4, 4, 4)])
    labels, matched = rpn.label_and_sample_anchors(anchors, _gt())
    # the anchor at grid (1, 1) is exactly the gt box; every other anchor has IoU < 0.3
    assert labels[0].tolist().count(1) == 1 and labels[0][5] == 1
    assert labels[0].tolist().count(0) == 15
    torch.testing.assert_close(matched[0][5], torch.tensor([8.0, 8.0, 16.0, 16.0]))


def test_training_forward_gives_both_losses_for_smooth_l1_and_giou():
    features = {"p3": torch.randn(1, 4, 4, 4)}
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    for loss_type in ("smooth_l1", "giou"):
        rpn = _rpn(box_reg_loss_type=loss_type).train()
        proposals, losses = rpn(images, features, _gt())
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert rpn.rpn_head.anchor_deltas.weight.grad.abs().sum() > 0
        assert len(proposals[0]) <= 20


def test_inference_uses_the_test_top_k():
    rpn = _rpn().eval()
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    proposals, losses = rpn(images, {"p3": torch.randn(1, 4, 4, 4)})
    assert losses == {} and len(proposals[0]) <= 10
