import numpy as np
import pytest
import torch
from PIL import Image

from heron.layers import mask_ops
from heron.layers.mask_ops import (
    pad_masks,
    paste_mask_in_image_old,
    paste_masks_in_image,
    scale_boxes,
)

IMG_H, IMG_W = 30, 40
# x0, y0, x1, y1: inside; partly left/top of the image; partly right/bottom of it;
# sub-pixel (smaller than one pixel); fractional; entirely outside.
BOXES = [
    [5.0, 4.0, 17.0, 20.0],
    [-6.3, -2.7, 8.4, 9.1],
    [30.2, 21.6, 47.9, 36.0],
    [12.2, 13.3, 12.7, 13.9],
    [2.25, 14.75, 36.5, 29.5],
    [50.0, 40.0, 60.0, 45.0],
]


class _BoxesLike:
    def __init__(self, tensor):
        self.tensor = tensor


def _reference_soft_paste(mask: np.ndarray, box, img_h: int, img_w: int) -> np.ndarray:
    """Float64 paste from the definition: each image pixel centre mapped into the mask.

    Image pixel (i, j) has its centre at (j + 0.5, i + 0.5). The box spans the whole mask,
    whose cell (r, c) has its centre at mask coordinate (c + 0.5, r + 0.5). The value is the
    bilinear interpolation of the four nearest cell centres, cells outside the mask being 0.
    """
    mask_h, mask_w = mask.shape
    x0, y0, x1, y1 = box
    # continuous mask coordinate of each pixel centre, minus 0.5: the cell-index scale
    u = ((np.arange(img_w) + 0.5) - x0) / (x1 - x0) * mask_w - 0.5
    v = ((np.arange(img_h) + 0.5) - y0) / (y1 - y0) * mask_h - 0.5
    padded = np.pad(mask.astype(np.float64), 1)  # zero cells all around

    def taps(coord, size):
        lo = np.floor(coord)
        frac = coord - lo
        # cell indices lo and lo + 1, shifted by the 1-cell padding and clipped to the zeros
        lo_idx = np.clip(lo + 1, 0, size + 1).astype(int)
        hi_idx = np.clip(lo + 2, 0, size + 1).astype(int)
        return lo_idx, hi_idx, frac

    cx0, cx1, fx = taps(u, mask_w)
    cy0, cy1, fy = taps(v, mask_h)
    top = padded[cy0][:, cx0] * (1 - fx) + padded[cy0][:, cx1] * fx
    bottom = padded[cy1][:, cx0] * (1 - fx) + padded[cy1][:, cx1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def _random_masks(n, size=7, seed=0):
    return torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed))


def test_reference_paste_of_a_box_matching_the_mask_grid_copies_the_mask():
    # Guard for the reference itself: a 4x4 box at (2, 3) over a 4x4 mask puts each mask
    # cell on exactly one pixel.
    mask = np.arange(16, dtype=np.float64).reshape(4, 4)
    pasted = _reference_soft_paste(mask, (2, 3, 6, 7), 10, 10)
    np.testing.assert_allclose(pasted[3:7, 2:6], mask)
    assert pasted.sum() == pytest.approx(mask.sum())


def test_paste_masks_matches_per_pixel_reference():
    masks = _random_masks(len(BOXES))
    boxes = torch.tensor(BOXES)
    out = paste_masks_in_image(masks, boxes, (IMG_H, IMG_W))
    assert out.shape == (len(BOXES), IMG_H, IMG_W) and out.dtype == torch.bool
    for i, box in enumerate(BOXES):
        ref = _reference_soft_paste(masks[i].numpy().astype(np.float64), box, IMG_H, IMG_W)
        # No reference value sits within float32 rounding of the threshold, so an exact
        # comparison is meaningful.
        assert np.abs(ref - 0.5).min() > 1e-6
        np.testing.assert_array_equal(out[i].numpy(), ref >= 0.5, err_msg=f"box {i}: {box}")


def test_paste_masks_of_box_outside_image_is_empty_and_subpixel_box_is_small():
    out = paste_masks_in_image(
        torch.ones(2, 5, 5), torch.tensor([BOXES[5], BOXES[3]]), (IMG_H, IMG_W)
    )
    assert not out[0].any()
    # The 0.5 x 0.6 box covers no pixel centre fully; at most the pixel holding it is set.
    assert out[1].sum() <= 1
    assert out[1][13, 12] == (out[1].sum() == 1)


def _cpu_window(box, img_h, img_w):
    """Detectron2's CPU paste window: the box grown by 1 pixel, outward-rounded, clipped."""
    x0, y0, x1, y1 = box
    cols = slice(max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 1, img_w))
    rows = slice(max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 1, img_h))
    return rows, cols


