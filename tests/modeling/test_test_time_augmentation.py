"""Test-time augmentation: the augmented copies, R-CNN TTA (identity with one size and no
flip, original coordinates, flip merging against a torchvision reference, mask averaging,
refusals) and the semantic-segmentation wrapper on a toy model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F

from heron.data.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    TransformList,
)
from heron.modeling.meta_arch.build import build_model
from heron.modeling.postprocessing import detector_postprocess
from heron.modeling.test_time_augmentation import (
    DatasetMapperTTA,
    GeneralizedRCNNWithTTA,
    SemanticSegmentorWithTTA,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from tests.modeling.rcnn_fixtures import small_rcnn_cfg, synthetic_batch

SIZE = 64  # synthetic images are SIZE x SIZE (small: each test runs the model a few times)


# --------------------------------------------------------------------------- DatasetMapperTTA


def _ramp_image(h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    """(3, h, w) image whose pixels all differ, so a flip is visible."""
    return torch.arange(3 * h * w).reshape(3, h, w).to(dtype)


@pytest.mark.parametrize("flip", [True, False])
def test_mapper_makes_one_copy_per_size_and_flip(flip):
    mapper = DatasetMapperTTA(min_sizes=[20, 80], max_size=100, flip=flip)
    outputs = mapper({"image": _ramp_image(40, 60), "height": 40, "width": 60})
    # short side 20: scale 0.5 -> (20, 30); short side 80: (80, 120) has long side > 100,
    # so scale by 100 / 120 -> (66.67, 100) -> int(66.67 + 0.5) = 67
    sizes = [(20, 30), (67, 100)]
    expected = [s for s in sizes for _ in range(2 if flip else 1)]
    assert [tuple(o["image"].shape[1:]) for o in outputs] == expected
    for o in outputs:
        assert (o["height"], o["width"]) == (40, 60)
        assert isinstance(o["transforms"], TransformList)


def test_mapper_flipped_copy_is_the_mirrored_resized_image():
    image = _ramp_image(40, 60, torch.uint8)
    outputs = DatasetMapperTTA([40], 1000, True)({"image": image, "height": 40, "width": 60})
    plain, flipped = outputs[0]["image"], outputs[1]["image"]
    assert plain.dtype == torch.uint8
    # short side already 40: the resize keeps the image as it is
    torch.testing.assert_close(plain, image)
    torch.testing.assert_close(flipped, image.flip(dims=[2]))
    kinds = [type(t) for t in outputs[1]["transforms"].transforms]
    assert kinds == [NoOpTransform, ResizeTransform, HFlipTransform]


def test_mapper_transforms_start_from_the_original_size():
    # the input image was already resized from 40 x 60 to 20 x 30
    mapper = DatasetMapperTTA([80], 1000, False)
    (out,) = mapper({"image": _ramp_image(20, 30), "height": 40, "width": 60})
    assert tuple(out["image"].shape[1:]) == (80, 120)
    # the full original image box maps to the full augmented image: 60 * 2, 40 * 2
    box = out["transforms"].apply_box(np.array([[0.0, 0.0, 60.0, 40.0]], dtype=np.float32))
    np.testing.assert_allclose(box, [[0.0, 0.0, 120.0, 80.0]])


def test_mapper_reads_test_aug_config():
    cfg = small_rcnn_cfg()
    cfg.TEST.AUG.MIN_SIZES = (10, 30)
    cfg.TEST.AUG.MAX_SIZE = 500
    cfg.TEST.AUG.FLIP = False
    mapper = DatasetMapperTTA(cfg)
    assert (mapper.min_sizes, mapper.max_size, mapper.flip) == ([10, 30], 500, False)


def test_mapper_keeps_other_fields_as_copies():
    meta = {"tag": [1, 2]}
    mapper = DatasetMapperTTA([10], 100, True)
    outputs = mapper({"image": _ramp_image(10, 10), "height": 10, "width": 10, "meta": meta})
    assert [o["meta"] for o in outputs] == [meta, meta]
    assert all(o["meta"] is not meta for o in outputs)


def test_mapper_names_the_missing_key():
    with pytest.raises(KeyError, match="'height'"):
        DatasetMapperTTA([10], 100, False)({"image": _ramp_image(10, 10), "width": 10})


def test_mapper_refuses_no_sizes_and_bad_images():
    with pytest.raises(ValueError, match="min_sizes"):
        DatasetMapperTTA([], 100, False)
    with pytest.raises(ValueError, match=r"\(C, H, W\).*\(10, 10\)"):
        DatasetMapperTTA([10], 100, False)(
            {"image": torch.zeros(10, 10), "height": 10, "width": 10}
        )


# --------------------------------------------------------------------------- R-CNN TTA


def _tta_cfg(min_sizes, flip, **kwargs):
    cfg = small_rcnn_cfg(mask=True, **kwargs)
    cfg.TEST.AUG.MIN_SIZES = tuple(min_sizes)
    cfg.TEST.AUG.MAX_SIZE = 4000
    cfg.TEST.AUG.FLIP = flip
    return cfg


@pytest.fixture(scope="module")
def mask_rcnn():
    """An untrained (seeded) small Mask R-CNN in eval mode: it still detects many boxes."""
    torch.manual_seed(0)
    return build_model(_tta_cfg([SIZE], False)).eval()


def _image(index: int = 0) -> torch.Tensor:
    return synthetic_batch(SIZE)[index]["image"]


def _assert_same_instances(actual: Instances, expected: Instances, masks: bool = True):
    assert actual.image_size == expected.image_size
    assert len(actual) == len(expected) > 0
    torch.testing.assert_close(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(actual.scores, expected.scores)
    torch.testing.assert_close(actual.pred_classes, expected.pred_classes)
    if masks:
        torch.testing.assert_close(actual.pred_masks, expected.pred_masks)


@torch.no_grad()
def test_tta_with_one_size_and_no_flip_equals_the_plain_model(mask_rcnn):
    inputs = {"image": _image(), "height": SIZE, "width": SIZE}
    plain = mask_rcnn([inputs])[0]["instances"]
    tta = GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False), mask_rcnn)([inputs])[0]["instances"]
    # the merge re-runs NMS on boxes the model already de-duplicated: nothing changes
    _assert_same_instances(tta, plain)
    assert tta.pred_masks.shape == (len(tta), SIZE, SIZE)
    assert tta.pred_masks.dtype == torch.bool
    assert mask_rcnn.roi_heads.mask_on  # switched off for the box pass, then restored


@torch.no_grad()
def test_tta_boxes_and_masks_are_in_original_image_coordinates(mask_rcnn):
    # TTA at short side 256 must match the plain model run on the image upsampled 2x and
    # asked for a SIZE x SIZE output (which rescales through detector_postprocess).
    image = _image()
    upsampled = F.interpolate(image[None], size=(2 * SIZE, 2 * SIZE), mode="bilinear")[0]
    plain = mask_rcnn([{"image": upsampled, "height": SIZE, "width": SIZE}])[0]["instances"]
    tta_model = GeneralizedRCNNWithTTA(_tta_cfg([2 * SIZE], False), mask_rcnn)
    tta = tta_model([{"image": image, "height": SIZE, "width": SIZE}])[0]["instances"]
    _assert_same_instances(tta, plain)
    assert tta.pred_boxes.tensor.max() <= SIZE


def _mirror(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 4) XYXY boxes mirrored left-right in an image of this width: x -> width - x."""
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return torch.stack([width - x1, y0, width - x0, y1], dim=1)


