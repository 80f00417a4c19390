from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from heron.data.transforms.augmentation import (
    AugInput,
    Augmentation,
    AugmentationList,
    RandomApply,
    StandardAugInput,
    TransformGen,
    apply_augmentations,
    apply_transform_gens,
)
from heron.data.transforms.augmentation_impl import (
    FixedSizeCrop,
    MinIoURandomCrop,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomCrop_CategoryAreaConstraint,
    RandomExtent,
    RandomFlip,
    RandomLighting,
    RandomResize,
    RandomRotation,
    RandomSaturation,
    Resize,
    ResizeScale,
    ResizeShortestEdge,
    _iou_one_to_many,
)
from heron.data.transforms.augmentation_impl import RandomApply as ImplRandomApply
from heron.data.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    RotationTransform,
    TransformList,
    VFlipTransform,
)


def assert_np_close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual, dtype=np.float64)),
        torch.as_tensor(np.asarray(expected, dtype=np.float64)),
        atol=atol,
        rtol=0,
    )


def image(h, w, c=3):
    return np.zeros((h, w, c), np.uint8)


# ---- ResizeShortestEdge ------------------------------------------------------------------


def test_get_output_shape_parity_kit_example():
    # short 480 -> (480, 650 * 480 / 417 = 748.2); long side > 640 so scale by 640 / 748.2:
    # h = 480 * 0.8554 = 410.6 -> 411, w = 640
    assert ResizeShortestEdge.get_output_shape(417, 650, 480, 640) == (411, 640)