def test_paste_masks_with_negative_threshold_returns_uint8_of_soft_values():
    masks = _random_masks(len(BOXES), seed=1)
    out = paste_masks_in_image(masks, torch.tensor(BOXES), (IMG_H, IMG_W), threshold=-1)
    assert out.dtype == torch.uint8
    for i, box in enumerate(BOXES):
        soft = _reference_soft_paste(masks[i].numpy(), box, IMG_H, IMG_W)
        # On the CPU, Detectron2 (and so Heron) computes values only inside a window one
        # pixel beyond the box; the bilinear fade past the box edge (up to half a mask
        # cell, here ~2.4 px) is cut there. Thresholded masks are unaffected: outside the
        # box every value is below half the border cell's, so below 0.5.
        rows, cols = _cpu_window(box, IMG_H, IMG_W)
        ref = np.zeros_like(soft)
        ref[rows, cols] = soft[rows, cols] * 255
        got = out[i].numpy().astype(np.float64)
        # uint8 conversion truncates: floor(255 * value), except where 255 * value lies
        # within float32 rounding of an integer.
        clear = np.abs(ref - np.round(ref)) > 1e-3
        np.testing.assert_array_equal(got[clear], np.floor(ref[clear]), err_msg=f"box {i}")
        assert np.abs(got - np.floor(ref + 1e-3)).max() <= 1


def test_paste_masks_accepts_boxes_object_with_tensor_attribute():
    masks = _random_masks(3)
    boxes = torch.tensor(BOXES[:3])
    expected = paste_masks_in_image(masks, boxes, (IMG_H, IMG_W))
    torch.testing.assert_close(
        paste_masks_in_image(masks, _BoxesLike(boxes), (IMG_H, IMG_W)), expected
    )


@pytest.mark.parametrize(("threshold", "dtype"), [(0.5, torch.bool), (-1.0, torch.uint8)])
def test_paste_masks_with_no_instances_is_empty(threshold, dtype):
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6), threshold)
    assert out.shape == (0, 5, 6) and out.dtype == dtype


def test_paste_masks_single_full_image_box_by_hand():
    # A 2x2 mask [[1, 0], [0, 0]] over the 4x4 image: pixel centres 0.5 .. 3.5 map to mask
    # cell coordinates -0.25, 0.25, 0.75, 1.25. Pixel (0, 0) at (-0.25, -0.25): 0.75 * 0.75
    # of cell (0, 0) = 0.5625 -> on; pixel (0, 1) at (0.25, -0.25): 0.75 * 0.75 = 0.5625 -> on;
    # pixel (1, 1) at (0.25, 0.25): 0.75 * 0.75 -> on; pixel (0, 2) at (0.75, -0.25):
    # 0.25 * 0.75 = 0.1875 -> off.
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    out = paste_masks_in_image(mask, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (4, 4))
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    torch.testing.assert_close(out, expected)


def test_paste_masks_rejects_mismatched_boxes():
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\).*got shape \(3, 4\)"):
        paste_masks_in_image(torch.zeros(2, 4, 4), torch.zeros(3, 4), (8, 8))


def test_paste_masks_rejects_non_finite_boxes():
    with pytest.raises(ValueError, match="boxes must be finite"):
        paste_masks_in_image(
            torch.zeros(1, 4, 4), torch.tensor([[0.0, float("nan"), 2.0, 3.0]]), (8, 8)
        )


def test_whole_image_chunked_path_agrees_with_cpu_window_path(monkeypatch):
    masks = _random_masks(len(BOXES), seed=2)
    boxes = torch.tensor(BOXES)
    cpu_bool = paste_masks_in_image(masks, boxes, (IMG_H, IMG_W))
    cpu_uint8 = paste_masks_in_image(masks, boxes, (IMG_H, IMG_W), threshold=-1)
    # Pretend an accelerator with room for 2 masks of 7 image rows at a time.
    limit = 2 * 7 * IMG_W * mask_ops.BYTES_PER_FLOAT
    monkeypatch.setattr(mask_ops, "GPU_MEM_LIMIT", limit)
    sampled = []
    original = mask_ops._sample_masks

    def recording_sample(*args):
        result = original(*args)
        sampled.append(result.numel() * mask_ops.BYTES_PER_FLOAT)
        return result

    monkeypatch.setattr(mask_ops, "_sample_masks", recording_sample)
    chunk_size, skip_empty = mask_ops._chunk_plan(len(BOXES), IMG_H, IMG_W, torch.device("cuda"))
    # ceil(6 * 30 * 40 * 4 / (2 * 7 * 40 * 4)) = ceil(12.86) = 13 chunks -> 1 mask each
    assert (chunk_size, skip_empty) == (1, False)
    chunked_bool = mask_ops._paste_masks(masks, boxes, IMG_H, IMG_W, 0.5, chunk_size, skip_empty)
    chunked_uint8 = mask_ops._paste_masks(masks, boxes, IMG_H, IMG_W, -1, chunk_size, skip_empty)
    # One mask of 40 columns fits 14 rows: ceil(30 / 14) = 3 bands per mask and call.
    assert len(sampled) == 2 * 6 * 3
    assert max(sampled) <= limit
    torch.testing.assert_close(chunked_bool, cpu_bool)
    # Soft values agree inside each CPU window; outside it only the whole-image path
    # keeps the faint fade beyond the box edge (see the uint8 test above).
    for i, box in enumerate(BOXES):
        rows, cols = _cpu_window(box, IMG_H, IMG_W)
        torch.testing.assert_close(chunked_uint8[i][rows, cols], cpu_uint8[i][rows, cols])
        outside = torch.ones(IMG_H, IMG_W, dtype=torch.bool)
        outside[rows, cols] = False
        assert cpu_uint8[i][outside].eq(0).all()
        assert chunked_uint8[i][outside].lt(128).all()


