from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from heron.data.transforms.transform import (
    BlendTransform,
    ColorTransform,
    CropTransform,
    ExtentTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    PILColorTransform,
    ResizeTransform,
    RotationTransform,
    ScaleTransform,
    Transform,
    TransformList,
    VFlipTransform,
    _clip_polygon_to_rect,
)


def assert_np_close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual, dtype=np.float64)),
        torch.as_tensor(np.asarray(expected, dtype=np.float64)),
        atol=atol,
        rtol=0,
    )


def box_mask(h, w, box):
    """uint8 (h, w) mask, 255 inside the integer XYXY box."""
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def mask_bbox(mask):
    """XYXY box around pixels >= 128 (pixel (i, j) covers [j, j+1) x [i, i+1))."""
    ys, xs = np.nonzero(mask >= 128)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def polygon_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# ---- geometry on hand-computed coordinates ----------------------------------------------


def test_hflip_maps_x_to_width_minus_x():
    coords = np.array([[0.0, 1.0], [3.0, 4.0], [10.0, 2.0]])
    # width 10: x -> 10 - x, y unchanged
    assert_np_close(HFlipTransform(10).apply_coords(coords), [[10, 1], [7, 4], [0, 2]])


def test_vflip_maps_y_to_height_minus_y():
    coords = np.array([[1.0, 0.0], [2.0, 6.0]])
    assert_np_close(VFlipTransform(8).apply_coords(coords), [[1, 8], [2, 2]])


def test_flips_mirror_image_pixels():
    img = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert HFlipTransform(3).apply_image(img).tolist() == [[2, 1, 0], [5, 4, 3]]
    assert VFlipTransform(2).apply_image(img).tolist() == [[3, 4, 5], [0, 1, 2]]


def test_hflip_box_stays_xyxy():
    # box x in [1, 4] on width 10 -> x in [6, 9]
    assert_np_close(HFlipTransform(10).apply_box(np.array([[1.0, 2.0, 4.0, 5.0]])), [[6, 2, 9, 5]])


def test_resize_doubles_coords_and_image_size():
    tfm = ResizeTransform(10, 20, 20, 40)
    assert_np_close(tfm.apply_coords(np.array([[3.0, 4.0]])), [[6, 8]])
    out = tfm.apply_image(np.zeros((10, 20, 3), np.uint8))
    assert out.shape == (20, 40, 3)


def test_resize_uint8_matches_pil_resize_and_keeps_single_channel():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, size=(6, 8), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(img).resize((5, 9), Image.Resampling.BILINEAR))
    tfm = ResizeTransform(6, 8, 9, 5)
    np.testing.assert_array_equal(tfm.apply_image(img), expected)
    np.testing.assert_array_equal(tfm.apply_image(img[:, :, None]), expected[:, :, None])


def test_resize_float_is_bilinear_half_pixel():
    img = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    out = ResizeTransform(2, 2, 4, 4).apply_image(img)
    # align_corners=False: output x=0..3 samples source x = -0.25 (clamped 0), 0.25, 0.75, 1.25
    # (clamped 1): row 0 -> [0, .25, .75, 1]; output row 1 samples y=0.25 -> adds 0.25 * 2
    assert_np_close(out[0], [0, 0.25, 0.75, 1])
    assert_np_close(out[1], [0.5, 0.75, 1.25, 1.5])
    assert out.dtype == np.float32


def test_resize_segmentation_uses_nearest_labels():
    seg = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    out = ResizeTransform(2, 2, 4, 4).apply_segmentation(seg)
    # each label becomes a 2x2 block, no blended values
    np.testing.assert_array_equal(out, np.kron(seg, np.ones((2, 2), np.uint8)))


def test_resize_rejects_wrong_image_size():
    with pytest.raises(ValueError, match=r"expects an image of size \(10, 20\), got \(5, 5\)"):
        ResizeTransform(10, 20, 5, 5).apply_image(np.zeros((5, 5), np.uint8))


