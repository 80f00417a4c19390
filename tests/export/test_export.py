"""Exported models (ONNX in onnxruntime, torch.export, traced TorchScript) against eager mode.

Every model is exported with a 100 x 120 sample and run on an 80 x 72 image, so a size baked
into the graph would show up as a shape or value mismatch. Weights are seeded and random,
with score thresholds of 0 so that there are detections.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from heron.export.api import (
    ExportError,
    export_model_outputs,
    export_onnx,
    export_torch_export,
    export_torchscript,
    run_exported,
)
from heron.modeling import build_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "modeling"))
from rcnn_fixtures import small_rcnn_cfg

# Tolerances of the export check: boxes in pixels, scores and mask probabilities absolute.
BOX_ATOL, SCORE_ATOL, PROB_ATOL = 1e-3, 1e-4, 1e-3


def _c4_cfg(mask: bool):
    # Detectron2's Res5ROIHeads has no keypoint head, and its zoo no cascade C4 model
    cfg = small_rcnn_cfg(mask=mask)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32, 64]]
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
    return cfg


def _dense_cfg(arch: str):
    cfg = small_rcnn_cfg()
    m = cfg.MODEL
    m.META_ARCHITECTURE = arch
    m.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    m.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    if arch == "FCOS":
        from heron.modeling.meta_arch.fcos import add_fcos_config

        cfg = add_fcos_config(cfg)
        cfg.MODEL.FCOS.NUM_CLASSES = 2
        cfg.MODEL.FCOS.NUM_CONVS = 2
        cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.0
    else:
        m.RETINANET.NUM_CLASSES = 2
        m.RETINANET.NUM_CONVS = 2
        m.RETINANET.SCORE_THRESH_TEST = 0.0
        m.ANCHOR_GENERATOR.SIZES = [[s, s * 2 ** (1 / 3)] for s in (32, 64, 128, 256, 512)]
    return cfg


def _seg_cfg(arch: str):
    cfg = small_rcnn_cfg(mask=arch == "PanopticFPN")
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    return cfg


CONFIGS = {
    "faster_fpn": lambda: small_rcnn_cfg(),
    "mask_fpn": lambda: small_rcnn_cfg(mask=True),
    "keypoint_fpn": lambda: small_rcnn_cfg(keypoint=True),
    "cascade_mask_fpn": lambda: small_rcnn_cfg(mask=True, cascade=True),
    "faster_c4": lambda: _c4_cfg(mask=False),
    "mask_c4": lambda: _c4_cfg(mask=True),
    "retinanet": lambda: _dense_cfg("RetinaNet"),
    "fcos": lambda: _dense_cfg("FCOS"),
    "semantic_fpn": lambda: _seg_cfg("SemanticSegmentor"),
    "panoptic_fpn": lambda: _seg_cfg("PanopticFPN"),
}


def build_small_model(name: str):
    """(model in eval mode, cfg) of CONFIGS[name], seeded, every detection kept."""
    cfg = CONFIGS[name]()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.KEYPOINT_ON:
        # Seeded random weights give heatmap logits of +-600; a trained model's are O(10).
        # Keypoint scores are exp(logit - max), so their error grows with the logits:
        # scale the last layer to a trained model's range.
        with torch.no_grad():
            model.roi_heads.keypoint_head.score_lowres.weight.mul_(0.02)
    return model, cfg


def sample_images(name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The export sample (3, 100, 120) and a test image of another size (3, 80, 72), 0..255.

    torch.export specializes what is special in the sample: its P6 (stride 64) is 2 x 2,
    not 1 x 1, and neither side is a multiple of 32 (both need padding), as in the test
    image.
    FCOS gets (3, 160, 200) and (3, 144, 176): its GroupNorm head needs more than one
    value per group on P7 (stride 128), in eager mode too, and torch.export would
    specialize a 1 x 1 P7.
    """
    g = torch.Generator().manual_seed(1)
    sizes = [(160, 200), (144, 176)] if name == "fcos" else [(100, 120), (80, 72)]
    return tuple(torch.rand(3, h, w, generator=g) * 255 for h, w in sizes)


