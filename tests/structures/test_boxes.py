import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.structures.boxes import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------- BoxMode.convert


def test_convert_xywh_to_xyxy_list_returns_list():
    # x1 = 10 + 5 = 15, y1 = 20 + 7 = 27
    out = BoxMode.convert([10, 20, 5, 7], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert out == [10, 20, 15, 27]
    assert type(out) is list


def test_convert_xyxy_to_xywh_tuple_returns_tuple():
    # w = 15 - 10 = 5, h = 27 - 20 = 7
    out = BoxMode.convert((10.0, 20.0, 15.0, 27.0), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert out == (10.0, 20.0, 5.0, 7.0)
    assert type(out) is tuple


def test_convert_numpy_keeps_type_and_dtype_and_does_not_modify_input():
    arr = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]], dtype=np.float64)
    before = arr.copy()
    out = BoxMode.convert(arr, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    # (1, 2, 1 + 3, 2 + 4) and (0, 0, 0 + 1, 0 + 1)
    np.testing.assert_array_equal(out, [[1, 2, 4, 6], [0, 0, 1, 1]])
    np.testing.assert_array_equal(arr, before)


@pytest.mark.parametrize("device", DEVICES)
def test_convert_tensor_keeps_type_and_does_not_modify_input(device):
    t = torch.tensor([[1.0, 2.0, 4.0, 6.0]], device=device)
    out = BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 3.0, 4.0]], device=device))
    torch.testing.assert_close(t, torch.tensor([[1.0, 2.0, 4.0, 6.0]], device=device))


def test_convert_same_mode_returns_input_object():
    box = [1, 2, 3, 4]
    assert BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYXY_ABS) is box


def test_convert_rotated_by_90_degrees_swaps_width_and_height():
    # centre (10, 20), w=4, h=2, rotated 90 deg: bounding box is 2 wide, 4 high
    # -> x in [10 - 1, 10 + 1], y in [20 - 2, 20 + 2]
    out = BoxMode.convert(
        torch.tensor([[10.0, 20.0, 4.0, 2.0, 90.0]]), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS
    )
    torch.testing.assert_close(out, torch.tensor([[9.0, 18.0, 11.0, 22.0]]))