@torch.no_grad()
def test_flip_tta_merges_both_views_like_torchvision_batched_nms(mask_rcnn):
    cfg = _tta_cfg([SIZE], True)
    image = _image(1)
    tta = GeneralizedRCNNWithTTA(cfg, mask_rcnn)([{"image": image}])[0]["instances"]

    # reference: detect on the image and on its mirror, mirror those boxes back, then
    # class-wise NMS (torchvision) over the union and keep the best DETECTIONS_PER_IMAGE
    views = [{"image": image}, {"image": image.flip(dims=[2])}]
    direct, mirrored = mask_rcnn.inference(views, do_postprocess=False)
    boxes = torch.cat([direct.pred_boxes.tensor, _mirror(mirrored.pred_boxes.tensor, SIZE)])
    scores = torch.cat([direct.scores, mirrored.scores])
    classes = torch.cat([direct.pred_classes, mirrored.pred_classes])
    keep = torchvision.ops.batched_nms(boxes, scores, classes, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)
    keep = keep[: cfg.TEST.DETECTIONS_PER_IMAGE]
    assert len(tta) == len(keep) > len(direct)  # the mirrored view added boxes
    torch.testing.assert_close(tta.pred_boxes.tensor, boxes[keep])
    torch.testing.assert_close(tta.scores, scores[keep])
    torch.testing.assert_close(tta.pred_classes, classes[keep])

    # masks: the mask head's probabilities for each merged box on the image, and for the
    # mirrored box on the mirrored image flipped back, averaged, then pasted
    merged = Instances((SIZE, SIZE), pred_boxes=Boxes(boxes[keep]), pred_classes=classes[keep])
    given = [merged, Instances((SIZE, SIZE), pred_boxes=Boxes(_mirror(boxes[keep], SIZE)))]
    given[1].pred_classes = classes[keep]
    probs = mask_rcnn.inference(views, [g[:] for g in given], do_postprocess=False)
    merged.pred_masks = (probs[0].pred_masks + probs[1].pred_masks.flip(dims=[3])) / 2
    expected = detector_postprocess(merged, SIZE, SIZE)
    torch.testing.assert_close(tta.pred_masks, expected.pred_masks)


