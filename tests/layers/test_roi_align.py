import pytest
import torch
from torchvision import ops

from heron.layers.roi_align import ROIAlign, ROIPool, roi_align


def _x_ramp(height=10, width=10):
    """Features sampling f(x, y) = x at pixel centres: pixel column j holds j + 0.5."""
    return (torch.arange(width, dtype=torch.float32) + 0.5).expand(1, 1, height, width).clone()


def test_roi_align_function_is_torchvision_op():
    assert roi_align is ops.roi_align


def test_aligned_roi_align_returns_bin_centres_on_linear_ramp():
    pooler = ROIAlign((2, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    out = pooler(_x_ramp(), torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]]))
    # Box x from 2 to 6 in 4 bins: bin centres 2.5, 3.5, 4.5, 5.5. f is linear and the
    # samples are symmetric in each bin, so each bin averages to f(centre) = centre.
    expected = torch.tensor([2.5, 3.5, 4.5, 5.5]).expand(1, 1, 2, 4)
    torch.testing.assert_close(out, expected)


def test_unaligned_roi_align_is_half_a_pixel_off():
    pooler = ROIAlign((2, 4), spatial_scale=1.0, sampling_ratio=2, aligned=False)
    out = pooler(_x_ramp(), torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]]))
    # Legacy mode reads continuous x as pixel index x, whose value is x + 0.5.
    expected = torch.tensor([3.0, 4.0, 5.0, 6.0]).expand(1, 1, 2, 4)
    torch.testing.assert_close(out, expected)


def test_roi_align_scales_boxes_by_spatial_scale():
    pooler = ROIAlign((2, 4), spatial_scale=0.5, sampling_ratio=2)
    out = pooler(_x_ramp(), torch.tensor([[0.0, 4.0, 4.0, 12.0, 12.0]]))
    # (4, 12) * 0.5 = (2, 6): the same bins as the unscaled test.
    torch.testing.assert_close(out, torch.tensor([2.5, 3.5, 4.5, 5.5]).expand(1, 1, 2, 4))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 12, 16, generator=g)
    xy = torch.rand(5, 2, generator=g) * 20
    wh = torch.rand(5, 2, generator=g) * 10 + 0.5
    rois = torch.cat([torch.tensor([[0.0], [1], [1], [0], [1]]), xy, xy + wh], dim=1)
    out = ROIAlign(7, 0.5, sampling_ratio, aligned)(features, rois)
    expected = ops.roi_align(features, rois, 7, 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected)
    assert out.shape == (5, 3, 7, 7)


def test_roi_align_casts_rois_to_feature_dtype():
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 5.0]])  # float32
    out = ROIAlign(2, 1.0, 2)(features, rois)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ops.roi_align(features, rois.double(), 2, 1.0, 2, True))


def test_roi_align_under_autocast_matches_float32():
    features = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 5.0]])
    expected = ROIAlign(2, 1.0, 2)(features, rois)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ROIAlign(2, 1.0, 2)(features, rois)
    torch.testing.assert_close(out.float(), expected)


def test_roi_align_with_no_rois_is_empty():
    out = ROIAlign((3, 2), 1.0, 0)(torch.randn(1, 4, 5, 5), torch.zeros(0, 5))
    assert out.shape == (0, 4, 3, 2)


def test_roi_align_rejects_rois_without_batch_index():
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\), got shape \(1, 4\)"):
        ROIAlign(2, 1.0, 0)(torch.randn(1, 1, 4, 4), torch.zeros(1, 4))


def test_roi_align_repr_lists_parameters():
    text = repr(ROIAlign((7, 7), 0.25, 0, aligned=False))
    assert (
        text == "ROIAlign(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=False)"
    )


def test_roi_pool_takes_max_over_quantized_box():
    out = ROIPool((1, 1), spatial_scale=1.0)(_x_ramp(), torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]]))
    # The box covers pixel columns 2..6 (end inclusive after rounding); the max is 6.5.
    torch.testing.assert_close(out, torch.full((1, 1, 1, 1), 6.5))


def test_roi_pool_matches_torchvision_and_is_its_subclass():
    assert issubclass(ROIPool, ops.RoIPool)
    features = torch.randn(2, 3, 10, 10)
    rois = torch.tensor([[0.0, 1.0, 1.0, 8.0, 6.0], [1.0, 0.0, 2.0, 9.0, 9.0]], dtype=torch.float64)
    out = ROIPool(3, 0.5)(features, rois)
    torch.testing.assert_close(out, ops.roi_pool(features, rois.float(), 3, 0.5))


def test_roi_pool_rejects_bad_rois():
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        ROIPool(2, 1.0)(torch.randn(1, 1, 4, 4), torch.zeros(3))
