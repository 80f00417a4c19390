import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from heron.structures import rotated_boxes as rotated_boxes_module
from heron.structures.boxes import Boxes
from heron.structures.rotated_boxes import RotatedBoxes, pairwise_iou, pairwise_iou_rotated

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SQRT2 = math.sqrt(2.0)


def _iou(box1, box2, dtype=torch.float64):
    """IoU of two single boxes given as 5-element lists."""
    return pairwise_iou_rotated(
        torch.tensor([box1], dtype=dtype), torch.tensor([box2], dtype=dtype)
    )[0, 0].item()


# --- the container ----------------------------------------------------------------------


def test_constructor_converts_lists_to_float32_and_keeps_device():
    boxes = RotatedBoxes([[1, 2, 3, 4, 5]])
    assert boxes.tensor.dtype == torch.float32
    assert boxes.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0]]
    assert boxes.device == torch.device("cpu")
    assert isinstance(boxes, Boxes)  # a Boxes subclass, as in Detectron2


def test_empty_input_becomes_zero_by_five():
    assert RotatedBoxes(torch.empty(0)).tensor.shape == (0, 5)
    assert RotatedBoxes([]).tensor.shape == (0, 5)
    assert len(RotatedBoxes(torch.zeros(0, 5))) == 0


def test_constructor_names_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 5\), got \(3, 4\)"):
        RotatedBoxes(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        RotatedBoxes(torch.zeros(5))


def test_constructor_names_the_first_row_with_nan():
    tensor = torch.zeros(3, 5)
    tensor[1, 4] = float("nan")
    tensor[2, 0] = float("nan")
    with pytest.raises(ValueError, match="box 1 contains NaN"):
        RotatedBoxes(tensor)


def test_derived_boxes_skip_the_nan_check():
    boxes = RotatedBoxes(torch.zeros(2, 5))
    boxes.tensor[0, 0] = float("nan")  # corrupted after validation
    assert len(boxes[0:1]) == 1
    assert len(boxes.clone()) == 2
    assert len(RotatedBoxes.cat([boxes, boxes])) == 4


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_skips_the_nan_check():
    nan_boxes = torch.full((1, 5), float("nan"))
    traced = torch.jit.trace(lambda t: RotatedBoxes(t).area(), torch.ones(1, 5))
    assert torch.isnan(traced(nan_boxes)).all()


def test_area_is_width_times_height():
    boxes = RotatedBoxes([[0, 0, 2, 3, 30], [5, 5, 0.5, 4, -90]])
    torch.testing.assert_close(boxes.area(), torch.tensor([6.0, 2.0]))


def test_normalize_angles_maps_into_minus_180_to_180():
    boxes = RotatedBoxes([[0, 0, 1, 1, a] for a in (180, -180, 190, -190, 540, 359, 0)])
    boxes.normalize_angles()
    # (a + 180) mod 360 - 180: 180 -> -180, 190 -> -170, -190 -> 170, 540 -> -180, 359 -> -1
    torch.testing.assert_close(
        boxes.tensor[:, 4], torch.tensor([-180.0, -180, -170, 170, -180, -1, 0])
    )


def test_clip_only_clips_nearly_horizontal_boxes():
    boxes = RotatedBoxes(
        [
            [18, 5, 8, 4, 0],  # x from 14 to 22: clipped to 14..20
            [-1, 5, 4, 12, 360.5],  # normalizes to 0.5 <= 1: x -3..1 -> 0..1, y -1..11 -> 0..10
            [18, 5, 8, 4, 30],  # tilted: left alone
        ]
    )
    boxes.clip((10, 20))
    expected = torch.tensor([[17.0, 5, 6, 4, 0], [0.5, 5, 1, 10, 0.5], [18, 5, 8, 4, 30]])
    torch.testing.assert_close(boxes.tensor, expected)


def test_clip_angle_threshold_decides_which_boxes_are_clipped():
    boxes = RotatedBoxes([[18, 5, 8, 4, 5]])
    boxes.clip((10, 20), clip_angle_threshold=10.0)
    torch.testing.assert_close(boxes.tensor, torch.tensor([[17.0, 5, 6, 4, 5]]))


def test_nonempty_requires_both_sides_above_threshold():
    boxes = RotatedBoxes([[0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0.5, 45]])
    assert boxes.nonempty().tolist() == [True, False, True]
    assert boxes.nonempty(threshold=0.5).tolist() == [True, False, False]


def test_inside_box_uses_the_rotated_hull():
    boxes = RotatedBoxes(
        [
            [5, 5, 4, 2, 90],  # upright: hull x 4..6, y 3..7
            [9, 5, 4, 2, 0],  # x reaches 11 > 10
            [8, 5, 4, 2, 0],  # x reaches exactly 10: the far side is strict
            [5, 5, 4, 4, 45],  # hull half-extent 2 * sqrt(2) = 2.83: x 2.17..7.83
        ]
    )
    assert boxes.inside_box((10, 10)).tolist() == [True, False, False, True]
    # with 2 px of slack x1 = 11 < 12 passes
    assert boxes.inside_box((10, 10), boundary_threshold=2).tolist() == [True, True, True, True]


def test_get_centers():
    boxes = RotatedBoxes([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    torch.testing.assert_close(boxes.get_centers(), torch.tensor([[1.0, 2], [6, 7]]))


def test_scale_at_90_degrees_swaps_the_factors_of_width_and_height():
    boxes = RotatedBoxes([[2, 3, 4, 2, 90]])
    boxes.scale(2.0, 3.0)
    # centre (4, 9); the width lies along y: w = 4 * 3; the height along x: h = 2 * 2;
    # angle atan2(2 * sin 90, 3 * cos 90) = atan2(2, 0) = 90
    torch.testing.assert_close(boxes.tensor, torch.tensor([[4.0, 9, 12, 4, 90]]))


def test_scale_at_45_degrees_uses_detectron2_formulas():
    boxes = RotatedBoxes([[1, 1, 2, 2, 45]])
    boxes.scale(2.0, 1.0)
    # c = s = 1/sqrt2: w = 2 * sqrt(4/2 + 1/2), h = 2 * sqrt(4/2 + 1/2),
    # angle = atan2(2 s, 1 c) = atan2(2, 1)
    side = 2 * math.sqrt(2.5)
    expected = torch.tensor([[2.0, 1, side, side, math.degrees(math.atan2(2, 1))]])
    torch.testing.assert_close(boxes.tensor, expected)


def test_scale_with_equal_factors_keeps_the_angle():
    boxes = RotatedBoxes([[1, 2, 3, 4, -30]])
    boxes.scale(2.0, 2.0)
    torch.testing.assert_close(boxes.tensor, torch.tensor([[2.0, 4, 6, 8, -30]]))


def test_indexing_returns_rotated_boxes():
    boxes = RotatedBoxes([[0, 0, 1, 1, 0], [1, 1, 2, 2, 10], [2, 2, 3, 3, 20]])
    one = boxes[1]
    assert isinstance(one, RotatedBoxes)
    assert one.tensor.shape == (1, 5)
    assert boxes[1:].tensor[:, 4].tolist() == [10.0, 20.0]
    assert boxes[torch.tensor([True, False, True])].tensor[:, 4].tolist() == [0.0, 20.0]
    assert boxes[torch.tensor([2, 0])].tensor[:, 4].tolist() == [20.0, 0.0]


def test_indexing_that_drops_a_dimension_is_an_error():
    boxes = RotatedBoxes([[0, 0, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"not \(K, 5\)"):
        boxes[0, 1]


def test_cat_len_iter_repr_clone_to():
    a = RotatedBoxes([[0, 0, 1, 1, 0]])
    b = RotatedBoxes([[1, 1, 2, 2, 30], [2, 2, 3, 3, 60]])
    joined = RotatedBoxes.cat([a, b])
    assert len(joined) == 3
    assert [box.shape for box in joined] == [(5,), (5,), (5,)]
    assert repr(a).startswith("RotatedBoxes(tensor(")
    assert RotatedBoxes.cat([]).tensor.shape == (0, 5)
    copy = joined.clone()
    copy.tensor[0, 0] = 9.0
    assert joined.tensor[0, 0] == 0.0
    assert joined.to("cpu").device == torch.device("cpu")


def test_cat_rejects_other_types():
    with pytest.raises(TypeError, match="element 1 is a Boxes"):
        RotatedBoxes.cat([RotatedBoxes([[0, 0, 1, 1, 0]]), Boxes([[0, 0, 1, 1]])])


# --- IoU: hand-computed cases -------------------------------------------------------------


def test_identical_boxes_have_iou_one():
    assert _iou([3, 4, 5, 2, 33], [3, 4, 5, 2, 33]) == pytest.approx(1.0, abs=1e-12)


def test_square_and_its_90_degree_copy_have_iou_one():
    assert _iou([0, 0, 2, 2, 0], [0, 0, 2, 2, 90]) == pytest.approx(1.0, abs=1e-12)


def test_unit_squares_offset_by_half_have_iou_one_third():
    # overlap 0.5 x 1 = 0.5; union 1 + 1 - 0.5 = 1.5
    assert _iou([0, 0, 1, 1, 0], [0.5, 0, 1, 1, 0]) == pytest.approx(1 / 3, abs=1e-12)


def test_square_and_its_45_degree_copy_overlap_in_a_regular_octagon():
    # Side-2 square vs itself rotated 45 degrees: the octagon is the square minus four
    # corner triangles. The rotated square's edges sit at distance 1 from the centre, so
    # each cut corner is an isosceles right triangle with legs 2 - sqrt2; the four have area
    # 2 (2 - sqrt2)^2 = 12 - 8 sqrt2, leaving 4 - (12 - 8 sqrt2) = 8 (sqrt2 - 1).
    octagon = 8 * (SQRT2 - 1)
    expected = octagon / (8 - octagon)
    assert _iou([0, 0, 2, 2, 0], [0, 0, 2, 2, 45]) == pytest.approx(expected, abs=1e-12)


def test_disjoint_and_touching_boxes_have_iou_zero():
    assert _iou([0, 0, 2, 2, 0], [10, 0, 2, 2, 30]) == 0.0
    assert _iou([0, 0, 2, 2, 0], [2, 0, 2, 2, 0]) == pytest.approx(0.0, abs=1e-12)


def test_box_inside_another_gives_the_area_ratio():
    # a 1 x 2 box tilted by 30 degrees sits well inside a 10 x 10 square
    assert _iou([0, 0, 10, 10, 0], [1, 1, 1, 2, 30]) == pytest.approx(2 / 100, abs=1e-12)


def test_angle_sense_matches_detectron2():
    # Box B: a 6 sqrt2 x sqrt2 strip at 45 degrees, centre (3, -3). In Detectron2's sense its
    # width axis is (cos 45, -sin 45), so it runs from (0, 0) to (6, -6), covering
    # {|x + y| <= 1, x >= y} near the origin. Inside the square [-1, 1]^2 the band
    # |x + y| <= 1 has area 4 - 2 * 0.5 = 3, and x >= y is half of it: 1.5.
    # IoU = 1.5 / (4 + 12 - 1.5) = 3 / 29. (With the opposite sense it would miss the square.)
    strip = [3, -3, 6 * SQRT2, SQRT2, 45]
    assert _iou([0, 0, 2, 2, 0], strip) == pytest.approx(3 / 29, abs=1e-12)


def test_degenerate_boxes_give_zero_not_nan():
    boxes = torch.tensor([[0.0, 0, 0, 2, 0], [0, 0, 2, 0, 30], [0, 0, 0, 0, 0]])
    other = torch.tensor([[0.0, 0, 2, 2, 0]])
    ious = pairwise_iou_rotated(boxes, other)
    torch.testing.assert_close(ious, torch.zeros(3, 1))
    torch.testing.assert_close(pairwise_iou_rotated(boxes, boxes), torch.zeros(3, 3))


def test_empty_inputs_keep_the_other_dimension():
    some = torch.tensor([[0.0, 0, 1, 1, 0]] * 3)
    assert pairwise_iou_rotated(torch.zeros(0, 5), some).shape == (0, 3)
    assert pairwise_iou_rotated(some, torch.zeros(0, 5)).shape == (3, 0)


def test_pairwise_iou_rotated_names_the_bad_shape():
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(K, 5\), got \(2, 4\)"):
        pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_result_has_the_input_dtype(dtype):
    boxes = torch.tensor([[0, 0, 1, 1, 0], [0.5, 0, 1, 1, 0]], dtype=dtype)
    ious = pairwise_iou_rotated(boxes, boxes)
    assert ious.dtype == dtype
    torch.testing.assert_close(ious, torch.tensor([[1, 1 / 3], [1 / 3, 1]], dtype=dtype))


def test_pairwise_iou_takes_rotated_boxes():
    a = RotatedBoxes([[0, 0, 1, 1, 0]])
    b = RotatedBoxes([[0.5, 0, 1, 1, 0], [0, 0, 1, 1, 90]])
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 3, 1.0]]))


# --- IoU: agreement with the axis-aligned reference ---------------------------------------


def _random_xyxy(n, generator):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 30
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 15 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def _xyxy_to_rotated(xyxy, angle=0.0, swap=False):
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    wh = xyxy[:, 2:] - xyxy[:, :2]
    if swap:
        wh = wh.flip(1)
    return torch.cat([centre, wh, torch.full_like(centre[:, :1], angle)], dim=1)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torchvision_box_iou_at_angle_zero(device):
    g = torch.Generator().manual_seed(0)
    a, b = _random_xyxy(40, g).to(device), _random_xyxy(30, g).to(device)
    expected = box_iou(a, b)
    assert (expected > 0).sum() > 100  # many overlapping pairs are exercised
    torch.testing.assert_close(
        pairwise_iou_rotated(_xyxy_to_rotated(a), _xyxy_to_rotated(b)), expected
    )


def test_matches_box_iou_for_upright_and_upside_down_boxes():
    g = torch.Generator().manual_seed(1)
    a, b = _random_xyxy(25, g), _random_xyxy(25, g)
    expected = box_iou(a, b)
    # at 90 degrees the width runs along y, so (w, h) swap; 180 degrees is the same box
    ra = _xyxy_to_rotated(a, angle=90.0, swap=True)
    rb = _xyxy_to_rotated(b, angle=-180.0)
    torch.testing.assert_close(pairwise_iou_rotated(ra, rb), expected)


def test_float32_input_matches_torchvision_in_float32():
    g = torch.Generator().manual_seed(2)
    a, b = _random_xyxy(20, g).float(), _random_xyxy(20, g).float()
    ious = pairwise_iou_rotated(_xyxy_to_rotated(a), _xyxy_to_rotated(b))
    torch.testing.assert_close(ious, box_iou(a, b))


def test_chunked_computation_matches_a_single_chunk(monkeypatch):
    g = torch.Generator().manual_seed(3)
    boxes = torch.cat(
        [
            torch.rand(30, 2, generator=g, dtype=torch.float64) * 20,
            torch.rand(30, 2, generator=g, dtype=torch.float64) * 8 + 1,
            torch.rand(30, 1, generator=g, dtype=torch.float64) * 360 - 180,
        ],
        dim=1,
    )
    whole = pairwise_iou_rotated(boxes, boxes)
    monkeypatch.setattr(rotated_boxes_module, "_PAIR_CHUNK", 7)
    monkeypatch.setattr(rotated_boxes_module, "_SCREEN_CHUNK", 50)
    torch.testing.assert_close(pairwise_iou_rotated(boxes, boxes), whole, rtol=0, atol=0)
    torch.testing.assert_close(torch.diagonal(whole), torch.ones(30, dtype=torch.float64))


# --- IoU: an independent reference ------------------------------------------------------


def _corner_list(box):
    cx, cy, w, h, a = box
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    return [
        (cx + u * w / 2 * c + v * h / 2 * s, cy - u * w / 2 * s + v * h / 2 * c)
        for u, v in ((-1, -1), (1, -1), (1, 1), (-1, 1))
    ]


def _shoelace(poly):
    n = len(poly)
    return (
        abs(
            sum(
                poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1]
                for i in range(n)
            )
        )
        / 2
    )


