import math

import numpy as np
import pytest
import torch

from heron.structures.boxes import Boxes
from heron.structures.keypoints import Keypoints, heatmaps_to_keypoints

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bicubic_weight(x: float, a: float = -0.75) -> float:
    """PyTorch's bicubic convolution kernel (Keys, A = -0.75) at distance x."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


# ---------------------------------------------------------------- Keypoints


def test_keypoints_from_lists_and_arrays_are_float32():
    kp = Keypoints([[[1, 2, 2], [3, 4, 1]]])
    assert kp.tensor.dtype == torch.float32 and kp.tensor.shape == (1, 2, 3)
    assert Keypoints(np.zeros((0, 17, 3))).tensor.shape == (0, 17, 3)
    assert len(kp) == 1


def _shape_pattern(shape):
    return "\\(" + ", ".join(str(s) for s in shape) + "\\)"


@pytest.mark.parametrize("shape", [(2, 3), (1, 4, 2), (1, 2, 3, 1)])
def test_keypoints_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match=r"\(N, K, 3\).*got " + _shape_pattern(shape)):
        Keypoints(torch.zeros(shape))


@pytest.mark.parametrize("device", DEVICES)
def test_keypoints_to_and_device(device):
    kp = Keypoints(torch.zeros(2, 3, 3)).to(device)
    assert kp.device.type == device


def test_keypoints_getitem_repr_cat():
    t = torch.arange(18, dtype=torch.float32).view(3, 2, 3)
    kp = Keypoints(t)
    assert kp[1].tensor.shape == (1, 2, 3)
    torch.testing.assert_close(kp[1].tensor, t[1:2])
    torch.testing.assert_close(kp[1:].tensor, t[1:])
    torch.testing.assert_close(kp[torch.tensor([True, False, True])].tensor, t[[0, 2]])
    torch.testing.assert_close(kp[torch.tensor([2, 0])].tensor, t[[2, 0]])
    assert repr(kp) == "Keypoints(num_instances=3)"
    c = Keypoints.cat([kp, kp[0]])
    assert len(c) == 4
    torch.testing.assert_close(c.tensor[3], t[0])


def test_keypoints_cat_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        Keypoints.cat([])
    with pytest.raises(TypeError, match="element 1"):
        Keypoints.cat([Keypoints(torch.zeros(1, 1, 3)), torch.zeros(1, 1, 3)])


def test_to_heatmap_cells_edges_and_visibility():
    # box (0, 0, 8, 8) on a 4 x 4 grid: cell = floor(coordinate * 4 / 8)
    keypoints = Keypoints(
        [
            [
                [1.0, 1.0, 2],  # floor(0.5), floor(0.5) = (0, 0) -> 0
                [7.9, 2.0, 2],  # x floor(3.95) = 3, y floor(1) = 1 -> 1 * 4 + 3 = 7
                [8.0, 8.0, 2],  # exactly on the right/bottom edge -> last cell (3, 3) -> 15
                [8.1, 1.0, 2],  # x floor(4.05) = 4 is outside -> invalid
                [-0.1, 1.0, 2],  # x floor(-0.05) = -1 is outside -> invalid
                [4.0, 4.0, 0],  # not labeled -> invalid
            ]
        ]
    )
    heatmaps, valid = keypoints.to_heatmap(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4)
    assert heatmaps.dtype == torch.int64 and valid.dtype == torch.bool
    assert heatmaps.tolist() == [[0, 7, 15, 0, 0, 0]]
    assert valid.tolist() == [[True, True, True, False, False, False]]


def test_to_heatmap_uses_each_instance_box_and_accepts_boxes():
    kp = Keypoints([[[1.0, 1.0, 1]], [[11.5, 21.2, 1]]])
    boxes = Boxes(torch.tensor([[0.0, 0, 8, 8], [10, 20, 14, 22]]))
    heatmaps, valid = kp.to_heatmap(boxes, 4)
    # instance 1: scale x 4 / 4 = 1, y 4 / 2 = 2: x floor(1.5) = 1, y floor(2.4) = 2 -> 9
    assert heatmaps.tolist() == [[0], [9]]
    assert valid.tolist() == [[True], [True]]


def test_to_heatmap_empty_and_wrong_boxes():
    heatmaps, valid = Keypoints(torch.zeros(0, 5, 3)).to_heatmap(torch.zeros(0, 4), 56)
    assert heatmaps.shape == (0, 5) and valid.shape == (0, 5)
    assert heatmaps.dtype == torch.int64 and valid.dtype == torch.bool
    with pytest.raises(ValueError, match=r"boxes must be \(1, 4\).*got \(2, 4\)"):
        Keypoints(torch.zeros(1, 5, 3)).to_heatmap(torch.zeros(2, 4), 56)


# ---------------------------------------------------------------- heatmaps_to_keypoints


def test_heatmaps_to_keypoints_same_size_map_with_width_correction():
    # roi width 7.5 -> ceil 8, height 3 -> ceil 3: a (3, 8) map is resized to (3, 8), which
    # bicubic leaves unchanged (weights 0, 1, 0, 0), so the peaks stay where they are.
    maps = torch.zeros(1, 2, 3, 8)
    maps[0, 0, 1, 6] = 5.0
    maps[0, 1, 0, 0] = 3.0
    rois = torch.tensor([[10.0, 20.0, 17.5, 23.0]])
    out = heatmaps_to_keypoints(maps, rois)
    assert out.shape == (1, 2, 4)
    # x = 10 + (6 + 0.5) * 7.5 / 8 = 16.09375, y = 20 + (1 + 0.5) * 3 / 3 = 21.5
    # x = 10 + 0.5 * 0.9375 = 10.46875, y = 20 + 0.5 = 20.5
    torch.testing.assert_close(out[0, :, :2], torch.tensor([[16.09375, 21.5], [10.46875, 20.5]]))
    torch.testing.assert_close(out[0, :, 2], torch.tensor([5.0, 3.0]))
    # score: exp(0) / sum over the 24 cells of exp(map - peak) = 1 / (1 + 23 e^-peak)
    expected = torch.tensor([1 / (1 + 23 * math.exp(-5.0)), 1 / (1 + 23 * math.exp(-3.0))])
    torch.testing.assert_close(out[0, :, 3], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_heatmaps_to_keypoints_upsampled_single_peak(device):
    # A 4 x 4 map with a single peak of 10 at (row 2, col 1), roi (3, 5)-(11, 13): 8 x 8,
    # so the map is upsampled 2x. Output pixel j samples source j / 2 - 0.25; the pixels
    # 2c and 2c + 1 sit 0.25 on either side of the peak's column c, get the same weight
    # W(0.25), and argmax takes the first: column 2, row 4.
    maps = torch.zeros(1, 1, 4, 4, device=device)
    maps[0, 0, 2, 1] = 10.0
    rois = torch.tensor([[3.0, 5.0, 11.0, 13.0]], device=device)
    out = heatmaps_to_keypoints(maps, rois)[0, 0].cpu()
    w = _bicubic_weight(0.25)  # 1.25 / 64 - 2.25 / 16 + 1 = 0.87890625
    peak = 10.0 * w * w
    # x = 3 + (2 + 0.5) * 8 / 8 = 5.5, y = 5 + (4 + 0.5) = 9.5
    torch.testing.assert_close(out[:2], torch.tensor([5.5, 9.5]))
    torch.testing.assert_close(out[2], torch.tensor(peak, dtype=torch.float32))
    # the score normalizes over the 16 cells of the 4 x 4 map, not the 64 of the resized one
    score = 1.0 / (math.exp(10.0 - peak) + 15 * math.exp(-peak))
    torch.testing.assert_close(out[3], torch.tensor(score, dtype=torch.float32))


def test_heatmaps_to_keypoints_small_boxes_clamp_to_one_pixel():
    # width 0.5 and height 0.2 clamp to 1: a 1 x 1 resized map, keypoint at x0 + 0.5, y0 + 0.5
    out = heatmaps_to_keypoints(torch.zeros(1, 3, 2, 2), torch.tensor([[4.0, 4.0, 4.5, 4.2]]))
    torch.testing.assert_close(out[0, :, :2], torch.tensor([[4.5, 4.5]] * 3))


def test_heatmaps_to_keypoints_several_rois_are_independent():
    maps = torch.zeros(2, 1, 3, 8)
    maps[0, 0, 2, 7] = 1.0
    maps[1, 0, 0, 3] = 1.0
    rois = torch.tensor([[0.0, 0.0, 8.0, 3.0], [100.0, 50.0, 108.0, 53.0]])
    out = heatmaps_to_keypoints(maps, rois)
    # (7.5, 2.5) and (100 + 3.5, 50 + 0.5)
    torch.testing.assert_close(out[:, 0, :2], torch.tensor([[7.5, 2.5], [103.5, 50.5]]))


def test_heatmaps_to_keypoints_empty_and_bad_shapes():
    assert heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4)).shape == (0, 17, 4)
    with pytest.raises(ValueError, match=r"got \(1, 56, 56\) and \(1, 4\)"):
        heatmaps_to_keypoints(torch.zeros(1, 56, 56), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="same N"):
        heatmaps_to_keypoints(torch.zeros(2, 1, 4, 4), torch.zeros(1, 4))


def test_heatmaps_round_trip_through_to_heatmap():
    # a keypoint encoded to its cell and decoded from a one-hot map lands in the same cell
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    kp = Keypoints([[[5.3, 2.7, 2]]])
    heatmaps, _ = kp.to_heatmap(box, 8)  # cell (2, 5) -> 21
    maps = torch.zeros(1, 1, 8, 8)
    maps.view(1, 1, -1)[0, 0, heatmaps[0, 0]] = 4.0
    out = heatmaps_to_keypoints(maps, box)
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([5.5, 2.5]))  # the cell centre


def test_export_region_bound_takes_a_positive_int_and_restores_the_previous_bound():
    from heron.structures import keypoints as kp

    with pytest.raises(ValueError, match="bound must be a positive int, got 0"):
        kp.export_region_bound(0).__enter__()
    assert kp._EXPORT_REGION_BOUND is None
    with kp.export_region_bound(7):
        with kp.export_region_bound(3):
            assert kp._EXPORT_REGION_BOUND == 3
        assert kp._EXPORT_REGION_BOUND == 7
    assert kp._EXPORT_REGION_BOUND is None