def test_convert_rotated_by_45_degrees_gives_enclosing_square():
    # a 2 x 2 square turned 45 deg: |cos| * 2 + |sin| * 2 = 2 * sqrt(2) on each side.
    # A list goes through torch.tensor (float32, as in Detectron2), so the result is
    # sqrt(2) rounded to float32.
    half = float(np.float32(math.sqrt(2.0)))
    out = BoxMode.convert([0.0, 0.0, 2.0, 2.0, 45.0], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    assert out == [-half, -half, half, half]
    # float64 arrays keep float64 precision
    arr = BoxMode.convert(np.array([[0.0, 0.0, 2.0, 2.0, 45.0]]), BoxMode.XYWHA_ABS, 0)
    np.testing.assert_allclose(arr, [[-math.sqrt(2), -math.sqrt(2), math.sqrt(2), math.sqrt(2)]])


def test_convert_xyxy_to_xywha_gives_centre_size_and_zero_angle():
    # box (2, 4)-(6, 10): centre (4, 7), w 4, h 6
    out = BoxMode.convert(np.array([[2.0, 4.0, 6.0, 10.0]]), BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    np.testing.assert_allclose(out, [[4.0, 7.0, 4.0, 6.0, 0.0]])


def test_convert_xywh_to_xywha_and_back():
    # XYWH (2, 4, 4, 6) -> centre (2 + 2, 4 + 3) = (4, 7)
    out = BoxMode.convert([2.0, 4.0, 4.0, 6.0], BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
    assert out == [4.0, 7.0, 4.0, 6.0, 0.0]
    back = BoxMode.convert(out, BoxMode.XYWHA_ABS, BoxMode.XYWH_ABS)
    assert back == pytest.approx([2.0, 4.0, 4.0, 6.0])


def test_convert_empty_arrays_keep_trailing_shape():
    out = BoxMode.convert(torch.zeros(0, 4), BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    assert out.shape == (0, 5)
    out = BoxMode.convert(np.zeros((0, 5)), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    assert out.shape == (0, 4)


@pytest.mark.parametrize("mode", [BoxMode.XYXY_REL, BoxMode.XYWH_REL])
def test_convert_relative_modes_raise(mode):
    with pytest.raises(ValueError, match="relative modes are not supported"):
        BoxMode.convert([0, 0, 1, 1], mode, BoxMode.XYXY_ABS)
    with pytest.raises(ValueError, match="relative modes are not supported"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_ABS, mode)


def test_convert_wrong_lengths_raise():
    with pytest.raises(ValueError, match="4 or 5 numbers, got 3"):
        BoxMode.convert([0, 0, 1], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, 5\), got \(2, 3\)"):
        BoxMode.convert(torch.zeros(2, 3), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    with pytest.raises(ValueError, match="XYWHA_ABS boxes must have 5 numbers"):
        BoxMode.convert(torch.zeros(2, 4), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    with pytest.raises(TypeError, match="got str"):
        BoxMode.convert("0 0 1 1", BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


_coord = st.floats(min_value=-1000, max_value=1000, allow_nan=False, width=32)
_size = st.floats(min_value=0, max_value=1000, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(x=_coord, y=_coord, w=_size, h=_size)
def test_convert_xyxy_xywh_round_trip(x, y, w, h):
    xywh = torch.tensor([[x, y, w, h]], dtype=torch.float64)
    xyxy = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    back = BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    torch.testing.assert_close(back, xywh)


@settings(max_examples=80, deadline=None)
@given(x=_coord, y=_coord, w=_size, h=_size)
def test_convert_xyxy_xywha_xyxy_round_trip(x, y, w, h):
    xyxy = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64)
    rotated = BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    assert rotated[0, 4] == 0.0
    back = BoxMode.convert(rotated, BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    torch.testing.assert_close(back, xyxy)


# ---------------------------------------------------------------- Boxes


def test_boxes_converts_to_float32_and_accepts_lists():
    b = Boxes([[0, 0, 1, 2]])
    assert b.tensor.dtype == torch.float32 and b.tensor.shape == (1, 4)
    b = Boxes(np.array([[0, 0, 1, 2]], dtype=np.int64))
    assert b.tensor.dtype == torch.float32


def test_boxes_empty_tensor_becomes_0_by_4():
    assert Boxes(torch.empty(0)).tensor.shape == (0, 4)
    assert Boxes([]).tensor.shape == (0, 4)
    assert len(Boxes(torch.zeros(0, 4))) == 0


def test_boxes_wrong_shape_raises_with_shape():
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(2, 5\)"):
        Boxes(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"got \(4,\)"):
        Boxes(torch.zeros(4))


def test_boxes_nan_raises_naming_first_bad_row():
    t = torch.tensor([[0.0, 0, 1, 1], [0, float("nan"), 1, 1], [float("nan"), 0, 1, 1]])
    with pytest.raises(ValueError, match=r"box 1 contains NaN.*2 of 3 boxes"):
        Boxes(t)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_boxes_nan_check_skipped_while_tracing():
    def build(t):
        return Boxes(t).tensor * 1

    nan_box = torch.tensor([[float("nan"), 0.0, 1.0, 1.0]])
    # check_trace=False: the sanity check re-runs `build` eagerly, where the check runs
    traced = torch.jit.trace(build, nan_box, check_trace=False)  # raises if the check ran
    assert torch.isnan(traced(nan_box)[0, 0])


def test_boxes_nan_check_skipped_while_compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    b = Boxes(torch.tensor([[float("nan"), 0.0, 1.0, 1.0]]))
    assert torch.isnan(b.tensor[0, 0])


def test_boxes_derivations_do_not_revalidate():
    b = Boxes(torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3]]))
    b.tensor[0, 0] = float("nan")  # corrupted after construction
    # indexing, clone and cat pass the tensor through without a NaN scan
    assert torch.isnan(b[0].tensor[0, 0])
    assert torch.isnan(b.clone().tensor[0, 0])
    assert torch.isnan(Boxes.cat([b, b]).tensor[2, 0])
    assert torch.isnan(b.to("cpu").tensor[0, 0])


def test_boxes_clone_does_not_share_storage():
    b = Boxes(torch.tensor([[0.0, 0, 1, 1]]))
    c = b.clone()
    c.tensor[0, 0] = 5
    assert b.tensor[0, 0] == 0


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_to_and_device(device):
    b = Boxes(torch.tensor([[0.0, 0, 1, 1]])).to(device)
    assert b.device.type == device
    assert b.tensor.dtype == torch.float32


def test_boxes_area():
    b = Boxes(torch.tensor([[0.0, 0, 2, 3], [1, 1, 1, 5], [0, 0, 0.5, 0.5]]))
    # 2 * 3 = 6; width 0 -> 0; 0.5 * 0.5 = 0.25
    torch.testing.assert_close(b.area(), torch.tensor([6.0, 0.0, 0.25]))
    assert Boxes(torch.zeros(0, 4)).area().shape == (0,)


def test_boxes_clip_in_place_to_height_width():
    b = Boxes(torch.tensor([[-5.0, -2, 50, 8], [3, 4, 5, 6]]))
    b.clip((10, 20))  # height 10, width 20
    # x clamped to [0, 20], y to [0, 10]
    torch.testing.assert_close(b.tensor, torch.tensor([[0.0, 0, 20, 8], [3, 4, 5, 6]]))


def test_boxes_clip_rejects_infinite_boxes():
    b = Boxes(torch.tensor([[0.0, 0, 1, 1], [0, 0, float("inf"), 1]]))
    with pytest.raises(ValueError, match="box 1 is not finite"):
        b.clip((10, 10))


def test_boxes_clip_empty():
    b = Boxes(torch.zeros(0, 4))
    b.clip((5, 5))
    assert b.tensor.shape == (0, 4)


def test_boxes_nonempty_with_threshold():
    b = Boxes(torch.tensor([[0.0, 0, 2, 2], [0, 0, 0, 2], [0, 0, 1, 1], [0, 0, 3, 1.5]]))
    # sides (2,2) (0,2) (1,1) (3,1.5)
    assert b.nonempty().tolist() == [True, False, True, True]
    # threshold 1: both sides must exceed 1 -> (1,1) fails
    assert b.nonempty(threshold=1.0).tolist() == [True, False, False, True]


def test_boxes_inside_box_with_boundary_threshold():
    b = Boxes(torch.tensor([[0.0, 0, 9, 9], [-1, 0, 5, 5], [0, 0, 10, 5], [2, 2, 4, 4]]))
    # image 10 x 10: x1 < 10 is required (strict), x0 >= 0
    assert b.inside_box((10, 10)).tolist() == [True, False, False, True]
    # threshold 1: x0 >= -1 and x1 < 11
    assert b.inside_box((10, 10), boundary_threshold=1).tolist() == [True, True, True, True]


def test_boxes_get_centers():
    b = Boxes(torch.tensor([[0.0, 0, 2, 4], [1, 1, 2, 2]]))
    torch.testing.assert_close(b.get_centers(), torch.tensor([[1.0, 2.0], [1.5, 1.5]]))


def test_boxes_scale_in_place():
    b = Boxes(torch.tensor([[1.0, 2, 3, 4]]))
    b.scale(2.0, 0.5)  # x * 2, y * 0.5
    torch.testing.assert_close(b.tensor, torch.tensor([[2.0, 1.0, 6.0, 2.0]]))


def test_boxes_cat():
    a = Boxes(torch.tensor([[0.0, 0, 1, 1]]))
    b = Boxes(torch.tensor([[1.0, 1, 2, 2], [2, 2, 3, 3]]))
    c = Boxes.cat([a, b])
    assert isinstance(c, Boxes) and len(c) == 3
    torch.testing.assert_close(c.tensor[1:], b.tensor)


def test_boxes_cat_empty_list_gives_empty_boxes():
    c = Boxes.cat([])
    assert isinstance(c, Boxes) and c.tensor.shape == (0, 4)


def test_boxes_cat_rejects_non_boxes():
    with pytest.raises(TypeError, match="element 1 is a Tensor"):
        Boxes.cat([Boxes(torch.zeros(1, 4)), torch.zeros(1, 4)])


def test_boxes_getitem_int_slice_mask_and_index():
    t = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]])
    b = Boxes(t)
    assert b[1].tensor.shape == (1, 4)  # Detectron2: an int gives a 1-row Boxes
    torch.testing.assert_close(b[1].tensor, t[1:2])
    torch.testing.assert_close(b[-1].tensor, t[2:3])
    torch.testing.assert_close(b[1:].tensor, t[1:])
    torch.testing.assert_close(b[torch.tensor([True, False, True])].tensor, t[[0, 2]])
    torch.testing.assert_close(b[torch.tensor([2, 0])].tensor, t[[2, 0]])
    assert len(b[torch.zeros(3, dtype=torch.bool)]) == 0


def test_boxes_getitem_that_is_not_a_matrix_raises():
    b = Boxes(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"gave shape \(\)"):
        b[0, 0]


def test_boxes_len_iter_repr():
    t = torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]])
    b = Boxes(t)
    assert len(b) == 2
    rows = list(b)
    assert len(rows) == 2 and rows[0].shape == (4,)
    torch.testing.assert_close(rows[1], t[1])
    assert repr(b).startswith("Boxes(tensor(")