@torch.no_grad()
def test_flip_tta_on_a_mirror_symmetric_image_gives_mirror_symmetric_boxes(mask_rcnn):
    left = _image()[:, :, : SIZE // 2]
    image = torch.cat([left, left.flip(dims=[2])], dim=2)  # symmetric about x = SIZE / 2
    cfg = _tta_cfg([SIZE], True)
    tta = GeneralizedRCNNWithTTA(cfg, mask_rcnn)([{"image": image}])[0]["instances"]
    boxes, scores, classes = tta.pred_boxes.tensor, tta.scores, tta.pred_classes
    assert len(tta) > 0
    # Both views see the same pixels, so the union holds every detection together with its
    # mirror image at the same score. For each kept box, NMS keeps that mirror too, or it
    # removed it for a kept box of the same class, scoring at least as high, overlapping the
    # mirror by more than the NMS threshold.
    iou = torchvision.ops.box_iou(boxes, _mirror(boxes, SIZE))  # (R, R): kept i vs mirror of j
    same_class = classes[:, None] == classes[None, :]
    mirror_kept = ((iou > 0.999) & same_class).any(dim=0)  # (R,)
    at_least_as_high = scores[:, None] >= scores[None, :]
    suppressor = iou > cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
    mirror_suppressed = (suppressor & same_class & at_least_as_high).any(dim=0)
    assert (mirror_kept | mirror_suppressed).all()
    assert mirror_kept.sum() >= len(tta) // 2


@torch.no_grad()
def test_multi_scale_flip_tta_returns_original_size_masks(mask_rcnn):
    tta = GeneralizedRCNNWithTTA(_tta_cfg([48, 96], True), mask_rcnn, batch_size=3)
    out = tta([{"image": _image(), "height": SIZE, "width": SIZE}])[0]["instances"]
    assert out.image_size == (SIZE, SIZE)
    assert 0 < len(out) <= 100
    assert out.pred_masks.shape == (len(out), SIZE, SIZE)
    assert (out.pred_boxes.tensor[:, 2:] <= SIZE).all() and (out.pred_boxes.tensor >= 0).all()
    assert (out.scores[:-1] >= out.scores[1:]).all()


@torch.no_grad()
def test_tta_output_follows_requested_height_and_width(mask_rcnn):
    # a half-size input with height/width of the full image: outputs in full-image pixels
    small = F.interpolate(_image()[None], size=(SIZE // 2, SIZE // 2), mode="bilinear")[0]
    tta = GeneralizedRCNNWithTTA(_tta_cfg([SIZE // 2], False), mask_rcnn)
    out = tta([{"image": small, "height": SIZE, "width": SIZE}])[0]["instances"]
    plain = mask_rcnn([{"image": small, "height": SIZE, "width": SIZE}])[0]["instances"]
    _assert_same_instances(out, plain)


@torch.no_grad()
def test_tta_reads_images_from_file_name(mask_rcnn, tmp_path):
    rgb = _image()[:, :48, :].round().to(torch.uint8).permute(1, 2, 0).numpy()  # (48, 64, 3)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    tta = GeneralizedRCNNWithTTA(_tta_cfg([48], False), mask_rcnn)
    from_file = tta([{"file_name": str(path)}])[0]["instances"]
    # the model's input format is BGR: channels reversed, channels first
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
    from_tensor = tta([{"image": bgr}])[0]["instances"]
    assert from_file.image_size == (48, SIZE)
    _assert_same_instances(from_file, from_tensor)


def test_tta_needs_an_image_or_a_file_name(mask_rcnn):
    tta = GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False), mask_rcnn)
    with pytest.raises(KeyError, match="'image' or 'file_name'"):
        tta([{"height": SIZE, "width": SIZE}])


@torch.no_grad()
def test_tta_without_detections_returns_empty_instances():
    cfg = _tta_cfg([SIZE], True)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.0  # softmax scores never exceed 1
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = GeneralizedRCNNWithTTA(cfg, model)([{"image": _image()}])[0]["instances"]
    assert len(out) == 0
    assert out.pred_boxes.tensor.shape == (0, 4)
    assert out.pred_masks.shape == (0, SIZE, SIZE)


@torch.no_grad()
def test_tta_of_a_box_only_model_has_no_masks():
    cfg = _tta_cfg([SIZE], False)
    cfg.MODEL.MASK_ON = False
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = {"image": _image(), "height": SIZE, "width": SIZE}
    out = GeneralizedRCNNWithTTA(cfg, model)([inputs])[0]["instances"]
    assert not out.has("pred_masks")
    _assert_same_instances(out, model([inputs])[0]["instances"], masks=False)


def test_tta_refuses_keypoint_models(mask_rcnn):
    with pytest.raises(ValueError, match=r"keypoint is not supported.*KEYPOINT_ON"):
        GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False, keypoint=True), mask_rcnn)


def test_tta_refuses_precomputed_proposals(mask_rcnn):
    cfg = _tta_cfg([SIZE], False)
    cfg.MODEL.LOAD_PROPOSALS = True
    with pytest.raises(ValueError, match="LOAD_PROPOSALS"):
        GeneralizedRCNNWithTTA(cfg, mask_rcnn)


def test_tta_refuses_other_models_and_bad_batch_sizes(mask_rcnn):
    with pytest.raises(TypeError, match="GeneralizedRCNN, got a model of type Linear"):
        GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False), mask_rcnn, batch_size=0)