def test_chunk_plan_groups_masks_up_to_the_memory_limit(monkeypatch):
    monkeypatch.setattr(mask_ops, "GPU_MEM_LIMIT", 4 * 100 * 100 * 3)
    # 10 masks of 100x100 floats, 3 fit: ceil(10 / 3) = 4 chunks of ceil(10 / 4) = 3
    assert mask_ops._chunk_plan(10, 100, 100, torch.device("cuda")) == (3, False)
    assert mask_ops._chunk_plan(10, 100, 100, torch.device("cpu")) == (1, True)


def test_paste_mask_in_image_old_resizes_over_truncated_box():
    mask = torch.ones(4, 4)
    # Box truncates to x 1..5, y 2..3: 5 x 2 pixels set.
    out = paste_mask_in_image_old(mask, torch.tensor([1.7, 2.2, 5.9, 3.8]), 6, 8, threshold=0.5)
    expected = torch.zeros(6, 8, dtype=torch.uint8)
    expected[2:4, 1:6] = 1
    torch.testing.assert_close(out, expected)


def test_paste_mask_in_image_old_matches_pil_resize_and_clips_to_image():
    mask = _random_masks(1, size=6)[0]
    box = torch.tensor([-2.0, 1.0, 4.0, 9.0])  # x -2..4 (7 px), y 1..9 (9 px), image 8 x 6
    out = paste_mask_in_image_old(mask, box, 8, 6, threshold=-1)
    resized = np.asarray(Image.fromarray(mask.numpy()).resize((7, 9), resample=Image.BILINEAR))
    expected = np.zeros((8, 6), dtype=np.uint8)
    expected[1:8, 0:5] = (resized[:7, 2:7] * 255).astype(np.uint8)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_paste_mask_in_image_old_padding_grows_box_and_pads_mask():
    mask = torch.ones(4, 4)
    box = torch.tensor([10.0, 10.0, 14.0, 14.0])
    padded = paste_mask_in_image_old(mask, box, 24, 24, threshold=0.5, padding=1)
    # pad 1 cell: 6 / 4 = 1.5x box about its centre 12 -> 9..15; the zero border blends in
    by_hand_mask, scale = pad_masks(mask[None], 1)
    by_hand = paste_mask_in_image_old(
        by_hand_mask[0], scale_boxes(box[None], scale)[0], 24, 24, 0.5
    )
    torch.testing.assert_close(padded, by_hand)
    assert scale == 1.5
    assert padded[:, :9].sum() == 0 and padded[:, 16:].sum() == 0


def test_paste_mask_in_image_old_rejects_inverted_box():
    with pytest.raises(ValueError, match="x1 >= x0"):
        paste_mask_in_image_old(torch.ones(4, 4), torch.tensor([5.0, 0.0, 2.0, 3.0]), 8, 8, 0.5)


def test_pad_masks_adds_zero_border_and_returns_scale():
    masks = torch.ones(2, 4, 4)
    padded, scale = pad_masks(masks, 2)
    assert padded.shape == (2, 8, 8)
    assert scale == 8 / 4
    assert padded.sum() == 2 * 16 and padded[:, 2:6, 2:6].eq(1).all()


def test_pad_masks_with_zero_padding_is_identity():
    masks = torch.rand(1, 3, 3)
    padded, scale = pad_masks(masks, 0)
    torch.testing.assert_close(padded, masks)
    assert scale == 1.0


def test_scale_boxes_scales_about_centre():
    boxes = torch.tensor([[0.0, 2.0, 4.0, 4.0]])
    # centre (2, 3), half sizes (2, 1) * 1.5 = (3, 1.5)
    torch.testing.assert_close(scale_boxes(boxes, 1.5), torch.tensor([[-1.0, 1.5, 5.0, 4.5]]))
    assert scale_boxes(torch.zeros(0, 4), 2.0).shape == (0, 4)
