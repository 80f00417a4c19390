import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from heron.structures.boxes import Boxes
from heron.structures.masks import (
    BitMasks,
    PolygonMasks,
    ROIMasks,
    polygon_area,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# x0, y0, x1, y1, ...: the axis-aligned square [1, 5] x [1, 5] (side 4)
SQUARE = np.array([1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0])
# right triangle with legs 4 (x) and 3 (y) at the origin
TRIANGLE = np.array([0.0, 0.0, 4.0, 0.0, 0.0, 3.0])


# ---------------------------------------------------------------- polygon helpers


def test_polygon_area_shoelace():
    assert polygon_area(SQUARE[0::2], SQUARE[1::2]) == pytest.approx(16.0)  # 4 * 4
    assert polygon_area(TRIANGLE[0::2], TRIANGLE[1::2]) == pytest.approx(6.0)  # 4 * 3 / 2


def test_polygon_area_is_positive_for_both_orientations():
    reversed_tri = TRIANGLE.reshape(-1, 2)[::-1].reshape(-1)
    assert polygon_area(reversed_tri[0::2], reversed_tri[1::2]) == pytest.approx(6.0)


def test_polygons_to_bitmask_square_matches_pycocotools_and_area():
    mask = polygons_to_bitmask([SQUARE.copy()], 8, 8)
    assert mask.dtype == np.bool_ and mask.shape == (8, 8)
    reference = mask_util.decode(mask_util.merge(mask_util.frPyObjects([SQUARE.copy()], 8, 8)))
    np.testing.assert_array_equal(mask, reference.astype(bool))
    # an integer-aligned 4 x 4 square covers 16 pixels: rows 1..4 and columns 1..4
    assert mask.sum() == 16
    assert mask[1:5, 1:5].all()
    assert int(BitMasks(mask[None]).area()[0]) == 16


def test_polygons_to_bitmask_is_union_of_polygons():
    other = SQUARE + 2.0  # the square shifted by (2, 2): overlaps [3, 5] x [3, 5]
    both = polygons_to_bitmask([SQUARE.copy(), other], 10, 10)
    one = polygons_to_bitmask([SQUARE.copy()], 10, 10)
    two = polygons_to_bitmask([other], 10, 10)
    np.testing.assert_array_equal(both, one | two)
    assert both.sum() == 16 + 16 - 4  # 2 x 2 pixels overlap


def test_polygons_to_bitmask_without_polygons_is_empty():
    mask = polygons_to_bitmask([], 3, 4)
    assert mask.shape == (3, 4) and not mask.any()


def test_rasterize_polygon_equal_to_box_is_full():
    polygon = np.array([2.0, 2, 6, 2, 6, 6, 2, 6])
    out = rasterize_polygons_within_box([polygon], np.array([2.0, 2, 6, 6]), 8)
    assert out.dtype == torch.bool and out.shape == (8, 8)
    assert out.all()
    # the input is not modified (shifted and scaled on a copy)
    np.testing.assert_array_equal(polygon, [2.0, 2, 6, 2, 6, 6, 2, 6])


def test_rasterize_left_half_of_box():
    # polygon x in [0, 2] of box x in [0, 4]; scale 8 / 4 = 2 -> columns 0..3 of 8
    out = rasterize_polygons_within_box(
        [np.array([0.0, 0, 2, 0, 2, 4, 0, 4])], np.array([0.0, 0, 4, 4]), 8
    )
    assert out[:, :4].all() and not out[:, 4:].any()


def test_rasterize_non_square_box_scales_axes_separately():
    # box 4 wide, 2 high -> ratios 4 / 4 = 1 in x and 4 / 2 = 2 in y; polygon = box
    out = rasterize_polygons_within_box(
        [np.array([0.0, 0, 4, 0, 4, 2, 0, 2])], np.array([0.0, 0, 4, 2]), 4
    )
    assert out.all()
    # top half of the box (y in [0, 1]) -> rows 0..1 of 4
    out = rasterize_polygons_within_box(
        [np.array([0.0, 0, 4, 0, 4, 1, 0, 1])], np.array([0.0, 0, 4, 2]), 4
    )
    assert out[:2].all() and not out[2:].any()


# ---------------------------------------------------------------- BitMasks


def _hand_drawn() -> torch.Tensor:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1..2, columns 2..4
    masks[2, 5, 7] = True  # a single pixel in the bottom-right corner
    return masks


def test_bitmasks_converts_to_bool_and_records_image_size():
    bm = BitMasks(np.ones((2, 3, 4), dtype=np.uint8))
    assert bm.tensor.dtype == torch.bool and bm.device.type == "cpu"
    assert tuple(bm.image_size) == (3, 4)


def test_bitmasks_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"\(N, H, W\), got \(3, 4\)"):
        BitMasks(torch.zeros(3, 4))