@pytest.mark.parametrize(
    "oldh, oldw, short, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.7 -> 1067
        (1000, 500, 400, 600, (600, 300)),  # (800, 400) > 600: scale 0.75
        (300, 300, 600, sys.maxsize, (600, 600)),  # square, no cap
        (10, 20, 5, 100, (5, 10)),  # downscale by 2
        (4, 5, 2, 100, (2, 3)),  # w = 2.5 rounds half up: int(2.5 + 0.5) = 3
    ],
)
def test_get_output_shape_hand_cases(oldh, oldw, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(oldh, oldw, short, max_size) == expected


def test_resize_shortest_edge_range_samples_every_integer_in_bounds():
    np.random.seed(0)
    aug = ResizeShortestEdge((10, 12), sample_style="range")
    shorts = {min(aug.get_transform(image(20, 30)).new_h, 999) for _ in range(60)}
    assert shorts == {10, 11, 12}


def test_resize_shortest_edge_choice_samples_only_listed_values():
    np.random.seed(0)
    aug = ResizeShortestEdge((10, 30), sample_style="choice")
    shorts = {aug.get_transform(image(20, 40)).new_h for _ in range(40)}
    assert shorts == {10, 30}


def test_resize_shortest_edge_zero_is_noop_and_bad_style_rejected():
    assert isinstance(ResizeShortestEdge(0).get_transform(image(4, 4)), NoOpTransform)
    with pytest.raises(ValueError, match="sample_style must be 'range' or 'choice', got 'x'"):
        ResizeShortestEdge(10, sample_style="x")
    with pytest.raises(ValueError, match="two values"):
        ResizeShortestEdge((1, 2, 3), sample_style="range")


def test_resize_shortest_edge_applies_to_aug_input():
    aug_input = AugInput(image(20, 40), boxes=np.array([[0.0, 0.0, 40.0, 20.0]]))
    tfm = ResizeShortestEdge(10)(aug_input)
    assert isinstance(tfm, ResizeTransform)
    assert aug_input.image.shape == (10, 20, 3)
    assert_np_close(aug_input.boxes, [[0, 0, 20, 10]])


def test_resize_and_resize_scale_sizes():
    assert Resize(7).get_transform(image(3, 4)).new_h == 7
    tfm = Resize((5, 6)).get_transform(image(3, 4))
    assert (tfm.new_h, tfm.new_w) == (5, 6)
    # 100x200 into 0.5 * (640, 640) = 320x320: scale min(3.2, 1.6) = 1.6 -> (160, 320)
    tfm = ResizeScale(0.5, 0.5, 640, 640).get_transform(image(100, 200))
    assert (tfm.new_h, tfm.new_w) == (160, 320)


# ---- flips -------------------------------------------------------------------------------


def test_random_flip_prob_one_and_zero():
    img = image(5, 7)
    tfm = RandomFlip(prob=1.0).get_transform(img)
    assert isinstance(tfm, HFlipTransform) and tfm.width == 7
    tfm = RandomFlip(prob=1.0, horizontal=False, vertical=True).get_transform(img)
    assert isinstance(tfm, VFlipTransform) and tfm.height == 5
    assert isinstance(RandomFlip(prob=0.0).get_transform(img), NoOpTransform)


def test_random_flip_rejects_both_or_neither_direction():
    with pytest.raises(ValueError, match="cannot both be True"):
        RandomFlip(horizontal=True, vertical=True)
    with pytest.raises(ValueError, match="one of horizontal or vertical"):
        RandomFlip(horizontal=False, vertical=False)


# ---- crops -------------------------------------------------------------------------------


def crop_sizes(aug, img, n=40):
    np.random.seed(1)
    out = []
    for _ in range(n):
        tfm = aug.get_transform(img)
        assert 0 <= tfm.x0 <= img.shape[1] - tfm.w and 0 <= tfm.y0 <= img.shape[0] - tfm.h
        out.append((tfm.h, tfm.w))
    return np.array(out)


def test_random_crop_relative():
    # 0.5 * 20 = 10, 0.25 * 40 = 10
    sizes = crop_sizes(RandomCrop("relative", (0.5, 0.25)), image(20, 40))
    assert (sizes == [10, 10]).all()


def test_random_crop_relative_range_bounds():
    sizes = crop_sizes(RandomCrop("relative_range", (0.5, 0.25)), image(20, 40))
    # h in [0.5 * 20, 20], w in [0.25 * 40, 40]
    assert sizes[:, 0].min() >= 10 and sizes[:, 0].max() <= 20
    assert sizes[:, 1].min() >= 10 and sizes[:, 1].max() <= 40


def test_random_crop_absolute_is_capped_by_image():
    sizes = crop_sizes(RandomCrop("absolute", (8, 100)), image(20, 40))
    assert (sizes == [8, 40]).all()


def test_random_crop_absolute_range_bounds():
    sizes = crop_sizes(RandomCrop("absolute_range", (5, 30)), image(20, 40))
    assert sizes[:, 0].min() >= 5 and sizes[:, 0].max() <= 20  # capped by h = 20
    assert sizes[:, 1].min() >= 5 and sizes[:, 1].max() <= 30


def test_random_crop_rejects_unknown_type():
    with pytest.raises(ValueError, match=r"crop_type must be one of .* got 'square'"):
        RandomCrop("square", (1, 1))


def test_category_area_constraint_prefers_mixed_crops():
    # left half label 0, right half label 1; a width-4 crop has max share < 0.6 only at x0 = 2
    sem_seg = np.zeros((8, 8), np.uint8)
    sem_seg[:, 4:] = 1
    aug = RandomCrop_CategoryAreaConstraint("absolute", (8, 4), single_category_max_area=0.6)
    hits = 0
    for seed in range(40):
        np.random.seed(seed)
        tfm = aug.get_transform(image(8, 8), sem_seg)
        assert (tfm.w, tfm.h) == (4, 8)
        hits += tfm.x0 == 2
    # unconstrained: 1 in 5; with 10 tries: 1 - 0.8 ** 10 = 0.89
    assert hits >= 30


def test_fixed_size_crop_pads_small_image_to_size():
    aug_input = AugInput(np.ones((4, 6, 3), np.uint8), sem_seg=np.zeros((4, 6), np.uint8))
    tfm = FixedSizeCrop((8, 10))(aug_input)
    assert aug_input.image.shape == (8, 10, 3)
    assert aug_input.image[0, 0, 0] == 1 and aug_input.image[7, 9, 0] == 128
    assert aug_input.sem_seg[0, 0] == 0 and aug_input.sem_seg[7, 9] == 255
    assert isinstance(tfm, TransformList)


def test_fixed_size_crop_crops_large_image_to_size():
    np.random.seed(0)
    aug_input = AugInput(image(30, 40))
    FixedSizeCrop((10, 20))(aug_input)
    assert aug_input.image.shape == (10, 20, 3)


def test_min_iou_random_crop_keeps_a_box_center():
    boxes = np.array([[10.0, 10.0, 30.0, 30.0], [35.0, 5.0, 45.0, 20.0]])
    aug = MinIoURandomCrop(min_ious=(0.5,))
    for seed in range(10):
        np.random.seed(seed)
        tfm = aug.get_transform(image(40, 50), boxes)
        if isinstance(tfm, CropTransform):
            # the patch right/bottom is int(left + new_w), up to 1 past x0 + int(new_w)
            centers = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (
                (centers[:, 0] > tfm.x0)
                & (centers[:, 0] < tfm.x0 + tfm.w + 1)
                & (centers[:, 1] > tfm.y0)
                & (centers[:, 1] < tfm.y0 + tfm.h + 1)
            )
            assert inside.any()
    assert isinstance(aug.get_transform(image(4, 4), None), NoOpTransform)


def test_iou_helper_hand_values():
    patch = np.array([0.0, 0.0, 2.0, 2.0])
    boxes = np.array([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    # shared unit square: 1 / (4 + 4 - 1)
    assert_np_close(_iou_one_to_many(patch, boxes), [1 / 7, 0.0])


# ---- rotation, extent, photometric -------------------------------------------------------


def test_random_rotation_angles():
    np.random.seed(0)
    tfm = RandomRotation((10, 20)).get_transform(image(10, 10))
    assert isinstance(tfm, RotationTransform) and 10 <= tfm.angle <= 20
    assert isinstance(
        RandomRotation([0, 360], sample_style="choice").get_transform(image(4, 4)), NoOpTransform
    )
    tfm = RandomRotation(30, center=(0.0, 0.0), expand=False).get_transform(image(10, 20))
    assert tuple(tfm.center) == (0.0, 0.0)


def test_random_extent_identity_rect():
    tfm = RandomExtent((1.0, 1.0), (0.0, 0.0)).get_transform(image(10, 20))
    assert tfm.output_size == (10, 20)
    assert_np_close(tfm.apply_coords(np.array([[3.0, 4.0]])), [[3, 4]])


def test_brightness_contrast_saturation_lighting():
    img = np.full((2, 2, 3), 200, np.uint8)
    # brightness w = 0.5: 0.5 * 0 + 0.5 * 200 = 100
    assert (RandomBrightness(0.5, 0.5).get_transform(img).apply_image(img) == 100).all()
    ramp = np.array([[[0, 0, 0], [100, 100, 100]]], np.uint8)
    # contrast w = 0: every pixel becomes the mean, 50
    assert (RandomContrast(0.0, 0.0).get_transform(ramp).apply_image(ramp) == 50).all()
    red = np.array([[[255, 0, 0]]], np.uint8)
    # saturation w = 0: grayscale 0.299 * 255 = 76.2 -> 76 in every channel
    assert RandomSaturation(0.0, 0.0).get_transform(red).apply_image(red).tolist() == [[[76] * 3]]
    # lighting with scale 0 adds 0
    assert (RandomLighting(0.0).get_transform(img).apply_image(img) == 200).all()
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB image, got \(2, 2\)"):
        RandomSaturation(0.5, 1.5).get_transform(np.zeros((2, 2), np.uint8))


# ---- base classes, lists and helpers -----------------------------------------------------


def test_seeded_pipeline_is_reproducible():
    augs = [
        ResizeShortestEdge((8, 16), max_size=40),
        RandomFlip(),
        RandomCrop("relative_range", (0.5, 0.5)),
    ]
    img = np.random.RandomState(3).randint(0, 255, (20, 30, 3)).astype(np.uint8)
    results = []
    for _ in range(2):
        np.random.seed(123)
        out, tfms = apply_augmentations(augs, img)
        results.append((out, [repr(t) for t in tfms]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_boxes_follow_image_through_resize_flip_crop():
    # box drawn as a mask; after the pipeline the mask's bbox matches the transformed box
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 15:35] = 255
    boxes = np.array([[15.0, 10.0, 35.0, 30.0]])
    for seed in range(5):
        np.random.seed(seed)
        aug_input = AugInput(img, boxes=boxes)
        augs = AugmentationList(
            [
                ResizeShortestEdge((50, 70)),
                RandomFlip(prob=0.5),
                FixedSizeCrop((60, 60), pad_value=0),
            ]
        )
        augs(aug_input)
        ys, xs = np.nonzero(aug_input.image[:, :, 0] >= 128)
        box = aug_input.boxes[0]
        box = np.clip(box, 0, [60, 60, 60, 60])  # the crop may cut the box
        drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.abs(np.asarray(drawn) - box).max() <= 1.0


def test_random_apply_prob_one_and_zero():
    np.random.seed(0)
    img = image(4, 6)
    assert isinstance(RandomApply(HFlipTransform(6), prob=1.0)(AugInput(img)), HFlipTransform)
    assert isinstance(RandomApply(RandomFlip(prob=1.0), prob=0.0)(AugInput(img)), NoOpTransform)
    assert isinstance(RandomApply(RandomFlip(prob=1.0), 1.0).get_transform(img), HFlipTransform)
    with pytest.raises(ValueError, match="prob must be in"):
        RandomApply(NoOpTransform(), prob=1.5)


def test_apply_augmentations_returns_image_or_same_input():
    img = image(4, 6)
    out, tfms = apply_augmentations([HFlipTransform(6)], img)
    assert isinstance(out, np.ndarray) and len(tfms) == 1
    aug_input = StandardAugInput(img)
    returned, _ = apply_transform_gens([Resize((2, 3))], aug_input)
    assert returned is aug_input and aug_input.image.shape == (2, 3, 3)


def test_aug_input_rejects_bad_images():
    with pytest.raises(TypeError, match="integer images must be uint8, got dtype int32"):
        AugInput(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="got shape"):
        AugInput(np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        AugInput([[0]])


def test_augmentation_needs_named_inputs_and_returns_transform():
    class NeedsBoxes(Augmentation):
        input_args = ("image", "masks")

        def get_transform(self, image, masks):
            return NoOpTransform()

    with pytest.raises(AttributeError, match="needs input 'masks'"):
        NeedsBoxes()(AugInput(image(2, 2)))

    class ReturnsNone(Augmentation):
        def get_transform(self, image):
            return None

    with pytest.raises(TypeError, match="must return a Transform, got NoneType"):
        ReturnsNone()(AugInput(image(2, 2)))


def test_rand_range_bounds():
    np.random.seed(0)
    values = Augmentation()._rand_range(2.0, 3.0, size=50)
    assert values.shape == (50,) and values.min() >= 2.0 and values.max() < 3.0
    assert 0.0 <= Augmentation()._rand_range() < 1.0


def test_augmentation_repr_lists_non_default_args():
    assert repr(ResizeShortestEdge((10, 12), max_size=100)) == (
        "ResizeShortestEdge(short_edge_length=(10, 12), max_size=100)"
    )
    assert repr(RandomFlip(prob=1.0)) == "RandomFlip(prob=1.0)"
    assert repr(AugmentationList([RandomFlip()])) == "AugmentationList[RandomFlip()]"


def test_random_resize_picks_listed_shapes():
    np.random.seed(0)
    aug = RandomResize([(4, 5), (6, 7)])
    shapes = {(t.new_h, t.new_w) for t in (aug.get_transform(image(3, 3)) for _ in range(30))}
    assert shapes == {(4, 5), (6, 7)}
    with pytest.raises(ValueError, match="shape_list must not be empty"):
        RandomResize([])


def test_detectron2_aliases():
    assert TransformGen is Augmentation
    assert StandardAugInput is AugInput
    assert ImplRandomApply is RandomApply
    assert apply_transform_gens is apply_augmentations