def test_scale_transform_coords_and_nearest_images():
    tfm = ScaleTransform(2, 3, 4, 9)
    # x * 9 / 3, y * 4 / 2
    assert_np_close(tfm.apply_coords(np.array([[1.0, 1.0]])), [[3, 2]])
    seg = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    # nearest on an integer factor (x2 rows, x3 columns) repeats each label in a block
    np.testing.assert_array_equal(tfm.apply_segmentation(seg), np.kron(seg, np.ones((2, 3))))
    rgb = np.full((2, 3, 3), 7, np.uint8)
    out = tfm.apply_image(rgb)
    assert out.shape == (4, 9, 3) and out.dtype == np.uint8 and (out == 7).all()
    with pytest.raises(ValueError, match=r"expects an image of size \(2, 3\), got \(3, 3\)"):
        tfm.apply_image(np.zeros((3, 3), np.uint8))


def test_crop_shifts_coords_and_slices_image():
    tfm = CropTransform(2, 3, 4, 5)
    assert_np_close(tfm.apply_coords(np.array([[2.0, 3.0], [6.0, 8.0]])), [[0, 0], [4, 5]])
    img = np.arange(100).reshape(10, 10)
    np.testing.assert_array_equal(tfm.apply_image(img), img[3:8, 2:6])


def test_crop_clips_polygon_to_window():
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    (clipped,) = CropTransform(5, 5, 10, 10).apply_polygons([square])
    # [0, 10]^2 intersect [5, 15]^2 = [5, 10]^2 -> after shift [0, 5]^2, area 25
    assert polygon_area(clipped) == pytest.approx(25.0)
    assert clipped.min() >= 0 and clipped.max() <= 5


def test_crop_drops_polygon_outside_and_keeps_inside_one():
    outside = np.array([[20.0, 20.0], [25.0, 20.0], [22.0, 25.0]])
    inside = np.array([[1.0, 1.0], [4.0, 1.0], [2.0, 3.0]])
    out = CropTransform(0, 0, 10, 10).apply_polygons([outside, inside])
    assert len(out) == 1
    assert polygon_area(out[0]) == pytest.approx(polygon_area(inside))


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(*[st.integers(0, 30)] * 4),
    st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 15), st.integers(1, 15)),
)
# Found by hypothesis: the clipped x came out as 14.000000000000002 on a crop edge at 14.
@example(rect=(3, 29, 0, 0), crop=(0, 0, 14, 1))
def test_polygon_clip_of_rectangle_has_intersection_area(rect, crop):
    x0, x1 = sorted(rect[:2])
    y0, y1 = sorted(rect[2:])
    poly = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
    cx, cy, cw, ch = crop
    clipped = _clip_polygon_to_rect(poly, cx, cy, cx + cw, cy + ch)
    # rectangle intersection area by arithmetic
    iw = max(0, min(x1, cx + cw) - max(x0, cx))
    ih = max(0, min(y1, cy + ch) - max(y0, cy))
    area = polygon_area(clipped) if len(clipped) >= 3 else 0.0
    assert area == pytest.approx(iw * ih, abs=1e-9)
    if len(clipped):
        assert clipped[:, 0].min() >= cx and clipped[:, 0].max() <= cx + cw
        assert clipped[:, 1].min() >= cy and clipped[:, 1].max() <= cy + ch


def test_pad_shifts_coords_and_fills_values():
    tfm = PadTransform(1, 2, 3, 4, pad_value=7, seg_pad_value=9)
    assert_np_close(tfm.apply_coords(np.array([[0.0, 0.0]])), [[1, 2]])
    img = np.ones((2, 2, 3), np.uint8)
    out = tfm.apply_image(img)
    # height 2 + 2 + 4, width 2 + 1 + 3
    assert out.shape == (8, 6, 3)
    assert out[0, 0, 0] == 7 and out[2, 1, 0] == 1
    seg = tfm.apply_segmentation(np.zeros((2, 2), np.uint8))
    assert seg.shape == (8, 6) and seg[0, 0] == 9 and seg[2, 1] == 0