@pytest.mark.parametrize("device", DEVICES)
def test_bitmasks_to_and_device(device):
    bm = BitMasks(_hand_drawn()).to(device)
    assert bm.device.type == device


def test_bitmasks_getitem_len_iter_repr():
    t = _hand_drawn()
    bm = BitMasks(t)
    assert len(bm) == 3
    assert bm[0].tensor.shape == (1, 6, 8)
    torch.testing.assert_close(bm[0].tensor, t[:1])
    torch.testing.assert_close(bm[-1].tensor, t[2:])
    torch.testing.assert_close(bm[1:].tensor, t[1:])
    torch.testing.assert_close(bm[torch.tensor([True, False, True])].tensor, t[[0, 2]])
    torch.testing.assert_close(bm[torch.tensor([2, 1])].tensor, t[[2, 1]])
    frames = list(bm)
    assert len(frames) == 3 and frames[0].shape == (6, 8)
    assert repr(bm) == "BitMasks(num_instances=3, image_size=(6, 8))"
    with pytest.raises(ValueError, match="gave shape"):
        bm[0, 0]


def test_bitmasks_nonempty_and_area():
    bm = BitMasks(_hand_drawn())
    assert bm.nonempty().tolist() == [True, False, True]
    # 2 rows x 3 columns = 6; empty; one pixel
    assert bm.area().tolist() == [6, 0, 1]
    empty = BitMasks(torch.zeros(0, 2, 2))
    assert empty.nonempty().shape == (0,) and empty.area().shape == (0,)


def test_bitmasks_get_bounding_boxes_of_hand_drawn_masks():
    boxes = BitMasks(_hand_drawn()).get_bounding_boxes()
    assert isinstance(boxes, Boxes)
    # columns 2..4, rows 1..2 -> (2, 1, 4 + 1, 2 + 1); empty -> zeros; pixel (7, 5) -> (7, 5, 8, 6)
    expected = torch.tensor([[2.0, 1, 5, 3], [0, 0, 0, 0], [7, 5, 8, 6]])
    torch.testing.assert_close(boxes.tensor, expected)
    assert BitMasks(torch.zeros(0, 4, 4)).get_bounding_boxes().tensor.shape == (0, 4)


def test_bitmasks_from_polygon_masks():
    polys = PolygonMasks([[SQUARE], [TRIANGLE]])
    bm = BitMasks.from_polygon_masks(polys, 8, 8)
    assert bm.tensor.shape == (2, 8, 8)
    np.testing.assert_array_equal(bm.tensor[0].numpy(), polygons_to_bitmask([SQUARE], 8, 8))
    np.testing.assert_array_equal(bm.tensor[1].numpy(), polygons_to_bitmask([TRIANGLE], 8, 8))
    # plain lists of polygons work too, and no instances give (0, H, W)
    assert BitMasks.from_polygon_masks([[SQUARE]], 8, 8).tensor.shape == (1, 8, 8)
    assert BitMasks.from_polygon_masks([], 5, 7).tensor.shape == (0, 5, 7)


def test_bitmasks_from_roi_masks_treats_each_roi_as_whole_image():
    roi = torch.zeros(1, 2, 2)
    roi[0, 0, 0] = 1.0  # top-left cell of a 2 x 2 mask stretched over a 4 x 4 image
    bm = BitMasks.from_roi_masks(ROIMasks(roi), 4, 4)
    # pixel x samples mask column u = (x + 0.5) * 2 / 4 - 0.5: -0.25, 0.25, 0.75, 1.25.
    # Bilinear weight of cell 0 (zero padding outside): 0.75, 0.75, 0.25, 0 per axis, so
    # pixels with x, y in {0, 1} get 0.75 * 0.75 = 0.5625 >= 0.5; the rest < 0.5.
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    torch.testing.assert_close(bm.tensor, expected)


def test_crop_and_resize_of_mask_equal_to_its_box_is_all_true():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 1:7] = True  # box x in [1, 7], y in [2, 6]
    out = BitMasks(masks).crop_and_resize(torch.tensor([[1.0, 2, 7, 6]]), 4)
    assert out.dtype == torch.bool and out.shape == (1, 4, 4)
    assert out.all()


def test_crop_and_resize_left_half():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :, :4] = True
    # aligned ROIAlign over (0, 0, 8, 8) into 2 x 2: bin 0 samples columns 0..3 (all 1),
    # bin 1 columns 4..7 (all 0)
    out = BitMasks(masks).crop_and_resize(Boxes(torch.tensor([[0.0, 0, 8, 8]])), 2)
    torch.testing.assert_close(out, torch.tensor([[[True, False], [True, False]]]))


