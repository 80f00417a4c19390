import random

import numpy as np
import pytest

from heron.utils.colormap import colormap, random_color, random_colors


def test_colormap_has_74_colors_with_the_published_first_and_last_rows():
    table = colormap(rgb=True, maximum=1)
    assert table.shape == (74, 3)
    assert table.dtype == np.float32
    np.testing.assert_allclose(table[0], [0.000, 0.447, 0.741])
    np.testing.assert_allclose(table[1], [0.850, 0.325, 0.098])
    np.testing.assert_allclose(table[-1], [1.0, 1.0, 1.0])


def test_colormap_defaults_to_bgr_in_0_255():
    bgr = colormap()
    # first color RGB (0, 0.447, 0.741) * 255 = (0, 113.985, 188.955), reversed for BGR
    np.testing.assert_allclose(bgr[0], [188.955, 113.985, 0.0], rtol=1e-6)
    np.testing.assert_allclose(bgr[:, ::-1], colormap(rgb=True))


def test_colormap_rejects_other_maxima():
    with pytest.raises(ValueError, match="maximum must be 255 or 1, got 100"):
        colormap(maximum=100)
    with pytest.raises(ValueError, match="maximum"):
        random_color(maximum=2)


def test_random_color_is_a_table_row_in_range():
    table = colormap(rgb=True, maximum=1)
    np.random.seed(3)
    for _ in range(20):
        c = random_color(rgb=True, maximum=1)
        assert c.shape == (3,)
        assert ((c >= 0) & (c <= 1)).all()
        assert np.isclose(table, c).all(axis=1).any()
    c255 = random_color()
    assert ((c255 >= 0) & (c255 <= 255)).all()


def test_random_color_bgr_reverses_the_rgb_draw():
    np.random.seed(7)
    rgb = random_color(rgb=True)
    np.random.seed(7)
    np.testing.assert_allclose(random_color(rgb=False), rgb[::-1])


def test_random_colors_draw_rows_without_replacement():
    random.seed(0)
    colors = random_colors(74, rgb=True, maximum=1)
    # all 74 rows drawn once each (the table itself repeats a few colors, e.g. pure red)
    assert sorted(tuple(c.tolist()) for c in colors) == sorted(
        tuple(c.tolist()) for c in colormap(rgb=True, maximum=1)
    )
    assert random_colors(0) == []


def test_random_colors_rejects_more_than_the_table():
    with pytest.raises(ValueError, match=r"N must be in \[0, 74\].*got 75"):
        random_colors(75)
