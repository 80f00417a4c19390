"""heron/deploy/postprocess.py against Heron's PyTorch implementations (the references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from heron.data.transforms.augmentation_impl import ResizeShortestEdge
from heron.deploy.postprocess import (
    combine_semantic_and_instance_outputs,
    detector_postprocess,
    get_output_shape,
    interpolate_bilinear,
    paste_masks_in_image,
    resize_shortest_edge,
    sem_seg_postprocess,
)
from heron.layers.mask_ops import paste_masks_in_image as torch_paste_masks_in_image
from heron.modeling.meta_arch.panoptic_fpn import (
    combine_semantic_and_instance_outputs as torch_combine,
)
from heron.modeling.postprocessing import detector_postprocess as torch_detector_postprocess
from heron.modeling.postprocessing import sem_seg_postprocess as torch_sem_seg_postprocess
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

# ---------------------------------------------------------------------------- resize


def test_get_output_shape_of_documented_example():
    # short side 417 -> 480: scale 480/417, long side 650 * 1.151 = 748.2 > 640, so scale
    # by 640/748.2: h = 480 * 0.8554 = 410.6 -> 411, w = 640.
    assert get_output_shape(417, 650, 480, 640) == (411, 640)


@pytest.mark.parametrize("oldh", [1, 17, 240, 333, 480, 801, 1333])
@pytest.mark.parametrize("oldw", [1, 23, 320, 427, 640, 1000])
@pytest.mark.parametrize(("short", "max_size"), [(800, 1333), (640, 1000), (32, 33)])
def test_get_output_shape_equals_resize_shortest_edge(oldh, oldw, short, max_size):
    expected = ResizeShortestEdge.get_output_shape(oldh, oldw, short, max_size)
    assert get_output_shape(oldh, oldw, short, max_size) == expected


@pytest.mark.parametrize(
    ("height", "width", "short", "max_size"),
    [(31, 47, 40, 60), (50, 20, 24, 1000), (64, 64, 32, 100), (7, 90, 30, 60), (45, 45, 45, 45)],
)
def test_resize_shortest_edge_pixels_equal_heron_transform(height, width, short, max_size):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    transform = ResizeShortestEdge((short, short), max_size).get_transform(image)
    expected = transform.apply_image(image)
    resized = resize_shortest_edge(image, short, max_size)
    assert resized.shape == expected.shape
    np.testing.assert_array_equal(resized, expected)


def test_resize_shortest_edge_with_zero_length_keeps_the_image():
    image = np.zeros((5, 7, 3), np.uint8)
    assert resize_shortest_edge(image, 0, 1333) is image


def test_resize_shortest_edge_rejects_float_images():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8, got shape \(5, 7, 3\) dtype float32"):
        resize_shortest_edge(np.zeros((5, 7, 3), np.float32), 10, 20)


# ---------------------------------------------------------------------------- mask pasting


def _random_masks_and_boxes(rng, num, img_h, img_w, mask_size=28):
    masks = rng.random((num, mask_size, mask_size)).astype(np.float32)
    corner = rng.uniform(-10, [img_w, img_h], (num, 2))
    size = rng.uniform(0.3, max(img_h, img_w), (num, 2))
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    return masks, boxes


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.5, -1.0])
def test_paste_masks_equals_heron_paste_masks_in_image(seed, threshold):
    rng = np.random.default_rng(seed)
    img_h, img_w = (int(v) for v in rng.integers(5, 70, 2))
    masks, boxes = _random_masks_and_boxes(rng, 5, img_h, img_w)
    expected = torch_paste_masks_in_image(
        torch.from_numpy(masks), torch.from_numpy(boxes), (img_h, img_w), threshold=threshold
    ).numpy()
    pasted = paste_masks_in_image(masks, boxes, (img_h, img_w), threshold=threshold)
    assert pasted.dtype == expected.dtype
    # Every pixel, bool and soft uint8 alike (no tolerance).
    np.testing.assert_array_equal(pasted, expected)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    img_h=st.integers(1, 40),
    img_w=st.integers(1, 40),
    mask_size=st.sampled_from([1, 2, 7, 28]),
)
def test_paste_masks_agrees_with_heron_on_random_inputs(seed, img_h, img_w, mask_size):
    rng = np.random.default_rng(seed)
    masks, boxes = _random_masks_and_boxes(rng, 3, img_h, img_w, mask_size)
    expected = torch_paste_masks_in_image(
        torch.from_numpy(masks), torch.from_numpy(boxes), (img_h, img_w)
    ).numpy()
    np.testing.assert_array_equal(paste_masks_in_image(masks, boxes, (img_h, img_w)), expected)


def test_paste_full_mask_over_integer_box_fills_the_box():
    # An all-ones 4x4 mask over box (2, 1, 6, 4) (one mask cell per pixel along x). Centres
    # x = 2.5..5.5, y = 1.5..3.5 fall inside the mask (value 1). The centre x = 1.5 maps to
    # grid (1.5 - 2) / 4 * 2 - 1 = -1.25, mask x = (-1.25 + 1) * 4 / 2 - 0.5 = -1.0: fully
    # outside (value 0); x = 6.5 maps to mask x = 4.0, outside too; rows y = 0.5 and 4.5 map
    # to mask y = -1.17 and 4.17, outside. So exactly the box.
    masks = np.ones((1, 4, 4), np.float32)
    boxes = np.array([[2, 1, 6, 4]], np.float32)
    expected = np.zeros((1, 6, 8), bool)
    expected[0, 1:4, 2:6] = True
    np.testing.assert_array_equal(paste_masks_in_image(masks, boxes, (6, 8)), expected)


def test_paste_masks_with_no_instances_keeps_the_image_shape():
    pasted = paste_masks_in_image(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), (5, 6))
    assert pasted.shape == (0, 5, 6) and pasted.dtype == bool


def test_paste_masks_leaves_boxes_outside_the_image_empty():
    masks = np.ones((1, 28, 28), np.float32)
    boxes = np.array([[50, 50, 60, 60]], np.float32)
    assert not paste_masks_in_image(masks, boxes, (10, 10)).any()


def test_paste_masks_with_zero_width_box_pastes_nothing_like_heron():
    # x1 == x0 divides by zero in the grid; both implementations leave the mask empty.
    masks = np.ones((2, 28, 28), np.float32)
    boxes = np.array([[3, 3, 3, 9], [1, 1, 9, 9]], np.float32)
    expected = torch_paste_masks_in_image(
        torch.from_numpy(masks), torch.from_numpy(boxes), (12, 12)
    ).numpy()
    pasted = paste_masks_in_image(masks, boxes, (12, 12))
    np.testing.assert_array_equal(pasted, expected)
    assert not pasted[0].any() and pasted[1].any()


def test_paste_masks_names_mismatched_boxes():
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\).*got shape \(3, 4\)"):
        paste_masks_in_image(np.zeros((2, 28, 28)), np.zeros((3, 4)), (5, 5))


# ---------------------------------------------------------------------------- semantic


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((7, 9), (20, 31)), ((32, 24), (11, 5)), ((1, 1), (3, 4)), ((5, 5), (5, 5))],
)
def test_interpolate_bilinear_equals_torch_align_corners_false(in_size, out_size):
    x = np.random.default_rng(0).normal(size=(3, *in_size)).astype(np.float32)
    expected = F.interpolate(
        torch.from_numpy(x)[None], size=out_size, mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(
        torch.from_numpy(interpolate_bilinear(x, out_size)), expected, atol=1e-5, rtol=0
    )


def test_interpolate_bilinear_doubles_a_ramp():
    # Doubling [0, 1] along x: output i samples source (i + 0.5) / 2 - 0.5 = -0.25, 0.25,
    # 0.75, 1.25 -> clamped to 0, then 0.25, 0.75, and 1 (last column): 0, 0.25, 0.75, 1.
    x = np.array([[[0.0, 1.0]]], np.float32)
    np.testing.assert_allclose(interpolate_bilinear(x, (1, 4)), [[[0, 0.25, 0.75, 1]]])


def test_sem_seg_postprocess_crops_padding_and_resizes_like_heron():
    logits = np.random.default_rng(1).normal(size=(4, 16, 24)).astype(np.float32)
    expected = torch_sem_seg_postprocess(torch.from_numpy(logits), (13, 21), 30, 45)
    result = sem_seg_postprocess(logits, (13, 21), 30, 45)
    assert result.shape == (4, 30, 45)
    torch.testing.assert_close(torch.from_numpy(result), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- detections


def test_detector_postprocess_equals_heron_detector_postprocess():
    rng = np.random.default_rng(3)
    input_size, output_size = (40, 60), (97, 143)
    masks, _ = _random_masks_and_boxes(rng, 6, *input_size)
    corner = rng.uniform(-5, [55, 35], (6, 2))  # left/top of the far edges: non-empty
    boxes = np.concatenate([corner, corner + rng.uniform(0.5, 30, (6, 2))], 1).astype(np.float32)
    boxes[5] = [70, 5, 90, 20]  # entirely right of the image: empty after clipping
    scores = rng.random(6).astype(np.float32)
    classes = rng.integers(0, 5, 6)
    keypoints = rng.uniform(0, 40, (6, 3, 3)).astype(np.float32)

    instances = Instances(input_size)
    instances.pred_boxes = Boxes(torch.from_numpy(boxes.copy()))
    instances.scores = torch.from_numpy(scores)
    instances.pred_classes = torch.from_numpy(classes)
    instances.pred_masks = torch.from_numpy(masks)[:, None]
    instances.pred_keypoints = torch.from_numpy(keypoints.copy())
    expected = torch_detector_postprocess(instances, *output_size)

    result = detector_postprocess(
        boxes, scores, classes, input_size, output_size, masks[:, None], keypoints
    )
    assert len(result["boxes"]) == len(expected) == 5
    np.testing.assert_array_equal(result["boxes"], expected.pred_boxes.tensor.numpy())
    np.testing.assert_array_equal(result["scores"], expected.scores.numpy())
    np.testing.assert_array_equal(result["classes"], expected.pred_classes.numpy())
    np.testing.assert_array_equal(result["masks"], expected.pred_masks.numpy())
    np.testing.assert_array_equal(result["keypoints"], expected.pred_keypoints.numpy())


def test_detector_postprocess_scales_and_clips_by_hand():
    # Input 10 x 20 (h, w) -> output 20 x 30: scale_x = 1.5, scale_y = 2.
    # (2, 1, 8, 4) -> (3, 2, 12, 8); (15, 6, 25, 9) -> (22.5, 12, 37.5, 18) -> x1 clipped to 30.
    boxes = np.array([[2, 1, 8, 4], [15, 6, 25, 9]], np.float32)
    result = detector_postprocess(boxes, np.ones(2), np.zeros(2), (10, 20), (20, 30))
    np.testing.assert_array_equal(result["boxes"], [[3, 2, 12, 8], [22.5, 12, 30, 18]])
    assert result["classes"].dtype == np.int64


def test_detector_postprocess_without_detections_keeps_shapes():
    result = detector_postprocess(
        np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0), (10, 20), (20, 30),
        mask_probs=np.zeros((0, 1, 28, 28), np.float32), keypoints=np.zeros((0, 17, 3)),
    )  # fmt: skip
    assert result["boxes"].shape == (0, 4)
    assert result["masks"].shape == (0, 20, 30)
    assert result["keypoints"].shape == (0, 17, 3)


def test_detector_postprocess_names_a_non_finite_box():
    boxes = np.array([[0, 0, 1, 1], [0, np.nan, 2, 2]], np.float32)
    with pytest.raises(ValueError, match="box 1 is not finite"):
        detector_postprocess(boxes, np.ones(2), np.zeros(2), (4, 4), (4, 4))


# ---------------------------------------------------------------------------- panoptic


def _panoptic_inputs():
    """Five instances on a 6 x 8 image and a semantic map with stuff labels 1 and 2."""
    masks = np.zeros((5, 6, 8), bool)
    masks[0, 0:3, 0:4] = True  # score 0.9: 12 pixels, first, kept whole
    masks[1, 2:4, 0:4] = True  # 0.8: 8 pixels, 4 under instance 0 (50%, not > 0.5): kept, 4 px
    masks[2, 0:2, 0:3] = True  # 0.7: 6 pixels all taken (100% > 0.5): skipped
    # masks[3] empty (0.6): skipped
    masks[4, 5:6, 6:8] = True  # 0.3 < 0.5: the pass ends here
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3], np.float32)
    classes = np.array([3, 1, 2, 4, 0])
    semantic = np.zeros((6, 8), np.int64)
    semantic[:, 4:8] = 1  # 24 pixels of stuff 1, none taken by instances
    semantic[4:6, 0:2] = 2  # 4 pixels of stuff 2: below the area limit 5
    return scores, classes, masks, semantic


def test_combine_follows_panoptic_rules_by_hand():
    scores, classes, masks, semantic = _panoptic_inputs()
    seg, info = combine_semantic_and_instance_outputs(scores, classes, masks, semantic, 0.5, 5, 0.5)
    expected = np.zeros((6, 8), np.int32)
    expected[0:3, 0:4] = 1
    expected[3:4, 0:4] = 2  # instance 1 minus the rows instance 0 took
    expected[:, 4:8] = 3
    np.testing.assert_array_equal(seg, expected)
    assert info == [
        {"id": 1, "isthing": True, "score": float(np.float32(0.9)), "category_id": 3, "instance_id": 0},
        {"id": 2, "isthing": True, "score": float(np.float32(0.8)), "category_id": 1, "instance_id": 1},
        {"id": 3, "isthing": False, "category_id": 1, "area": 24},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("overlap", "area", "score"), [(0.5, 5, 0.5), (0.2, 4, 0.1), (1.0, 0, 0.0)]
)
def test_combine_equals_heron_combine(overlap, area, score):
    scores, classes, masks, semantic = _panoptic_inputs()
    instances = Instances((6, 8))
    instances.scores = torch.from_numpy(scores)
    instances.pred_classes = torch.from_numpy(classes)
    instances.pred_masks = torch.from_numpy(masks)
    expected_seg, expected_info = torch_combine(
        instances, torch.from_numpy(semantic), overlap, area, score
    )
    seg, info = combine_semantic_and_instance_outputs(
        scores, classes, masks, semantic, overlap, area, score
    )
    assert seg.dtype == np.int32
    np.testing.assert_array_equal(seg, expected_seg.numpy())
    assert info == expected_info


def test_combine_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"instance_masks of shape \(1, 3, 3\) do not match"):
        combine_semantic_and_instance_outputs(
            np.ones(1), np.zeros(1), np.zeros((1, 3, 3), bool), np.zeros((4, 4)), 0.5, 1, 0.5
        )