def test_extent_maps_source_rect_onto_output():
    # source [0, 10]^2 onto 20 x 20: x -> 2x
    tfm = ExtentTransform((0, 0, 10, 10), (20, 20))
    assert_np_close(tfm.apply_coords(np.array([[1.0, 5.0]])), [[2, 10]])
    # source [-5, 15] x [0, 10] onto 10 (h) x 20 (w): x -> x + 5, y unchanged
    tfm = ExtentTransform((-5, 0, 15, 10), (10, 20))
    assert_np_close(tfm.apply_coords(np.array([[0.0, 3.0]])), [[5, 3]])
    assert tfm.apply_image(np.zeros((10, 10, 3), np.uint8)).shape == (10, 20, 3)


def test_rotation_90_hand_computed():
    tfm = RotationTransform(20, 30, 90)
    # 90 deg CCW on screen, canvas becomes 20 (w) x 30 (h): (x, y) -> (y, 30 - x)
    assert (tfm.bound_w, tfm.bound_h) == (20, 30)
    assert_np_close(tfm.apply_coords(np.array([[30.0, 0.0], [8.5, 5.5]])), [[0, 0], [5.5, 21.5]])
    img = np.arange(600, dtype=np.float32).reshape(20, 30)
    # same as np.rot90 (counter-clockwise) for a right angle
    assert_np_close(tfm.apply_image(img), np.rot90(img), atol=1e-3)


def test_rotated_box_default_raises_with_hint():
    with pytest.raises(NotImplementedError, match="register_type"):
        CropTransform(0, 0, 1, 1).apply_rotated_box(np.zeros((1, 5)))


def test_hflip_and_resize_rotated_boxes():
    boxes = np.array([[2.0, 3.0, 4.0, 2.0, 30.0]])
    assert_np_close(HFlipTransform(10).apply_rotated_box(boxes), [[8, 3, 4, 2, -30]])
    # isotropic x2: center and sizes double, angle kept
    assert_np_close(ResizeTransform(10, 10, 20, 20).apply_rotated_box(boxes), [[4, 6, 8, 4, 30]])
    # anisotropic (x3, y1) on a 90-degree box: its width lies along y, so it keeps its width
    # and its height (along x) triples; angle stays 90
    box90 = np.array([[2.0, 3.0, 4.0, 2.0, 90.0]])
    assert_np_close(ResizeTransform(10, 10, 10, 30).apply_rotated_box(box90), [[6, 3, 4, 6, 90]])


def test_blend_clips_uint8_and_keeps_float():
    img = np.full((1, 2), 200, np.uint8)
    # 0.5 * 100 + 1.5 * 200 = 350 -> clipped to 255
    assert BlendTransform(100.0, 0.5, 1.5).apply_image(img).tolist() == [[255, 255]]
    out = BlendTransform(100.0, 0.5, 1.5).apply_image(img.astype(np.float32))
    assert_np_close(out, [[350, 350]])


def test_color_transforms_touch_only_images():
    tfm = ColorTransform(lambda x: x * 2)
    coords = np.array([[1.0, 2.0]])
    assert tfm.apply_coords(coords) is coords
    assert tfm.apply_image(np.array([3])).tolist() == [6]
    seg = np.ones((2, 2), np.uint8)
    assert tfm.apply_segmentation(seg) is seg
    pil = PILColorTransform(lambda im: im.point(lambda v: 255 - v))
    assert pil.apply_image(np.zeros((2, 2), np.uint8)).tolist() == [[255, 255], [255, 255]]
    assert isinstance(tfm.inverse(), NoOpTransform)


def test_color_transform_rejects_non_callable():
    with pytest.raises(TypeError, match="op must be callable"):
        ColorTransform(3)


def test_apply_box_keeps_empty_shape():
    out = HFlipTransform(10).apply_box(np.zeros((0, 4)))
    assert out.shape == (0, 4)


