import pytest
import torch
from torchvision.ops import roi_align

from heron.modeling.poolers import ROIPooler, assign_boxes_to_levels, convert_boxes_to_pooler_format
from heron.structures.boxes import Boxes


def _square(side, x0=0.0):
    return [x0, 0.0, x0 + side, side]


def test_level_assignment_follows_the_fpn_rule():
    boxes = Boxes(
        torch.tensor([_square(224), _square(112), _square(448), _square(1), _square(5000)])
    )
    # floor(4 + log2(side / 224)): 4, 3, 5, then clamped to [2, 5]
    levels = assign_boxes_to_levels(
        [boxes], min_level=2, max_level=5, canonical_box_size=224, canonical_level=4
    )
    assert levels.tolist() == [2, 1, 3, 0, 3]


def test_pooler_format_prefixes_the_image_index():
    a = Boxes(torch.tensor([_square(4), _square(8)]))
    b = Boxes(torch.tensor([_square(2)]))
    out = convert_boxes_to_pooler_format([a, b])
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[:, 1:], torch.cat([a.tensor, b.tensor]))


def test_single_level_pooling_equals_torchvision_roi_align():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 16, 16, generator=g)
    boxes = [
        Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0]])),
        Boxes(torch.tensor([[0.0, 8.0, 20.0, 60.0]])),
    ]
    pooler = ROIPooler(output_size=7, scales=(0.25,), sampling_ratio=2, pooler_type="ROIAlignV2")
    rois = convert_boxes_to_pooler_format(boxes)
    expected = roi_align(feat, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(pooler([feat], boxes), expected)


def test_multi_level_pooling_takes_each_box_from_its_level():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 2, 64, 64, generator=g), torch.randn(1, 2, 32, 32, generator=g)]
    small, large = [0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 200.0, 200.0]  # levels 2 and 3
    boxes = [Boxes(torch.tensor([large, small]))]
    pooler = ROIPooler(
        output_size=4,
        scales=(1 / 4, 1 / 8),
        sampling_ratio=0,
        pooler_type="ROIAlign",
        canonical_box_size=224,
        canonical_level=4,
    )
    out = pooler(feats, boxes)
    ref_large = roi_align(feats[1], torch.tensor([[0.0, *large]]), (4, 4), 1 / 8, 0, aligned=False)
    ref_small = roi_align(feats[0], torch.tensor([[0.0, *small]]), (4, 4), 1 / 4, 0, aligned=False)
    torch.testing.assert_close(out, torch.cat([ref_large, ref_small]))


def test_no_images_gives_an_empty_batch():
    pooler = ROIPooler(
        output_size=(3, 5), scales=(0.5,), sampling_ratio=0, pooler_type="ROIAlignV2"
    )
    out = pooler([torch.zeros(0, 4, 8, 8)], [])
    assert out.shape == (0, 4, 3, 5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="pooler_type"):
        ROIPooler(7, (0.25,), 0, "ROIMagic")
    with pytest.raises(ValueError, match="consecutive"):
        ROIPooler(7, (1 / 4, 1 / 16), 0, "ROIAlign")
    pooler = ROIPooler(7, (1 / 4, 1 / 8), 0, "ROIAlign")
    with pytest.raises(ValueError, match="2 levels but got 1"):
        pooler([torch.zeros(1, 1, 8, 8)], [Boxes(torch.zeros(0, 4))])