def _reference_iou(box1, box2):
    """Sutherland-Hodgman: clip box1's corners by box2's four edges, scalar Python."""
    clipper = _corner_list(box2)
    orientation = 1.0 if _signed_area(clipper) > 0 else -1.0
    polygon = _corner_list(box1)
    for i in range(4):
        (ax, ay), (bx, by) = clipper[i], clipper[(i + 1) % 4]

        def side(p, ax=ax, ay=ay, bx=bx, by=by):
            return orientation * ((bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax))

        clipped = []
        for j, p in enumerate(polygon):
            q = polygon[(j + 1) % len(polygon)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                clipped.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                clipped.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        polygon = clipped
        if not polygon:
            return 0.0
    inter = _shoelace(polygon) if len(polygon) >= 3 else 0.0
    return inter / (box1[2] * box1[3] + box2[2] * box2[3] - inter)


def _signed_area(poly):
    return sum(
        poly[i][0] * poly[(i + 1) % 4][1] - poly[(i + 1) % 4][0] * poly[i][1] for i in range(4)
    )


def test_matches_polygon_clipping_on_random_and_snapped_boxes():
    g = torch.Generator().manual_seed(4)
    n = 120
    free = torch.cat(
        [
            torch.rand(n, 2, generator=g, dtype=torch.float64) * 10 - 5,
            torch.rand(n, 2, generator=g, dtype=torch.float64) * 8 + 0.01,
            torch.rand(n, 1, generator=g, dtype=torch.float64) * 360 - 180,
        ],
        dim=1,
    )
    # half-integer centres and sides with angles in multiples of 45 degrees: shared edges,
    # coinciding corners and collinear sides
    snapped = torch.cat(
        [
            torch.randint(-3, 4, (n, 2), generator=g).double() / 2,
            torch.randint(1, 7, (n, 2), generator=g).double() / 2,
            torch.randint(-4, 4, (n, 1), generator=g).double() * 45,
        ],
        dim=1,
    )
    for boxes in (free, snapped):
        first, second = boxes[: n // 2], boxes[n // 2 :]
        ious = torch.diagonal(pairwise_iou_rotated(first, second))
        expected = [_reference_iou(a, b) for a, b in zip(first.tolist(), second.tolist())]
        assert sum(e > 0 for e in expected) >= 15  # overlapping pairs are exercised
        # both sides are float64 computations of the same area; 1e-12 covers their rounding
        torch.testing.assert_close(
            ious, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12
        )


# --- IoU: properties ----------------------------------------------------------------------

_coord = st.floats(-20, 20, allow_nan=False)
_offset = st.floats(-12, 12, allow_nan=False)
_side = st.floats(0.5, 20, allow_nan=False)
_angle = st.floats(-180, 180, allow_nan=False)
_box = st.tuples(_coord, _coord, _side, _side, _angle)
# the second box is placed near the first so that most pairs overlap
_near_pair = st.tuples(_box, _offset, _offset, _side, _side, _angle).map(
    lambda t: (t[0], (t[0][0] + t[1], t[0][1] + t[2], t[3], t[4], t[5]))
)


def _pair_tensor(pair):
    box1, box2 = pair
    return torch.tensor([box1], dtype=torch.float64), torch.tensor([box2], dtype=torch.float64)


# Tolerances below: the IoU is computed in float64 with inclusion slack of 1e-10 of the box
# sizes, so transformed inputs agree to ~1e-12; 1e-9 leaves room for rounding in the
# transformed coordinates themselves.


@settings(max_examples=80, deadline=None)
@given(_near_pair)
def test_iou_is_symmetric_and_within_zero_one(pair):
    a, b = _pair_tensor(pair)
    forward = pairwise_iou_rotated(a, b)
    backward = pairwise_iou_rotated(b, a)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-9)
    assert 0.0 <= forward.item() <= 1.0


@settings(max_examples=80, deadline=None)
@given(_near_pair, _angle, _coord, _coord)
def test_iou_is_invariant_to_rotating_both_boxes_about_a_point(pair, turn, px, py):
    a, b = _pair_tensor(pair)
    # Detectron2's sense: adding `turn` to an angle maps the width axis (cos a, -sin a) to
    # (cos(a + t), -sin(a + t)); the same map sends an offset (dx, dy) to
    # (c dx + s dy, -s dx + c dy) with c = cos t, s = sin t.
    c, s = math.cos(math.radians(turn)), math.sin(math.radians(turn))

    def rotate(boxes):
        dx, dy = boxes[:, 0] - px, boxes[:, 1] - py
        out = boxes.clone()
        out[:, 0] = px + c * dx + s * dy
        out[:, 1] = py - s * dx + c * dy
        out[:, 4] = boxes[:, 4] + turn
        return out

    torch.testing.assert_close(
        pairwise_iou_rotated(rotate(a), rotate(b)), pairwise_iou_rotated(a, b), rtol=0, atol=1e-9
    )


@settings(max_examples=80, deadline=None)
@given(_near_pair, st.sampled_from([180.0, -180.0, 360.0]))
def test_iou_is_invariant_to_adding_half_turns_to_an_angle(pair, turn):
    a, b = _pair_tensor(pair)
    b_turned = b.clone()
    b_turned[:, 4] += turn
    torch.testing.assert_close(
        pairwise_iou_rotated(a, b_turned), pairwise_iou_rotated(a, b), rtol=0, atol=1e-9
    )