# ---- consistency: image vs geometry ------------------------------------------------------

CONSISTENCY_TRANSFORMS = [
    HFlipTransform(40),
    VFlipTransform(30),
    ResizeTransform(30, 40, 45, 20),
    CropTransform(5, 4, 25, 20),
    PadTransform(3, 5, 2, 1),
    ExtentTransform((-4, -2, 36, 28), (60, 80)),
    RotationTransform(30, 40, 90),
    RotationTransform(30, 40, 30),
    RotationTransform(30, 40, -20, expand=False),
    ScaleTransform(30, 40, 45, 20),
]


@pytest.mark.parametrize("tfm", CONSISTENCY_TRANSFORMS, ids=lambda t: type(t).__name__)
def test_box_mask_and_box_geometry_agree(tfm):
    box = (10, 8, 24, 18)
    out_mask = tfm.apply_image(box_mask(30, 40, box))
    out_box = tfm.apply_box(np.array([box], dtype=np.float64))[0]
    # rasterisation and resampling move an edge by at most a pixel
    assert np.abs(mask_bbox(out_mask) - out_box).max() <= 1.0


@pytest.mark.parametrize("tfm", CONSISTENCY_TRANSFORMS, ids=lambda t: type(t).__name__)
def test_keypoint_pixel_and_coords_agree(tfm):
    img = np.zeros((30, 40), np.float32)
    img[12:14, 20:22] = 1.0  # a 2x2 blob centred at (21, 13)
    out = tfm.apply_image(img)
    ys, xs = np.nonzero(out > 1e-3)
    weights = out[ys, xs]
    centroid = [
        np.sum((xs + 0.5) * weights) / weights.sum(),
        np.sum((ys + 0.5) * weights) / weights.sum(),
    ]
    expected = tfm.apply_coords(np.array([[21.0, 13.0]]))[0]
    assert np.abs(np.array(centroid) - expected).max() <= 1.0


def test_polygon_mask_and_crop_polygon_agree():
    # triangle drawn with PIL, cropped both ways; areas agree within the boundary pixels
    poly = np.array([[2.0, 2.0], [30.0, 6.0], [10.0, 26.0]])
    from PIL import ImageDraw

    canvas = Image.new("L", (40, 30), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in poly], fill=255)
    tfm = CropTransform(8, 5, 20, 15)
    cropped_mask = tfm.apply_image(np.asarray(canvas))
    (clipped,) = tfm.apply_polygons([poly])
    perimeter = np.sum(np.linalg.norm(clipped - np.roll(clipped, 1, axis=0), axis=1))
    assert abs((cropped_mask > 0).sum() - polygon_area(clipped)) <= perimeter


# ---- inverses ---------------------------------------------------------------------------

EXACT_INVERTIBLE = [
    HFlipTransform(40),
    VFlipTransform(30),
    ResizeTransform(30, 40, 45, 20),
    CropTransform(5, 4, 25, 20, orig_w=40, orig_h=30),
    PadTransform(3, 5, 2, 1, orig_w=40, orig_h=30),
    RotationTransform(30, 40, 90),
    RotationTransform(30, 40, 180),
    ScaleTransform(30, 40, 45, 20),
    NoOpTransform(),
    TransformList(
        [ResizeTransform(30, 40, 60, 80), HFlipTransform(80), CropTransform(1, 2, 50, 40, 80, 60)]
    ),
]


@pytest.mark.parametrize("tfm", EXACT_INVERTIBLE, ids=lambda t: type(t).__name__)
def test_inverse_round_trips_coords(tfm):
    coords = np.array([[0.0, 0.0], [12.5, 7.25], [39.0, 29.0]])
    assert_np_close(tfm.inverse().apply_coords(tfm.apply_coords(coords)), coords, atol=1e-4)


