"""The deployment path end to end: a Mask R-CNN exported by heron.export to ONNX, run by
heron.deploy.OnnxPredictor on an image file of another size, gives what DefaultPredictor
gives in PyTorch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from heron.data.transforms import ResizeShortestEdge
from heron.deploy import OnnxPredictor
from heron.engine import DefaultPredictor
from heron.export import export_onnx
from heron.modeling import build_model
from tests.modeling.rcnn_fixtures import small_rcnn_cfg, synthetic_batch


def test_onnx_deploy_predictor_matches_default_predictor(tmp_path):
    cfg = small_rcnn_cfg(mask=True)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)

    # trace on one size, predict on a file of another (120x90 -> resized to 96x128)
    path = export_onnx(model, synthetic_batch()[0]["image"], str(tmp_path / "m.onnx"), cfg=cfg)
    image = synthetic_batch(size=128)[1]["image"].permute(1, 2, 0).numpy()[:90, :120]
    rgb = np.ascontiguousarray(image[:, :, ::-1]).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "input.png")
    assert ResizeShortestEdge(96, 160).get_transform(rgb).new_h == 96

    out = OnnxPredictor(path)(str(tmp_path / "input.png"))
    expected = DefaultPredictor(cfg)(rgb[:, :, ::-1].copy())["instances"]
    assert len(expected) == len(out["boxes"]) > 0
    np.testing.assert_allclose(out["boxes"], expected.pred_boxes.tensor.numpy(), atol=1e-3)
    np.testing.assert_allclose(out["scores"], expected.scores.numpy(), atol=1e-4)
    np.testing.assert_array_equal(out["classes"], expected.pred_classes.numpy())
    assert out["masks"].shape == (len(expected), 90, 120)
    # masks: at most 0.1% of pixels may differ (threshold-boundary pixels)
    assert (out["masks"] != expected.pred_masks.numpy()).mean() <= 1e-3