def _match_detections(expected: dict, actual: dict) -> dict:
    """`actual` with its detections reordered to pair with `expected`'s.

    Detections of equal score (to float precision) may come out of the two runtimes' sorts
    in either order, so detections are paired first: same class, scores within
    SCORE_ATOL, then the assignment of least total box difference.
    """
    from scipy.optimize import linear_sum_assignment

    if "boxes" not in expected:
        return actual
    want_boxes, got_boxes = expected["boxes"], torch.as_tensor(actual["boxes"])
    if len(want_boxes) != len(got_boxes) or len(want_boxes) == 0:
        return actual  # the shape check reports a count mismatch
    cost = torch.cdist(want_boxes.double(), got_boxes.double(), p=1)
    same_class = expected["classes"][:, None] == torch.as_tensor(actual["classes"])[None]
    score_gap = (expected["scores"][:, None] - torch.as_tensor(actual["scores"])[None]).abs()
    cost[~same_class | (score_gap > SCORE_ATOL)] = 1e12
    rows, cols = linear_sum_assignment(cost.numpy())
    order = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
    n = len(want_boxes)
    return {
        k: (torch.as_tensor(v)[order] if k != "sem_seg" and len(v) == n else v)
        for k, v in actual.items()
    }


def assert_outputs_match(expected: dict, actual: dict, box_atol: float | None = None) -> None:
    """Exported outputs equal eager ones within the export tolerances, name by name, after
    pairing detections (`_match_detections`); the counts must be equal."""
    assert list(actual) == list(expected)
    actual = _match_detections(expected, actual)
    for name, want in expected.items():
        got = torch.as_tensor(actual[name])
        assert got.shape == want.shape, f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
        if name == "classes" or not want.is_floating_point():
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
            continue
        box = BOX_ATOL if box_atol is None else box_atol
        if name == "keypoints":  # x, y in pixels; the score column as detection scores
            torch.testing.assert_close(got[..., :2], want[..., :2], rtol=0, atol=box, msg=name)
            torch.testing.assert_close(got[..., 2], want[..., 2], rtol=0, atol=SCORE_ATOL)
            continue
        atol = {"boxes": box, "scores": SCORE_ATOL}.get(name, PROB_ATOL)
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("name", ["faster_c4", "mask_c4"])
def test_onnx_c4_rcnn_matches_eager_within_the_export_box_tolerance(name, tmp_path):
    # res5 runs per region in the C4 head and onnxruntime's RoiAlign + convolutions sum in
    # another order: measured box differences reach 3.6e-3 px, inside the 1e-2 px that the
    # export requirements allow (issue 10), though above the 1e-3 the FPN models meet.
    model, cfg = build_small_model(name)
    sample, other = sample_images()
    path = export_onnx(model, sample, str(tmp_path / "model.onnx"), cfg=cfg)
    for image in (sample, other):
        expected = _eager(model, image)
        assert len(expected["boxes"]) > 0
        assert_outputs_match(expected, run_exported(path, image), box_atol=1e-2)


def _eager(model, image, postprocess="outside"):
    with torch.no_grad():
        return export_model_outputs(model, image, postprocess)


@pytest.mark.parametrize(
    "name",
    [
        "faster_fpn",
        "mask_fpn",
        "keypoint_fpn",
        "cascade_mask_fpn",
        "retinanet",
        "fcos",
        "semantic_fpn",
        "panoptic_fpn",
    ],
)
def test_onnx_matches_eager_on_an_image_of_another_size(name, tmp_path):
    import onnx

    model, cfg = build_small_model(name)
    sample, other = sample_images(name)
    path = export_onnx(model, sample, str(tmp_path / "model.onnx"), cfg=cfg)
    for image in (sample, other):
        expected = _eager(model, image)
        assert_outputs_match(expected, run_exported(path, image))
    if "boxes" in expected:
        assert len(expected["boxes"]) > 0  # the comparison saw detections
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["heron.format"] == "heron-deploy-v1"
    assert json.loads(props["outputs"]) == list(expected)
    assert props["meta_architecture"] == type(model).__name__


def test_onnx_uses_standard_nms_and_roialign_ops(tmp_path):
    import onnx

    model, cfg = build_small_model("mask_fpn")
    path = export_onnx(model, sample_images()[0], str(tmp_path / "m.onnx"), cfg=cfg, opset=18)
    proto = onnx.load(path)
    ops = {n.op_type for n in proto.graph.node}
    for node in proto.graph.node:  # NMS sits in the branch of an If (empty input guard)
        for attr in node.attribute:
            ops |= {n.op_type for n in attr.g.node}
    assert {"NonMaxSuppression", "RoiAlign"} <= ops
    assert all(o.domain in ("", "ai.onnx") for o in proto.opset_import)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}