# ---------------------------------------------------------------- pairwise functions


def test_pairwise_intersection_hand_computed():
    a = Boxes(torch.tensor([[0.0, 0, 2, 2]]))
    b = Boxes(torch.tensor([[1.0, 1, 3, 3], [0, 0, 1, 4], [5, 5, 6, 6]]))
    # overlaps: [1,2]x[1,2] = 1; [0,1]x[0,2] = 2; none = 0
    torch.testing.assert_close(pairwise_intersection(a, b), torch.tensor([[1.0, 2.0, 0.0]]))


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_iou_of_overlapping_squares(device):
    a = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device))
    b = Boxes(torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]], device=device))
    # shared unit square: 1 / (4 + 4 - 1); the far box does not touch
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 7, 0.0]], device=device))


def test_pairwise_iou_empty_boxes_give_zero_not_nan():
    a = Boxes(torch.tensor([[1.0, 1, 1, 1]]))  # zero area
    iou = pairwise_iou(a, a)
    torch.testing.assert_close(iou, torch.zeros(1, 1))


def test_pairwise_iou_with_no_boxes_keeps_shape():
    a = Boxes(torch.zeros(0, 4))
    b = Boxes(torch.tensor([[0.0, 0, 1, 1]]))
    assert pairwise_iou(a, b).shape == (0, 1)
    assert pairwise_iou(b, a).shape == (1, 0)


