"""heron/deploy/predictor.py on small ONNX graphs that follow the "heron-deploy-v1" contract.

The graphs are exported here from stub modules (the real exporter is tested on its own):
from the resized image they return fixed boxes scaled by its size, fixed scores and
classes, constant mask probabilities, keypoints, and semantic logits equal to image / 255.
Expectations come from Heron's PyTorch postprocessing run on the stub's own outputs, and
from hand arithmetic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from heron.data.transforms.augmentation_impl import ResizeShortestEdge
from heron.deploy.predictor import OnnxPredictor
from heron.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from heron.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

# Boxes as fractions of the resized input's (W, H, W, H); the last lies right of the image.
FRAC_BOXES = [[0.1, 0.2, 0.5, 0.6], [0.3, 0.1, 0.9, 0.95], [1.1, 0.2, 1.3, 0.5]]
SCORES = [0.9, 0.6, 0.8]
CLASSES = [1, 0, 2]
THINGS = ["cat", "dog", "bird"]
DETECTION_OUTPUTS = ["boxes", "scores", "classes", "mask_probs", "keypoints"]


def _mask_probs() -> torch.Tensor:
    """(3, 1, 28, 28): cones 1 - r / 14 around the mask centre, darker for later instances."""
    coords = torch.arange(28, dtype=torch.float32) + 0.5 - 14
    radius = (coords[None, :] ** 2 + coords[:, None] ** 2).sqrt()
    cone = (1 - radius / 14).clamp(min=0)
    return torch.stack([cone, cone * 0.9, cone * 0.8])[:, None]


class ContractStub(nn.Module):
    """Returns the contract's outputs, by name, computed from a (3, H, W) resized image."""

    def __init__(self, outputs: list[str]) -> None:
        super().__init__()
        self.outputs = outputs
        self.register_buffer("frac_boxes", torch.tensor(FRAC_BOXES))
        self.register_buffer("scores", torch.tensor(SCORES))
        self.register_buffer("classes", torch.tensor(CLASSES))
        self.register_buffer("mask_probs", _mask_probs())
        self.register_buffer("frac_keypoints", torch.tensor(FRAC_BOXES).view(3, 2, 2))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ones = image[0] * 0 + 1  # (H, W), so the sizes below stay dynamic in the graph
        height, width = ones[:, 0].sum(), ones[0, :].sum()
        # All detections, unless the image is black: then none.
        keep = torch.nonzero((self.scores > 0) & (image.amax() > 0)).squeeze(1)
        kpt_xy = self.frac_keypoints[keep] * torch.stack([width, height])  # (N, 2, 2)
        kpt_score = self.scores[keep][:, None, None].expand(-1, 2, 1)
        results = {
            "boxes": self.frac_boxes[keep] * torch.stack([width, height, width, height]),
            "scores": self.scores[keep],
            "classes": self.classes[keep],
            "mask_probs": self.mask_probs[keep],
            "keypoints": torch.cat([kpt_xy, kpt_score], dim=2),
            "sem_seg": image / 255,  # (3, H, W) logits
        }
        return tuple(results[name] for name in self.outputs)


def _metadata(arch: str, input_format: str, outputs: list[str]) -> dict[str, str]:
    meta = {
        "heron.format": "heron-deploy-v1",
        "meta_architecture": arch,
        "input_format": input_format,
        "min_size_test": "20",
        "max_size_test": "40",
        "thing_classes": json.dumps(THINGS),
        "stuff_classes": json.dumps(["things", "sky", "road"]),
        "mask_threshold": "0.5",
        "outputs": json.dumps(outputs),
    }
    if arch == "PanopticFPN":
        meta["panoptic_overlap_thresh"] = "0.5"
        meta["panoptic_stuff_area_limit"] = "4"
        meta["panoptic_instances_score_thresh"] = "0.5"
    return meta