def test_crop_and_resize_empty_and_length_mismatch():
    out = BitMasks(torch.zeros(0, 5, 5)).crop_and_resize(torch.zeros(0, 4), 3)
    assert out.shape == (0, 3, 3) and out.dtype == torch.bool
    with pytest.raises(ValueError, match="got 2 boxes for 1 masks"):
        BitMasks(torch.zeros(1, 5, 5)).crop_and_resize(torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match=r"\(N, 4\) tensor, got \(1, 3\)"):
        BitMasks(torch.zeros(1, 5, 5)).crop_and_resize(torch.zeros(1, 3), 3)


def test_bitmasks_cat():
    a = BitMasks(torch.zeros(1, 3, 3))
    b = BitMasks(torch.ones(2, 3, 3))
    c = BitMasks.cat([a, b])
    assert c.tensor.shape == (3, 3, 3) and c.area().tolist() == [0, 9, 9]
    with pytest.raises(ValueError, match="non-empty list"):
        BitMasks.cat([])
    with pytest.raises(TypeError, match="element 1"):
        BitMasks.cat([a, torch.zeros(1, 3, 3)])


# ---------------------------------------------------------------- PolygonMasks


def test_polygon_masks_store_float64_arrays_from_lists_tensors_and_arrays():
    pm = PolygonMasks(
        [
            [[0, 0, 1, 0, 1, 1]],
            [torch.tensor([0.0, 0, 2, 0, 2, 2]), np.array([5, 5, 6, 5, 6, 6], dtype=np.int32)],
        ]
    )
    for polygons in pm.polygons:
        for p in polygons:
            assert isinstance(p, np.ndarray) and p.dtype == np.float64 and p.ndim == 1


def test_polygon_masks_too_few_points_names_instance_and_polygon():
    with pytest.raises(ValueError, match="instance 1, polygon 0 has 4 coordinates"):
        PolygonMasks([[SQUARE], [[0, 0, 1, 1]]])


def test_polygon_masks_odd_coordinates_names_instance_and_polygon():
    with pytest.raises(ValueError, match="instance 0, polygon 1 has 7 coordinates"):
        PolygonMasks([[SQUARE, [0, 0, 1, 0, 1, 1, 2]]])


def test_polygon_masks_wrong_nesting_raises_type_error():
    with pytest.raises(TypeError, match="expected a list"):
        PolygonMasks(np.zeros((1, 6)))
    with pytest.raises(TypeError, match="instance 0 must be a list of polygons"):
        PolygonMasks([SQUARE])


def test_polygon_masks_device_and_to_are_cpu_no_ops():
    pm = PolygonMasks([[SQUARE]])
    assert pm.device == torch.device("cpu")
    assert pm.to("cpu") is pm


def test_polygon_masks_get_bounding_boxes():
    pm = PolygonMasks([[SQUARE, TRIANGLE + 10.0], [TRIANGLE]])
    # instance 0: x in [1, 14], y in [1, 13] (triangle shifted by 10: x 10..14, y 10..13)
    # instance 1: x in [0, 4], y in [0, 3]
    torch.testing.assert_close(
        pm.get_bounding_boxes().tensor, torch.tensor([[1.0, 1, 14, 13], [0, 0, 4, 3]])
    )
    assert PolygonMasks([]).get_bounding_boxes().tensor.shape == (0, 4)


def test_polygon_masks_nonempty():
    pm = PolygonMasks([[SQUARE], [], [TRIANGLE]])
    assert pm.nonempty().tolist() == [True, False, True]
    assert pm.nonempty().dtype == torch.bool


def test_polygon_masks_getitem_variants():
    pm = PolygonMasks([[SQUARE], [TRIANGLE], [SQUARE + 1]])

    def firsts(m):
        return [float(p[0][0]) for p in m.polygons]

    assert firsts(pm[1]) == [0.0] and len(pm[1]) == 1
    assert firsts(pm[1:]) == [0.0, 2.0]
    assert firsts(pm[[2, 0]]) == [2.0, 1.0]
    assert firsts(pm[torch.tensor([True, False, True])]) == [1.0, 2.0]
    assert firsts(pm[torch.tensor([2, 1])]) == [2.0, 0.0]
    assert firsts(pm[torch.tensor([0], dtype=torch.int32)]) == [1.0]
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):
        pm[torch.tensor([0.0])]
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        pm[torch.tensor([True, False])]


def test_polygon_masks_len_iter_repr():
    pm = PolygonMasks([[SQUARE], [TRIANGLE, SQUARE]])
    assert len(pm) == 2
    assert [len(p) for p in pm] == [1, 2]
    assert repr(pm) == "PolygonMasks(num_instances=2)"