def test_pairwise_iou_matches_torchvision():
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 10
    wh = torch.rand(6, 2, generator=g) * 5 + 0.1
    t = torch.cat([xy, xy + wh], dim=1)
    torch.testing.assert_close(pairwise_iou(Boxes(t[:3]), Boxes(t[3:])), box_iou(t[:3], t[3:]))


def test_pairwise_ioa_divides_by_second_box_area():
    a = Boxes(torch.tensor([[0.0, 0, 2, 2]]))
    b = Boxes(torch.tensor([[1.0, 1, 3, 3], [0, 0, 1, 1], [4, 4, 5, 5]]))
    # 1 / 4; 1 / 1 (b inside a); no overlap 0
    torch.testing.assert_close(pairwise_ioa(a, b), torch.tensor([[0.25, 1.0, 0.0]]))


def test_pairwise_point_box_distance():
    points = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    boxes = Boxes(torch.tensor([[0.0, 0, 4, 4]]))
    out = pairwise_point_box_distance(points, boxes)
    assert out.shape == (2, 1, 4)
    # (1-0, 2-0, 4-1, 4-2) and (5-0, 5-0, 4-5, 4-5)
    torch.testing.assert_close(out[:, 0], torch.tensor([[1.0, 2, 3, 2], [5, 5, -1, -1]]))


def test_pairwise_point_box_distance_empty_and_bad_points():
    assert pairwise_point_box_distance(torch.zeros(0, 2), Boxes(torch.zeros(3, 4))).shape == (
        0,
        3,
        4,
    )
    with pytest.raises(ValueError, match=r"points must be \(N, 2\), got \(3, 3\)"):
        pairwise_point_box_distance(torch.zeros(3, 3), Boxes(torch.zeros(1, 4)))


def test_matched_pairwise_iou():
    a = Boxes(torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]]))
    b = Boxes(torch.tensor([[1.0, 1, 3, 3], [0, 0, 1, 1]]))
    # 1 / 7; identical -> 1
    torch.testing.assert_close(matched_pairwise_iou(a, b), torch.tensor([1 / 7, 1.0]))
    assert matched_pairwise_iou(Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))).shape == (0,)


def test_matched_pairwise_iou_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="got 2 and 1"):
        matched_pairwise_iou(Boxes(torch.zeros(2, 4)), Boxes(torch.zeros(1, 4)))


_box = st.tuples(
    st.floats(-100, 100, width=32),
    st.floats(-100, 100, width=32),
    st.floats(0, 100, width=32),
    st.floats(0, 100, width=32),
)


def _to_boxes(raw):
    return Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in raw]))


@settings(max_examples=80, deadline=None)
@given(st.lists(_box, min_size=1, max_size=5), st.lists(_box, min_size=1, max_size=5))
def test_pairwise_iou_is_symmetric_and_in_unit_interval(raw1, raw2):
    a, b = _to_boxes(raw1), _to_boxes(raw2)
    iou = pairwise_iou(a, b)
    assert bool((iou >= 0).all()) and bool((iou <= 1).all())
    torch.testing.assert_close(iou, pairwise_iou(b, a).T)


@settings(max_examples=80, deadline=None)
@given(st.lists(_box, min_size=1, max_size=5))
def test_pairwise_iou_of_box_with_itself_is_one(raw):
    b = _to_boxes(raw)
    keep = b.area() > 0  # degenerate boxes have IoU 0 by definition
    b = b[keep]
    diag = pairwise_iou(b, b).diagonal()
    torch.testing.assert_close(diag, torch.ones(len(b)))