def test_onnx_deploy_contract_inputs_outputs_and_metadata(tmp_path):
    import onnx

    model, cfg = build_small_model("panoptic_fpn")
    path = export_onnx(model, sample_images()[0], str(tmp_path / "p.onnx"), cfg=cfg)
    proto = onnx.load(path)
    (inp,) = proto.graph.input
    assert inp.name == "image"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_value == 3 and dims[1].dim_param and dims[2].dim_param
    names = [o.name for o in proto.graph.output]
    assert names == ["boxes", "scores", "classes", "mask_probs", "sem_seg"]
    props = {p.key: p.value for p in proto.metadata_props}
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    assert props["panoptic_overlap_thresh"] == str(combine.OVERLAP_THRESH)
    assert props["panoptic_stuff_area_limit"] == str(combine.STUFF_AREA_LIMIT)
    assert props["panoptic_instances_score_thresh"] == str(combine.INSTANCES_CONFIDENCE_THRESH)
    assert props["input_format"] == cfg.INPUT.FORMAT
    assert props["min_size_test"] == str(cfg.INPUT.MIN_SIZE_TEST)
    assert props["mask_threshold"] == "0.5"
    assert json.loads(props["thing_classes"]) == [] and json.loads(props["stuff_classes"]) == []


def test_onnx_rejects_old_opsets_and_bad_postprocess(tmp_path):
    model, _ = build_small_model("faster_fpn")
    with pytest.raises(ValueError, match="opset must be >= 17, got 11"):
        export_onnx(model, sample_images()[0], str(tmp_path / "m.onnx"), opset=11)
    with pytest.raises(ValueError, match="postprocess must be 'outside' or 'inside'"):
        export_onnx(model, sample_images()[0], str(tmp_path / "m.onnx"), postprocess="both")


def test_panoptic_inside_is_refused_with_the_reason(tmp_path):
    model, _ = build_small_model("panoptic_fpn")
    with pytest.raises(ExportError, match=r"PanopticFPN .*postprocess='inside'"):
        export_onnx(model, sample_images()[0], str(tmp_path / "m.onnx"), postprocess="inside")


def test_onnx_postprocess_inside_clips_boxes_to_the_input(tmp_path):
    model, _ = build_small_model("faster_fpn")
    sample, other = sample_images()
    path = export_onnx(model, sample, str(tmp_path / "m.onnx"), postprocess="inside")
    expected = _eager(model, other, "inside")
    boxes = expected["boxes"]
    # detector_postprocess to the input's own size: inside [0, W] x [0, H], none empty
    assert len(boxes) > 0 and bool((boxes[:, 2:] <= torch.tensor([72.0, 80.0])).all())
    assert bool(((boxes[:, 2:] - boxes[:, :2]) > 0).all())
    assert_outputs_match(expected, run_exported(path, other))


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of paired (N, H, W) bool masks; 1 where both are empty."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@pytest.mark.parametrize(
    ("export", "ext"),
    [(export_onnx, "onnx"), (export_torchscript, "ts"), (export_torch_export, "pt2")],
)
def test_mask_pasting_inside_the_graph_matches_eager_at_another_size(export, ext, tmp_path):
    # detector_postprocess pastes the masks at the input's own size in the graph: the
    # exported paste samples the whole image (eager mode only a window around the box),
    # so its sizes follow the input instead of the sample's.
    model, _ = build_small_model("mask_fpn")
    sample, other = sample_images()
    path = export(model, sample, str(tmp_path / f"m.{ext}"), postprocess="inside")
    for image in (sample, other):
        expected = _eager(model, image, "inside")
        actual = _match_detections(expected, run_exported(path, image))
        want, got = expected["masks"], torch.as_tensor(actual["masks"])
        assert got.dtype == torch.bool and got.shape == want.shape  # same count and size
        assert want.shape[1:] == image.shape[1:] and len(want) > 0
        assert float(_mask_iou(got, want).min()) >= 0.99
        for name in ("boxes", "scores", "classes"):
            torch.testing.assert_close(
                torch.as_tensor(actual[name]), expected[name], rtol=0, atol=BOX_ATOL
            )


