import importlib

import pytest
import torch
from torchvision import ops

from heron.layers.roi_align_rotated import ROIAlignRotated, roi_align_rotated

# The package re-exports a function of the same name, so fetch the module itself.
roi_align_rotated_module = importlib.import_module("heron.layers.roi_align_rotated")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _features(dtype=torch.float32, shape=(2, 3, 12, 14), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _random_rois(n, dtype=torch.float32, seed=1):
    """(n, 5) XYXY rois with batch index, and the same regions as (n, 6) rotated rois at 0."""
    g = torch.Generator().manual_seed(seed)
    # corners from -3 to 27 reach past the 14 x 12 map (and past 28 x 24 at scale 0.5)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 24 - 3
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 16 + 0.3
    batch = (torch.arange(n) % 2).to(dtype)[:, None]
    xyxy = torch.cat([batch, xy, xy + wh], dim=1)
    rotated = torch.cat([batch, xy + wh / 2, wh, torch.zeros_like(batch)], dim=1)
    return xyxy, rotated


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_angle_zero_matches_torchvision_roi_align(device, sampling_ratio, spatial_scale):
    features = _features().to(device)
    xyxy, rotated = _random_rois(8)
    output_size = (3, 4)
    out = roi_align_rotated(
        features, rotated.to(device), output_size, spatial_scale, sampling_ratio
    )
    expected = ops.roi_align(
        features, xyxy.to(device), output_size, spatial_scale, sampling_ratio, aligned=True
    )
    assert out.shape == (8, 3, 3, 4)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_angle_zero_matches_torchvision_in_float64(sampling_ratio):
    # in float64 only the order of additions differs between the two implementations
    features = _features(torch.float64)
    xyxy, rotated = _random_rois(8, torch.float64)
    out = roi_align_rotated(features, rotated, 5, 0.5, sampling_ratio)
    expected = ops.roi_align(features, xyxy, 5, 0.5, sampling_ratio, aligned=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradient_wrt_input_matches_torchvision(sampling_ratio):
    xyxy, rotated = _random_rois(8)
    grad_out = torch.randn(8, 3, 3, 4, generator=torch.Generator().manual_seed(5))
    ours = _features().requires_grad_()
    roi_align_rotated(ours, rotated, (3, 4), 0.5, sampling_ratio).backward(grad_out)
    reference = _features().requires_grad_()
    ops.roi_align(reference, xyxy, (3, 4), 0.5, sampling_ratio, aligned=True).backward(grad_out)
    assert ours.grad.abs().sum() > 0
    torch.testing.assert_close(ours.grad, reference.grad)


def test_adaptive_sampling_with_many_grid_sizes_in_small_chunks(monkeypatch):
    # regions of many sizes give many (GH, GW) groups; a tiny gather budget splits each group
    monkeypatch.setattr(roi_align_rotated_module, "_GATHER_CHUNK", 50)
    features = _features(torch.float64)
    xyxy, rotated = _random_rois(20, torch.float64, seed=7)
    out = roi_align_rotated(features, rotated, 2, 1.0, 0)
    expected = ops.roi_align(features, xyxy, 2, 1.0, 0, aligned=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _upright_box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_90_degrees_equals_axis_aligned_pooling_of_the_rotated_map(sampling_ratio):
    # G = rot90(F, -1) over (H, W) satisfies G[r, c] = F[H - 1 - c, r] (checked below).
    # At 90 degrees the rotated kernel samples F at x = cx' + yy, y = cy' - xx, where
    # (xx, yy) runs over the bin grid and cx' = cx - 0.5, cy' = cy - 0.5 (scale 1).
    # An upright region of G centred at (X, Y) samples G at (X - 0.5 + xx, Y - 0.5 + yy)
    # = F at (row H - 1 - (X - 0.5 + xx), column Y - 0.5 + yy). Matching both:
    # Y = cx and X = H - cy, with the same w (along G's x) and h.
    features = _features(torch.float64, shape=(1, 2, 9, 11))
    height = features.shape[2]
    rotated_map = torch.rot90(features, -1, dims=(2, 3))
    assert rotated_map[0, 0, 2, 3] == features[0, 0, height - 1 - 3, 2]
    rois, boxes = [], []
    for cx, cy, w, h in [(4.3, 5.1, 6.0, 3.5), (2.0, 7.5, 5.0, 8.0), (9.5, 1.0, 7.0, 4.0)]:
        rois.append([0, cx, cy, w, h, 90.0])
        boxes.append([0, *_upright_box(height - cy, cx, w, h)])
    out = roi_align_rotated(
        features, torch.tensor(rois, dtype=torch.float64), 3, 1.0, sampling_ratio
    )
    expected = ops.roi_align(
        rotated_map, torch.tensor(boxes, dtype=torch.float64), 3, 1.0, sampling_ratio, aligned=True
    )
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_180_degrees_equals_axis_aligned_pooling_of_the_flipped_map():
    # At 180 degrees the kernel samples F at (cx' - xx, cy' - yy). G = F flipped in both axes
    # has G[r, c] = F[H - 1 - r, W - 1 - c]; an upright region of G centred at (X, Y) samples
    # F at (H - 1 - (Y - 0.5 + yy), W - 1 - (X - 0.5 + xx)), so X = W - cx, Y = H - cy.
    features = _features(torch.float64, shape=(1, 2, 9, 11))
    height, width = features.shape[2:]
    flipped = torch.flip(features, dims=(2, 3))
    cx, cy, w, h = 3.7, 6.2, 5.0, 4.5
    out = roi_align_rotated(
        features, torch.tensor([[0, cx, cy, w, h, 180.0]], dtype=torch.float64), 4, 1.0, 0
    )
    box = torch.tensor([[0, *_upright_box(width - cx, height - cy, w, h)]], dtype=torch.float64)
    expected = ops.roi_align(flipped, box, 4, 1.0, 0, aligned=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_bins_of_a_tilted_region_follow_the_rotated_grid():
    # f(x, y) = x at pixel centres: column j holds j + 0.5, so bilinear sampling inside
    # the map returns the continuous x coordinate exactly. A 4 x 2 region at 90 degrees
    # centred at (6, 5): its width axis is (cos 90, -sin 90) = (0, -1), so output column
    # pw moves along -y and output row ph along the height axis (sin 90, cos 90) = (1, 0),
    # i.e. along +x. Row centres are at x = 6 - 0.5 and 6 + 0.5; every column shares them.
    ramp = (torch.arange(12, dtype=torch.float64) + 0.5).expand(1, 1, 10, 12).clone()
    out = roi_align_rotated(
        ramp, torch.tensor([[0, 6.0, 5.0, 4.0, 2.0, 90.0]], dtype=torch.float64), (2, 4), 1.0, 2
    )
    expected = torch.tensor([[5.5] * 4, [6.5] * 4], dtype=torch.float64)[None, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_empty_rois_give_an_empty_output():
    features = _features()
    out = roi_align_rotated(features, torch.zeros(0, 6), (2, 3), 1.0, 0)
    assert out.shape == (0, 3, 2, 3)
    assert out.dtype == features.dtype


def test_zero_size_region_with_adaptive_sampling_is_zero():
    # ceil(0 / output) = 0 samples per bin: the bins average nothing and stay 0 (Detectron2)
    out = roi_align_rotated(_features(), torch.tensor([[0, 5.0, 5.0, 0.0, 4.0, 30.0]]), 2, 1.0, 0)
    torch.testing.assert_close(out, torch.zeros(1, 3, 2, 2))


def test_half_precision_input_is_computed_in_float32():
    features = _features()
    _, rotated = _random_rois(4)
    out = roi_align_rotated(features.half(), rotated.half(), 2, 1.0, 2)
    assert out.dtype == torch.float16
    expected = roi_align_rotated(features.half().float(), rotated.half().float(), 2, 1.0, 2)
    torch.testing.assert_close(out, expected.half())


def test_roi_errors_name_the_problem():
    features = _features()
    with pytest.raises(ValueError, match=r"\(R, 6\), got shape \(1, 5\)"):
        roi_align_rotated(features, torch.zeros(1, 5), 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"roi 1 has batch index 2\.0"):
        roi_align_rotated(
            features, torch.tensor([[0, 1, 1, 1, 1, 0], [2, 1, 1, 1, 1, 0.0]]), 2, 1.0, 0
        )
    with pytest.raises(ValueError, match="roi 0 has a negative size"):
        roi_align_rotated(features, torch.tensor([[0, 1, 1, -1, 1, 0.0]]), 2, 1.0, 0)
    with pytest.raises(ValueError, match="roi 0 is not finite"):
        roi_align_rotated(features, torch.tensor([[0, float("nan"), 1, 1, 1, 0.0]]), 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        roi_align_rotated(features[0], torch.zeros(1, 6), 2, 1.0, 0)


def test_module_pools_and_has_a_repr():
    module = ROIAlignRotated((3, 4), spatial_scale=0.5, sampling_ratio=2)
    assert (
        repr(module) == "ROIAlignRotated(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2)"
    )
    features = _features()
    xyxy, rotated = _random_rois(5)
    torch.testing.assert_close(
        module(features, rotated), ops.roi_align(features, xyxy, (3, 4), 0.5, 2, aligned=True)
    )
    with pytest.raises(ValueError, match=r"ROIAlignRotated: rois must be \(R, 6\)"):
        module(features, xyxy)