# --------------------------------------------------------------------------- semantic TTA


class _ToySegmentor(nn.Module):
    """Two-class 'model': class-0 logit = the image's first channel, resized (nearest) to
    the requested height x width, plus ``scale_bonus`` times the resize factor; class 1 = 0."""

    def __init__(self, scale_bonus: float = 0.0) -> None:
        super().__init__()
        self.scale_bonus = scale_bonus
        self.calls: list[int] = []

    def forward(self, batched_inputs):
        self.calls.append(len(batched_inputs))
        outputs = []
        for x in batched_inputs:
            image, h, w = x["image"].float(), x["height"], x["width"]
            factor = image.shape[1] / h
            logit = F.interpolate(image[None, :1], size=(h, w), mode="nearest")[0, 0]
            logit = logit + self.scale_bonus * factor
            outputs.append({"sem_seg": torch.stack([logit, torch.zeros_like(logit)])})
        return outputs


def test_semantic_tta_undoes_the_flip_before_averaging():
    ln3 = math.log(3.0)
    image = torch.zeros(3, 2, 4)
    image[0] = torch.tensor([[0.0, ln3, 0.0, 0.0], [0.0, 0.0, 0.0, -ln3]])
    cfg = small_rcnn_cfg()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP = (2,), True  # same size, plus a mirror
    tta = SemanticSegmentorWithTTA(cfg, _ToySegmentor())
    (out,) = tta([{"image": image, "height": 2, "width": 4}])
    # softmax([v, 0])[0] = 1 / (1 + e^-v): 1/2 at v = 0, 3/4 at ln 3, 1/4 at -ln 3; the
    # mirrored view, flipped back, gives the same map, so the average equals it
    expected0 = torch.tensor([[0.5, 0.75, 0.5, 0.5], [0.5, 0.5, 0.5, 0.25]])
    torch.testing.assert_close(out["sem_seg"], torch.stack([expected0, 1 - expected0]))


