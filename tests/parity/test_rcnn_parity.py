"""Parity of the R-CNN family with Detectron2 on the parity kit (../shared/parity).

Each case builds the model from its zoo config, loads the kit's generated weights with
DetectionCheckpointer, runs both images and compares every stored output at the kit's
tolerances (boxes 1e-3 px, or 1e-2 px for the deeper C4/DC5/X101/cascade models).
"""

from __future__ import annotations

import pytest
import torch

from tests.parity import compare
from tests.parity.kit import IMAGES, build_cfg, golden, run_case

RCNN_CASES = {
    # case: box tolerance in pixels
    "faster_R50_FPN": 1e-3,
    "faster_R50_C4": 1e-2,
    "faster_R50_DC5": 1e-2,
    "mask_R50_FPN": 1e-3,
    "mask_R50_C4": 1e-2,
    "mask_X101_FPN": 1e-2,
    "keypoint_R50_FPN": 1e-3,
    "cascade_mask_R50_FPN": 1e-2,
    "mask_R50_FPN_dconv": 1e-3,
    # GroupNorm everywhere: the kit's 1e-2 allowance. Measured max difference 1.4e-3 px
    # with one intra-op thread (as under xdist) and within 1e-3 with two: summation order.
    "mask_R50_FPN_gn": 1e-2,
    "lvis_mask_R50_FPN": 1e-3,
}


def _model(case: str):
    from heron.checkpoint import DetectionCheckpointer
    from heron.modeling import build_model

    cfg = build_cfg(case)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model


@pytest.mark.parity
@pytest.mark.parametrize("case", sorted(RCNN_CASES))
def test_rcnn_case_matches_detectron2(case):
    cfg, model = _model(case)
    raw = []
    model.roi_heads.register_forward_hook(lambda m, i, o: raw.extend(o[0]))
    for image in IMAGES:
        gold = golden(case, image)
        raw.clear()
        run = run_case(model, cfg, gold)
        compare.check_input(run, gold)
        compare.check_features(run, gold)
        compare.check_rpn(run, gold)
        order = compare.check_instances(run, gold, RCNN_CASES[case])
        if "pred_masks_packed" in gold:
            mask_probs = torch.cat([r.pred_masks for r in raw])
            compare.check_masks(run, gold, order, mask_probs)
        if "pred_keypoints" in gold:
            heatmaps = torch.cat([r.pred_keypoint_heatmaps for r in raw])
            compare.check_keypoints(run, gold, order, heatmaps)


@pytest.mark.parity
def test_proposal_network_matches_detectron2():
    cfg, model = _model("rpn_R50_FPN")
    for image in IMAGES:
        gold = golden("rpn_R50_FPN", image)
        run = run_case(model, cfg, gold)
        compare.check_input(run, gold)
        compare.check_features(run, gold)
        compare.check_rpn(run, gold)
        proposals = run.outputs["proposals"]
        compare.check_proposals(
            proposals.objectness_logits.numpy(),
            proposals.proposal_boxes.tensor.numpy(),
            gold["objectness_logits"],
            gold["proposal_boxes"],
        )