def test_polygon_masks_area_sums_polygons():
    pm = PolygonMasks([[SQUARE, TRIANGLE], [TRIANGLE], []])
    # 16 + 6, 6, no polygon -> 0
    torch.testing.assert_close(pm.area(), torch.tensor([22.0, 6.0, 0.0], dtype=torch.float64))


def test_polygon_masks_crop_and_resize():
    pm = PolygonMasks([[np.array([2.0, 2, 6, 2, 6, 6, 2, 6])], [SQUARE]])
    boxes = torch.tensor([[2.0, 2, 6, 6], [1, 1, 9, 5]])
    out = pm.crop_and_resize(boxes, 4)
    assert out.shape == (2, 4, 4) and out.dtype == torch.bool
    assert out[0].all()  # polygon equal to its box
    # box 2: x in [1, 9] (8 wide -> 4 cells of 2), square x in [1, 5] -> columns 0..1
    assert out[1][:, :2].all() and not out[1][:, 2:].any()


def test_polygon_masks_crop_and_resize_empty_and_mismatch():
    out = PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 5)
    assert out.shape == (0, 5, 5) and out.dtype == torch.bool
    with pytest.raises(ValueError, match="got 0 boxes for 1 masks"):
        PolygonMasks([[SQUARE]]).crop_and_resize(torch.zeros(0, 4), 5)


@pytest.mark.parametrize("device", DEVICES)
def test_polygon_masks_crop_and_resize_result_on_boxes_device(device):
    boxes = torch.tensor([[1.0, 1, 5, 5]], device=device)
    out = PolygonMasks([[SQUARE]]).crop_and_resize(boxes, 3)
    assert out.device.type == device and out.all()


def test_polygon_masks_cat():
    c = PolygonMasks.cat([PolygonMasks([[SQUARE]]), PolygonMasks([[TRIANGLE], []])])
    assert len(c) == 3 and c.nonempty().tolist() == [True, True, False]
    assert len(PolygonMasks.cat([])) == 0
    with pytest.raises(TypeError, match="element 0"):
        PolygonMasks.cat([[SQUARE]])


# ---------------------------------------------------------------- ROIMasks


def test_roi_masks_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, M, M\), got \(4, 4\)"):
        ROIMasks(torch.zeros(4, 4))


def test_roi_masks_len_getitem_repr():
    t = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    rm = ROIMasks(t)
    assert len(rm) == 3
    assert repr(rm) == "ROIMasks(num_instances=3)"
    torch.testing.assert_close(rm[1:].tensor, t[1:])
    torch.testing.assert_close(rm[torch.tensor([True, False, True])].tensor, t[[0, 2]])
    torch.testing.assert_close(rm[1].tensor, t[1:2])
    with pytest.raises(ValueError, match="gave shape"):
        rm[0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_roi_masks_to_and_device(device):
    assert ROIMasks(torch.zeros(1, 2, 2)).to(device).device.type == device


def test_roi_masks_to_bitmasks_pastes_into_box():
    # a 2 x 2 mask of ones over box (1, 1)-(3, 3) of a 5 x 5 image: pixel x samples mask
    # column u = (x + 0.5 - 1) * 2 / 2 - 0.5 = x - 1, which is inside [0, 1] for x = 1, 2 only
    # (at u = -1 or 2 the bilinear weight of the mask is 0).
    rm = ROIMasks(torch.ones(1, 2, 2))
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 1:3, 1:3] = True
    for boxes in (torch.tensor([[1.0, 1, 3, 3]]), Boxes(torch.tensor([[1.0, 1, 3, 3]]))):
        bm = rm.to_bitmasks(boxes, 5, 5)
        assert isinstance(bm, BitMasks)
        torch.testing.assert_close(bm.tensor, expected)


def test_roi_masks_to_bitmasks_threshold():
    rm = ROIMasks(torch.full((1, 2, 2), 0.4))
    box = torch.tensor([[1.0, 1, 3, 3]])
    assert not rm.to_bitmasks(box, 5, 5).tensor.any()  # 0.4 < 0.5
    assert rm.to_bitmasks(box, 5, 5, threshold=0.3).tensor.sum() == 4  # the 2 x 2 box pixels


def test_roi_masks_to_bitmasks_empty_and_mismatch():
    bm = ROIMasks(torch.zeros(0, 4, 4)).to_bitmasks(torch.zeros(0, 4), 5, 6)
    assert bm.tensor.shape == (0, 5, 6)
    with pytest.raises(ValueError, match="got 2 boxes for 1 masks"):
        ROIMasks(torch.zeros(1, 4, 4)).to_bitmasks(torch.zeros(2, 4), 5, 6)