def test_semantic_tta_averages_probabilities_over_scales():
    cfg = small_rcnn_cfg()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP = (2, 4), False
    tta = SemanticSegmentorWithTTA(cfg, _ToySegmentor(scale_bonus=1.0), batch_size=2)
    (out,) = tta([{"image": torch.zeros(3, 2, 4), "height": 2, "width": 4}])
    # views at factors 1 and 2: class-0 logits 1 and 2 everywhere; the average of the
    # probabilities (not of the logits): (sigmoid(1) + sigmoid(2)) / 2
    p0 = (1 / (1 + math.exp(-1)) + 1 / (1 + math.exp(-2))) / 2
    expected = torch.stack([torch.full((2, 4), p0), torch.full((2, 4), 1 - p0)])
    torch.testing.assert_close(out["sem_seg"], expected)
    assert tta.model.calls == [2]


def test_semantic_tta_runs_in_batches_and_ignores_ground_truth():
    cfg = small_rcnn_cfg()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP = (2, 4), True
    toy = _ToySegmentor()
    tta = SemanticSegmentorWithTTA(cfg, toy, batch_size=3)
    inputs = {"image": torch.zeros(3, 2, 4), "height": 2, "width": 4, "sem_seg": torch.zeros(2, 4)}
    (out,) = tta([inputs])
    assert toy.calls == [3, 1]  # four views in batches of three
    torch.testing.assert_close(out["sem_seg"], torch.full((2, 2, 4), 0.5))  # logits all 0
    assert "sem_seg" in inputs  # the caller's dict is left alone


class _WrongSizeSegmentor(nn.Module):
    def forward(self, batched_inputs):
        return [{"sem_seg": torch.zeros(2, *x["image"].shape[1:])} for x in batched_inputs]


def test_semantic_tta_needs_outputs_at_the_original_size():
    cfg = small_rcnn_cfg()
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.FLIP = (4,), False
    tta = SemanticSegmentorWithTTA(cfg, _WrongSizeSegmentor())
    with pytest.raises(ValueError, match=r"must be \(C, 2, 4\).*got \(2, 4, 8\)"):
        tta([{"image": torch.zeros(3, 2, 4), "height": 2, "width": 4}])


def test_semantic_tta_refuses_transforms_it_cannot_undo():
    def crop_mapper(d):
        return [{**d, "transforms": TransformList([CropTransform(0, 0, 4, 2)])}]

    cfg = small_rcnn_cfg()
    tta = SemanticSegmentorWithTTA(cfg, _ToySegmentor(), tta_mapper=crop_mapper)
    with pytest.raises(ValueError, match="cannot undo CropTransform"):
        tta([{"image": torch.zeros(3, 2, 4), "height": 2, "width": 4}])


def test_tta_names_a_mapper_output_without_transforms(mask_rcnn):
    def bad_mapper(d):
        return [dict(d)]

    tta = GeneralizedRCNNWithTTA(_tta_cfg([SIZE], False), mask_rcnn, tta_mapper=bad_mapper)
    with pytest.raises(KeyError, match="tta_mapper output 0 has no 'transforms'"):
        tta([{"image": _image()}])
