"""Every R-CNN variant trains: 60 steps on two synthetic images cut the total loss and
make the model detect the objects it was shown.

The measured drops (first step's total loss vs the mean of the last five) are printed
with -s; thresholds here are the pass criteria, not recorded numbers. The loss is a weak
signal for cascades (their box losses start near zero, because almost no proposal is
foreground yet, and grow as proposals improve), so each test also checks detections.
"""

from __future__ import annotations

import pytest
import torch

from heron.modeling import build_model
from heron.structures import Boxes, Instances, pairwise_iou
from heron.utils.events import EventStorage
from tests.modeling.rcnn_fixtures import small_rcnn_cfg, synthetic_batch

VARIANTS = {
    "faster": {},
    "mask": {"mask": True},
    "keypoint": {"keypoint": True},
    "cascade": {"cascade": True, "mask": True},
}
EXPECTED_LOSSES = {
    "faster": {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"},
    "mask": {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"},
    "keypoint": {"loss_cls", "loss_box_reg", "loss_keypoint", "loss_rpn_cls", "loss_rpn_loc"},
    "cascade": {
        *(f"{k}_stage{s}" for k in ("loss_cls", "loss_box_reg") for s in range(3)),
        "loss_mask",
        "loss_rpn_cls",
        "loss_rpn_loc",
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rcnn_overfits_two_images(variant):
    torch.manual_seed(0)
    model = build_model(small_rcnn_cfg(**VARIANTS[variant])).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = synthetic_batch()
    totals = []
    with EventStorage() as storage:
        for step in range(60):
            storage.iter = step
            losses = model(batch)
            assert set(losses) == EXPECTED_LOSSES[variant]
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    end = sum(totals[-5:]) / 5
    print(f"{variant}: total loss {totals[0]:.3f} -> {end:.3f} ({end / totals[0]:.1%})")
    assert end < 0.6 * totals[0], totals
    _assert_detects_every_object(model, batch)


def _assert_detects_every_object(model, batch):
    """Each ground-truth object has a detection of its class with IoU > 0.5, score > 0.5."""
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for inputs, outputs_i in zip(batch, outputs):
        gt, pred = inputs["instances"], outputs_i["instances"]
        iou = pairwise_iou(gt.gt_boxes, pred.pred_boxes)  # (G, D)
        for g in range(len(gt)):
            hit = (iou[g] > 0.5) & (pred.pred_classes == gt.gt_classes[g]) & (pred.scores > 0.5)
            assert hit.any(), f"object {g} ({gt.gt_boxes.tensor[g].tolist()}) not detected: {pred}"


def test_trained_model_predicts_in_eval_mode():
    torch.manual_seed(0)
    model = build_model(small_rcnn_cfg(mask=True, keypoint=True)).eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in synthetic_batch()]
    batch[1]["height"], batch[1]["width"] = 256, 200
    with torch.no_grad():
        outputs = model(batch)
    inst = outputs[1]["instances"]
    assert inst.image_size == (256, 200)
    assert inst.pred_masks.shape[1:] == (256, 200) and inst.pred_masks.dtype == torch.bool
    assert inst.pred_keypoints.shape[1:] == (4, 3)
    assert (inst.pred_boxes.tensor[:, 2] <= 200).all() and (
        inst.pred_boxes.tensor[:, 3] <= 256
    ).all()


def test_bad_image_tensor_names_the_expected_format():
    model = build_model(small_rcnn_cfg()).eval()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        model([{"image": torch.zeros(4, 32, 32)}])
    with pytest.raises(ValueError, match="uint8 or floating point"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.int32)}])


def test_c4_mask_rcnn_takes_training_steps():
    """Res5ROIHeads: the mask head trains on the shared res5 features of foreground regions."""
    cfg = small_rcnn_cfg(mask=True)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage():
        for _ in range(2):
            losses = model(synthetic_batch())
            assert set(losses) == EXPECTED_LOSSES["mask"]
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0


def test_train_on_pred_boxes_and_given_boxes_inference():
    cfg = small_rcnn_cfg(mask=True)
    cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = True
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(synthetic_batch())
    assert set(losses) == EXPECTED_LOSSES["mask"]
    model.eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in synthetic_batch()]
    given = [
        Instances(
            (128, 128),
            pred_boxes=Boxes(torch.tensor([[10.0, 12, 60, 50]])),
            pred_classes=torch.tensor([0]),
        )
    ] * 2
    with torch.no_grad():
        out = model.inference(batch, detected_instances=given)
    # only masks are predicted for the given boxes, which stay as given
    assert out[0]["instances"].pred_masks.shape == (1, 128, 128)
    torch.testing.assert_close(
        out[0]["instances"].pred_boxes.tensor, torch.tensor([[10.0, 12, 60, 50]])
    )
