import math

import pytest
import torch

from heron.modeling.anchor_generator import DefaultAnchorGenerator, RotatedAnchorGenerator

S = math.sqrt(2048)  # w of a size-32 anchor at ratio 0.5: sqrt(32^2 / 0.5) = 45.2548...


def test_cell_anchors_follow_size_and_ratio():
    gen = DefaultAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4], offset=0.0
    )
    # ratio r = h / w: (w, h) = (S, S/2), (32, 32), (S/2, S)
    expected = torch.tensor(
        [
            [-S / 2, -S / 4, S / 2, S / 4],
            [-16.0, -16.0, 16.0, 16.0],
            [-S / 4, -S / 2, S / 4, S / 2],
        ]
    )
    torch.testing.assert_close(next(iter(gen.cell_anchors)), expected)


@pytest.mark.parametrize("offset, first_x", [(0.0, 0.0), (0.5, 2.0)])
def test_anchors_tile_the_grid_row_major(offset, first_x):
    gen = DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[[1.0]], strides=[4], offset=offset)
    (anchors,) = gen([torch.zeros(1, 1, 2, 3)])
    assert len(anchors) == 6
    centers = anchors.get_centers()
    xs = [first_x + 4 * i for i in range(3)]
    ys = [first_x, first_x + 4]
    expected = torch.tensor([[x, y] for y in ys for x in xs])
    torch.testing.assert_close(centers, expected)
    torch.testing.assert_close(
        anchors.tensor[0], torch.tensor([first_x - 4, first_x - 4, first_x + 4, first_x + 4])
    )


def test_location_major_order_with_several_cell_anchors():
    gen = DefaultAnchorGenerator(sizes=[[8, 16]], aspect_ratios=[[1.0]], strides=[4], offset=0.0)
    (anchors,) = gen([torch.zeros(1, 1, 1, 2)])
    # location (0, 0): size 8 then 16; then location (4, 0)
    expected = torch.tensor([[-4.0, -4, 4, 4], [-8, -8, 8, 8], [0, -4, 8, 4], [-4, -8, 12, 8]])
    torch.testing.assert_close(anchors.tensor, expected)


def test_one_size_list_per_level_and_num_anchors():
    gen = DefaultAnchorGenerator(
        sizes=[[32], [64]], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8], offset=0.0
    )
    assert gen.num_anchors == [3, 3]
    a4, a8 = gen([torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 2, 2)])
    assert (len(a4), len(a8)) == (48, 12)
    torch.testing.assert_close(a8.tensor[1], torch.tensor([-32.0, -32, 32, 32]))


def test_cell_anchors_are_not_saved_in_the_state_dict():
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4])
    assert gen.state_dict() == {}


def test_mismatched_levels_raise():
    with pytest.raises(ValueError, match="3 entries for 2 feature maps"):
        DefaultAnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[[1.0]], strides=[4, 8])


def test_rotated_anchors_enumerate_angles():
    gen = RotatedAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[1.0]], strides=[8], angles=[[0, 90]], offset=0.5
    )
    (anchors,) = gen([torch.zeros(1, 1, 1, 2)])
    expected = torch.tensor(
        [[4.0, 4, 32, 32, 0], [4, 4, 32, 32, 90], [12, 4, 32, 32, 0], [12, 4, 32, 32, 90]]
    )
    torch.testing.assert_close(anchors.tensor, expected)
    assert gen.box_dim == 5