def _export(path, outputs: list[str], metadata: dict[str, str]) -> str:
    """Export ContractStub(outputs) to `path` (opset 17) with the given metadata_props."""
    dynamic = {"image": {1: "H", 2: "W"}}
    dynamic.update({name: {0: "N"} for name in outputs if name != "sem_seg"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the stub's constants
        torch.onnx.export(
            ContractStub(outputs),
            (torch.rand(3, 20, 30) * 255,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=dynamic,
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("deploy_models")
    semantic = ["sem_seg"]
    panoptic = [*DETECTION_OUTPUTS[:4], "sem_seg"]
    return {
        "rcnn": _export(
            root / "rcnn.onnx", DETECTION_OUTPUTS, _metadata("GeneralizedRCNN", "RGB", DETECTION_OUTPUTS)
        ),
        "semantic_rgb": _export(
            root / "sem_rgb.onnx", semantic, _metadata("SemanticSegmentor", "RGB", semantic)
        ),
        "semantic_bgr": _export(
            root / "sem_bgr.onnx", semantic, _metadata("SemanticSegmentor", "BGR", semantic)
        ),
        "panoptic": _export(
            root / "panoptic.onnx", panoptic, _metadata("PanopticFPN", "BGR", panoptic)
        ),
    }  # fmt: skip


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def _reference(image_rgb: np.ndarray, outputs: list[str], input_format: str) -> dict:
    """Heron's PyTorch pipeline on the stub: resize, stub outputs, Heron postprocessing."""
    ordered = image_rgb[:, :, ::-1] if input_format == "BGR" else image_rgb
    resized = ResizeShortestEdge((20, 20), 40).get_transform(ordered).apply_image(ordered)
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    raw = dict(zip(outputs, ContractStub(outputs)(tensor)))
    input_size = tuple(resized.shape[:2])
    orig_h, orig_w = image_rgb.shape[:2]
    ref = {}
    if "boxes" in raw:
        instances = Instances(input_size)
        instances.pred_boxes = Boxes(raw["boxes"])
        instances.scores = raw["scores"]
        instances.pred_classes = raw["classes"]
        if "mask_probs" in raw:
            instances.pred_masks = raw["mask_probs"]
        if "keypoints" in raw:
            instances.pred_keypoints = raw["keypoints"]
        ref["instances"] = detector_postprocess(instances, orig_h, orig_w)
    if "sem_seg" in raw:
        ref["sem_seg_logits"] = sem_seg_postprocess(raw["sem_seg"], input_size, orig_h, orig_w)
    return ref


@pytest.mark.parametrize(("height", "width"), [(30, 45), (61, 17), (25, 25)])
def test_detections_equal_heron_postprocessing(models, height, width):
    image = _random_image(height, width)
    result = OnnxPredictor(models["rcnn"])(image)
    expected = _reference(image, DETECTION_OUTPUTS, "RGB")["instances"]
    assert len(result["boxes"]) == len(expected) == 2  # the third box is clipped away
    np.testing.assert_array_equal(result["boxes"], expected.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(result["scores"], expected.scores.numpy())
    np.testing.assert_array_equal(result["classes"], expected.pred_classes.numpy())
    np.testing.assert_array_equal(result["masks"], expected.pred_masks.numpy())
    np.testing.assert_array_equal(result["keypoints"], expected.pred_keypoints.numpy())
    assert result["masks"].shape == (2, height, width) and result["masks"].dtype == bool
    assert result["masks"].any(axis=(1, 2)).all()  # the cones reach 0.5: non-empty masks


def test_detections_by_hand(models):
    # A 30 x 45 (h, w) image resizes to short side 20: (20, 30). Box 0 in the input:
    # (0.1, 0.2, 0.5, 0.6) * (30, 20, 30, 20) = (3, 4, 15, 12); back by 45/30 = 30/20 = 1.5:
    # (4.5, 6, 22.5, 18). Box 1: (9, 2, 27, 19) -> (13.5, 3, 40.5, 28.5). Box 2 starts at
    # x = 33 * 1.5 = 49.5 > 45: clipped to zero width and dropped.
    image = np.full((30, 45, 3), 255, np.uint8)
    result = OnnxPredictor(models["rcnn"])(image)
    torch.testing.assert_close(
        torch.from_numpy(result["boxes"]),
        torch.tensor([[4.5, 6, 22.5, 18], [13.5, 3, 40.5, 28.5]]),
    )
    torch.testing.assert_close(torch.from_numpy(result["scores"]), torch.tensor([0.9, 0.6]))
    assert result["classes"].tolist() == [1, 0] and result["classes"].dtype == np.int64
    assert result["class_names"] == ["dog", "cat"]
    # Keypoint 0 of box 0 sits at its top-left corner (4.5, 6) with the box's score.
    torch.testing.assert_close(
        torch.from_numpy(result["keypoints"][0, 0]), torch.tensor([4.5, 6, 0.9])
    )


def test_no_detections_keep_their_shapes(models):
    result = OnnxPredictor(models["rcnn"])(np.zeros((30, 45, 3), np.uint8))  # black: none kept
    assert result["boxes"].shape == (0, 4)
    assert result["masks"].shape == (0, 30, 45)
    assert result["keypoints"].shape == (0, 2, 3)
    assert result["class_names"] == []


def test_path_pil_rgb_and_bgr_inputs_give_the_same_result(models, tmp_path):
    image = _random_image(28, 41, seed=5)
    Image.fromarray(image).save(tmp_path / "image.png")
    predictor = OnnxPredictor(models["rcnn"])
    from_array = predictor(image)
    others = [
        predictor(tmp_path / "image.png"),
        predictor(str(tmp_path / "image.png")),
        predictor(Image.fromarray(image)),
        predictor(np.ascontiguousarray(image[:, :, ::-1]), format="BGR"),  # as cv2.imread
    ]
    for other in others:
        assert other.keys() == from_array.keys()
        for key in ("boxes", "scores", "classes", "masks", "keypoints"):
            np.testing.assert_array_equal(other[key], from_array[key])


@pytest.mark.parametrize(("model", "label"), [("semantic_rgb", 0), ("semantic_bgr", 2)])
def test_image_reaches_the_model_in_its_channel_order(models, model, label):
    # Pure red, RGB (200, 10, 10). The stub's logits are its input channels / 255: an RGB
    # model sees red in channel 0, a BGR model in channel 2, so every pixel gets that label.
    image = np.zeros((12, 16, 3), np.uint8)
    image[:, :] = (200, 10, 10)
    result = OnnxPredictor(models[model])(image)
    assert result["sem_seg"].shape == (12, 16)
    assert (result["sem_seg"] == label).all()
    assert "boxes" not in result and "sem_seg_logits" not in result


def test_semantic_logits_equal_heron_sem_seg_postprocess(models):
    image = _random_image(33, 21, seed=2)
    result = OnnxPredictor(models["semantic_rgb"])(image, return_sem_seg_logits=True)
    expected = _reference(image, ["sem_seg"], "RGB")["sem_seg_logits"]
    torch.testing.assert_close(
        torch.from_numpy(result["sem_seg_logits"]), expected, atol=1e-5, rtol=0
    )
    np.testing.assert_array_equal(result["sem_seg"], result["sem_seg_logits"].argmax(axis=0))
    # Labels agree with PyTorch's argmax except where its two best logits tie within 1e-5.
    top2 = expected.topk(2, dim=0).values
    decided = (top2[0] - top2[1] > 1e-5).numpy()
    torch_labels = expected.argmax(dim=0).numpy()
    np.testing.assert_array_equal(result["sem_seg"][decided], torch_labels[decided])
    assert decided.mean() > 0.9


def test_panoptic_equals_heron_combine(models):
    image = np.zeros((24, 36, 3), np.uint8)
    image[:, :18] = (250, 20, 20)  # left half red: with a BGR model, label 2 (stuff "road")
    image[:, 18:] = (20, 20, 250)  # right half blue: label 0 ("things", never stuff)
    image[20:, :] = (20, 250, 20)  # bottom rows green: label 1 ("sky")
    predictor = OnnxPredictor(models["panoptic"])
    result = predictor(image)
    outputs = [*DETECTION_OUTPUTS[:4], "sem_seg"]
    reference = _reference(image, outputs, "BGR")
    instances = reference["instances"]
    np.testing.assert_array_equal(result["masks"], instances.pred_masks.numpy())
    # Solid blocks: no output pixel here blends two of them 50/50, so no near-ties.
    np.testing.assert_array_equal(result["sem_seg"], reference["sem_seg_logits"].argmax(0).numpy())
    expected_seg, expected_info = combine_semantic_and_instance_outputs(
        instances, torch.from_numpy(result["sem_seg"]), 0.5, 4, 0.5
    )
    seg, info = result["panoptic_seg"]
    np.testing.assert_array_equal(seg, expected_seg.numpy())
    assert info == expected_info
    # Detections 0 and 1 (scores 0.9, 0.6 >= 0.5), then stuff labels 1 and 2 ("sky", "road").
    assert [(s["isthing"], s["category_id"]) for s in info] == [
        (True, 1), (True, 0), (False, 1), (False, 2)
    ]  # fmt: skip


def test_corrupt_image_file_raises_value_error_naming_it(models, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    predictor = OnnxPredictor(models["rcnn"])
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.jpg"):
        predictor(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        predictor(tmp_path / "missing.png")


def test_bad_array_and_format_are_rejected(models):
    predictor = OnnxPredictor(models["rcnn"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8, got shape \(4, 4\) dtype uint8"):
        predictor(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"format must be 'RGB' or 'BGR', got 'RGBA'"):
        predictor(np.zeros((4, 4, 3), np.uint8), format="RGBA")
    with pytest.raises(TypeError, match="got list"):
        predictor([[0, 0, 0]])


def test_model_without_heron_format_is_refused_naming_the_key(models, tmp_path):
    model = onnx.load(models["semantic_rgb"])
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"producer": "someone else"})
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match=r"'heron\.format' must be 'heron-deploy-v1', got None"):
        OnnxPredictor(tmp_path / "plain.onnx")


def test_model_missing_a_required_key_is_refused_naming_it(models, tmp_path):
    model = onnx.load(models["semantic_rgb"])
    meta = {p.key: p.value for p in model.metadata_props if p.key != "min_size_test"}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(tmp_path / "partial.onnx"))
    with pytest.raises(ValueError, match=r"lacks metadata key 'min_size_test'"):
        OnnxPredictor(tmp_path / "partial.onnx")


def test_importing_and_running_the_predictor_never_imports_torch(models):
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import heron.deploy\n"
        "from heron.deploy import OnnxPredictor\n"
        f"out = OnnxPredictor({models['rcnn']!r})(np.full((30, 45, 3), 255, np.uint8))\n"
        "assert len(out['boxes']) == 2, out\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