@pytest.mark.parametrize("h, w", [(30, 40), (31, 40), (17, 23)])
@pytest.mark.parametrize("angle", [30.0, -45.0, 100.0, 171.5])
def test_rotation_inverse_is_within_half_pixel_per_axis(h, w, angle):
    # The inverse crops an integer offset ((bound - size) // 2) out of the re-expanded canvas,
    # as Detectron2 does, so an odd margin leaves the coords off by exactly half a pixel.
    tfm = RotationTransform(h, w, angle)
    coords = np.array([[0.0, 0.0], [12.5, 7.25], [w, h]])
    back = tfm.inverse().apply_coords(tfm.apply_coords(coords))
    assert np.abs(back - coords).max() <= 0.5 + 1e-9


def test_pad_then_inverse_restores_image_exactly():
    img = np.random.RandomState(1).randint(0, 255, (6, 7, 3)).astype(np.uint8)
    tfm = PadTransform(1, 2, 3, 4, orig_w=7, orig_h=6)
    np.testing.assert_array_equal(tfm.inverse().apply_image(tfm.apply_image(img)), img)


def test_crop_inverse_needs_original_size():
    with pytest.raises(ValueError, match="orig_w and orig_h"):
        CropTransform(0, 0, 2, 2).inverse()


# ---- TransformList -----------------------------------------------------------------------


def test_transform_list_flattens_and_composes():
    inner = TransformList([HFlipTransform(10), CropTransform(1, 1, 5, 5)])
    tl = TransformList([inner, VFlipTransform(5)])
    assert len(tl) == 3 and isinstance(tl[2], VFlipTransform)
    # (2, 3) -hflip-> (8, 3) -crop-> (7, 2) -vflip(5)-> (7, 3)
    assert_np_close(tl.apply_coords(np.array([[2.0, 3.0]])), [[7, 3]])


def test_transform_list_add_radd_iadd():
    a, b, c = HFlipTransform(4), VFlipTransform(4), NoOpTransform()
    tl = TransformList([a])
    assert [type(t) for t in (tl + b).transforms] == [HFlipTransform, VFlipTransform]
    assert [type(t) for t in (c + tl).transforms] == [NoOpTransform, HFlipTransform]
    tl += TransformList([b, c])
    assert [type(t) for t in tl.transforms] == [HFlipTransform, VFlipTransform, NoOpTransform]


def test_transform_list_inverse_reverses_order():
    tl = TransformList([CropTransform(2, 0, 6, 4, orig_w=10, orig_h=4), HFlipTransform(6)])
    inv = tl.inverse()
    assert [type(t) for t in inv.transforms] == [HFlipTransform, PadTransform]
    # (3, 1) -crop-> (1, 1) -hflip(6)-> (5, 1); inverse: hflip -> (1, 1) -> pad -> (3, 1)
    assert_np_close(inv.apply_coords(np.array([[5.0, 1.0]])), [[3, 1]])


def test_transform_list_rejects_non_transform():
    with pytest.raises(TypeError, match=r"transforms\[1\] must be a Transform, got int"):
        TransformList([NoOpTransform(), 3])


def test_register_type_adds_apply_method_reaching_transform_list():
    class Shift(Transform):
        def __init__(self, dx):
            self.dx = dx

        def apply_image(self, img):
            return img

        def apply_coords(self, coords):
            return coords + [self.dx, 0]

    Shift.register_type("points_list", lambda t, pts: [p + t.dx for p in pts])
    assert Shift(2).apply_points_list([1, 2]) == [3, 4]
    assert TransformList([Shift(1), Shift(2)]).apply_points_list([0]) == [3]
    assert NoOpTransform().apply_points_list([5]) == [5]
    with pytest.raises(TypeError, match="got 1 arguments"):
        Shift.register_type("bad", lambda x: x)


def test_transform_repr_lists_arguments():
    assert repr(CropTransform(1, 2, 3, 4)) == (
        "CropTransform(x0=1, y0=2, w=3, h=4, orig_w=None, orig_h=None)"
    )