@pytest.mark.parametrize("name", ["mask_fpn", "keypoint_fpn", "semantic_fpn"])
def test_torchscript_trace_matches_eager_on_another_size(name, tmp_path):
    model, _ = build_small_model(name)
    sample, other = sample_images()
    path = export_torchscript(model, sample, str(tmp_path / "model.ts"))
    for image in (sample, other):
        assert_outputs_match(_eager(model, image), run_exported(path, image))


@pytest.mark.parametrize(
    "name",
    [
        "faster_fpn",
        "mask_fpn",
        "mask_c4",
        "cascade_mask_fpn",
        "retinanet",
        "fcos",
        "semantic_fpn",
        "panoptic_fpn",
    ],
)
def test_torch_export_round_trip_matches_eager_on_another_size(name, tmp_path):
    # export_torch_export saves with torch.export.save; run_exported loads it back
    model, _ = build_small_model(name)
    sample, other = sample_images(name)
    path = export_torch_export(model, sample, str(tmp_path / "model.pt2"))
    counts = []
    for image in (sample, other):
        expected = _eager(model, image)
        assert_outputs_match(expected, run_exported(path, image))
        counts.append(len(expected.get("boxes", ())))
    if name != "semantic_fpn":
        assert counts[0] > 0, counts
    if name not in ("semantic_fpn", "retinanet", "fcos"):  # dense: their cap, 100, on both
        assert counts[0] != counts[1], counts  # the program's count is not the sample's


def test_torch_export_of_keypoint_rcnn_unrolls_decoding_up_to_the_detection_cap(tmp_path):
    # torch.export cannot loop over a data-dependent count: the keypoint decoding is
    # unrolled TEST.DETECTIONS_PER_IMAGE times (20 here, to keep the export short) and
    # the first n results kept, so images with fewer detections than the cap work too.
    model, _ = build_small_model("keypoint_fpn")
    model.roi_heads.box_predictor.test_topk_per_image = 20
    model.roi_heads.box_predictor.test_score_thresh = 0.98
    sample, other = sample_images()
    path = export_torch_export(model, sample, str(tmp_path / "model.pt2"))
    counts = []
    for image in (sample, other, other[:, :70, :66]):
        expected = _eager(model, image)
        assert_outputs_match(expected, run_exported(path, image))
        counts.append(len(expected["keypoints"]))
    assert min(counts) < 20 and len(set(counts)) > 1, counts


def test_torch_export_of_keypoint_rcnn_needs_a_detection_cap(tmp_path):
    model, _ = build_small_model("keypoint_fpn")
    model.roi_heads.box_predictor.test_topk_per_image = -1
    with pytest.raises(ExportError, match=r"TEST\.DETECTIONS_PER_IMAGE < 0 .*torch\.export"):
        export_torch_export(model, sample_images()[0], str(tmp_path / "model.pt2"))
    assert not (tmp_path / "model.pt2").exists()


def test_onnx_keypoint_decoding_loops_over_the_detections_of_each_image(tmp_path):
    # heatmaps_to_keypoints resizes each region's heatmap to its own box size; the export
    # must run that as a loop (ONNX Loop), not replay the sample's detections and sizes.
    import onnx

    model, cfg = build_small_model("keypoint_fpn")
    sample, other = sample_images()
    path = export_onnx(model, sample, str(tmp_path / "m.onnx"), cfg=cfg)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Loop" in ops
    counts = []
    for image in (sample, other, other[:, :40, :56]):
        expected = _eager(model, image)
        counts.append(len(expected["keypoints"]))
        assert_outputs_match(expected, run_exported(path, image))
    assert len(set(counts)) > 1, counts  # the images have different numbers of detections


def test_export_refuses_training_mode_and_unknown_models(tmp_path):
    model, _ = build_small_model("faster_fpn")
    with pytest.raises(ValueError, match="eval mode"):
        export_onnx(model.train(), sample_images()[0], str(tmp_path / "m.onnx"))
    with pytest.raises(ExportError, match="cannot export a Linear"):
        export_onnx(torch.nn.Linear(2, 2), sample_images()[0], str(tmp_path / "m.onnx"))
