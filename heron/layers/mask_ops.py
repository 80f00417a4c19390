"""Paste fixed-size mask predictions (e.g. 28 x 28) into full-image masks.

`paste_masks_in_image` computes exactly what Detectron2's function of that name computes
(same pixel model, same `grid_sample` call, same order of operations), so pasted masks
match its output pixel for pixel.

Pixel model: image pixel (i, j) is the unit square [j, j + 1) x [i, i + 1) with its value
at the centre (j + 0.5, i + 0.5). A box (x0, y0, x1, y1) is stretched over the whole mask,
so a pixel centre maps to the normalized mask coordinate `(x + 0.5 - x0) / (x1 - x0) * 2 - 1`
and the mask is sampled bilinearly there (`align_corners=False`, zero outside the mask).

Shapes:
    N: number of instances; Hm, Wm: mask resolution; H, W: image height and width.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

__all__ = ["pad_masks", "paste_mask_in_image_old", "paste_masks_in_image", "scale_boxes"]

BYTES_PER_FLOAT = 4
# Most float32 bytes that one pasting step may produce at once on an accelerator (1 GiB).
# Masks are pasted in chunks of instances, and in bands of rows when a single mask would
# exceed it, so no step ever materializes N * H * W floats for a large N or image.
GPU_MEM_LIMIT = 1024**3


def _box_window(boxes: Tensor, img_h: int, img_w: int) -> tuple[int, int, int, int]:
    """Pixel window (y0, y1, x0, x1), half-open, that holds every pixel the boxes can touch.

    The union of the boxes grown by one pixel on each side, clipped to the image, as
    Detectron2's `_do_paste_mask(skip_empty=True)` computes it. The window may be empty.
    """
    x0_y0 = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0)
    x1 = torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w)
    y1 = torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h)
    corners = torch.stack([x0_y0[1], y1, x0_y0[0], x1])
    if not bool(torch.isfinite(corners).all()):
        raise ValueError(f"paste_masks_in_image: boxes must be finite, got {boxes.tolist()}")
    y0_int, y1_int, x0_int, x1_int = (int(v) for v in corners.tolist())
    return y0_int, y1_int, x0_int, x1_int


def _sample_masks(
    masks: Tensor, boxes: Tensor, rows: tuple[int, int], cols: tuple[int, int]
) -> Tensor:
    """Sample masks at the centres of the image pixels in rows x cols (half-open ranges).

    Args:
        masks: (n, 1, Hm, Wm) soft masks.
        boxes: (n, 4) XYXY boxes in image pixels, one per mask.
        rows, cols: [start, stop) pixel ranges of the image window to fill.

    Returns:
        (n, stop_y - start_y, stop_x - start_x) sampled values, in the masks' float dtype.
    """
    device = masks.device
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)  # each (n, 1)
    img_y = torch.arange(rows[0], rows[1], device=device, dtype=torch.float32) + 0.5
    img_x = torch.arange(cols[0], cols[1], device=device, dtype=torch.float32) + 0.5
    # Same expression and order as Detectron2's _do_paste_mask, so results agree bitwise.
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # (n, h)
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # (n, w)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)  # (n, h, w, 2), (x, y) in [-1, 1] inside the box
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    return F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)[:, 0]


def _paste_chunk(
    masks: Tensor,
    boxes: Tensor,
    out: Tensor,
    start: int,
    threshold: float,
    skip_empty: bool,
) -> None:
    """Paste masks[i] into out[start + i] for one chunk of instances, band by band.

    With `skip_empty`, only the window around the chunk's boxes is computed (everything
    outside stays 0); otherwise the whole image is.
    """
    img_h, img_w = out.shape[-2:]
    if skip_empty:
        y0, y1, x0, x1 = _box_window(boxes, img_h, img_w)
    else:
        y0, y1, x0, x1 = 0, img_h, 0, img_w
    if y1 <= y0 or x1 <= x0:
        return  # every box lies outside the image
    n = masks.shape[0]
    rows_per_band = max(1, GPU_MEM_LIMIT // (n * (x1 - x0) * BYTES_PER_FLOAT))
    for band_y0 in range(y0, y1, rows_per_band):
        band_y1 = min(band_y0 + rows_per_band, y1)
        soft = _sample_masks(masks[:, None], boxes, (band_y0, band_y1), (x0, x1))
        if threshold >= 0:
            pasted = soft >= threshold
        else:
            pasted = (soft * 255).to(dtype=torch.uint8)  # for visualization and debugging
        out[start : start + n, band_y0:band_y1, x0:x1] = pasted


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor | Any, image_shape: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste per-instance soft masks into image-sized masks, each stretched over its box.

    As in Detectron2, on the CPU masks are pasted one at a time and only inside a window
    one pixel beyond the box (the fastest there); on other devices, in chunks over the
    whole image, the chunk sized to `GPU_MEM_LIMIT` (and split into row bands when one
    mask alone would exceed it). Thresholded masks agree between the two. Soft (uint8)
    masks differ past the window, where the CPU writes 0 and the whole-image path keeps
    the faint bilinear fade (< 0.5) that reaches up to half a mask cell beyond the box.
    While tracing or exporting, every mask is sampled over the whole image, whose size may
    be a traced tensor (`_paste_masks_in_graph`).

    Args:
        masks: (N, Hm, Wm) soft masks with values in [0, 1].
        boxes: (N, 4) XYXY boxes in image pixels, as a tensor or a `Boxes`-like object
            with a `.tensor` attribute; boxes[i] belongs to masks[i].
        image_shape: (H, W) of the image.
        threshold: if >= 0, return bool masks of value >= threshold; if < 0, return the
            soft masks as uint8 `int(value * 255)` (for visualization).

    Returns:
        (N, H, W) bool masks (threshold >= 0) or uint8 masks in [0, 255] (threshold < 0),
        on the boxes' device.
    """
    if not isinstance(boxes, Tensor):
        boxes = boxes.tensor
    if masks.dim() != 3:
        raise ValueError(
            f"paste_masks_in_image: masks must be (N, Hm, Wm), got shape {tuple(masks.shape)}"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
        raise ValueError(
            f"paste_masks_in_image: boxes must be ({masks.shape[0]}, 4) to match masks "
            f"{tuple(masks.shape)}, got shape {tuple(boxes.shape)}"
        )
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return _paste_masks_in_graph(masks, boxes, image_shape, threshold)
    img_h, img_w = (int(s) for s in image_shape)
    chunk_size, skip_empty = _chunk_plan(masks.shape[0], img_h, img_w, boxes.device)
    return _paste_masks(masks, boxes, img_h, img_w, threshold, chunk_size, skip_empty)


def _paste_masks_in_graph(
    masks: Tensor, boxes: Tensor, image_shape: tuple[Any, Any], threshold: float
) -> Tensor:
    """`paste_masks_in_image` for traced and exported graphs: every mask over the whole image.

    The eager paths turn the image size and the box window into Python ints, which a
    trace would freeze to the sample's values. Here the image size may stay a traced
    tensor and nothing depends on the boxes' values, so the graph pastes at any size.
    Thresholded results equal the eager ones (sampling is the same; only the window that
    eager mode skips, where every value is < 0.5 of a mask cell's fade, differs).
    """
    img_h, img_w = image_shape
    soft = _sample_masks(masks[:, None], boxes, (0, img_h), (0, img_w))
    if threshold >= 0:
        return soft >= threshold
    return (soft * 255).to(dtype=torch.uint8)


def _chunk_plan(num_masks: int, img_h: int, img_w: int, device: torch.device) -> tuple[int, bool]:
    """(instances per chunk, skip_empty) for pasting on `device`, as Detectron2 chooses.

    The CPU pastes one mask at a time inside its box window. Other devices paste whole
    images, as many masks at once as fit in GPU_MEM_LIMIT (at least one; `_paste_chunk`
    splits a mask that alone exceeds it into row bands).
    """
    if device.type == "cpu":
        return 1, True
    num_chunks = math.ceil(num_masks * img_h * img_w * BYTES_PER_FLOAT / GPU_MEM_LIMIT)
    return max(1, math.ceil(num_masks / max(num_chunks, 1))), False


def _paste_masks(
    masks: Tensor,
    boxes: Tensor,
    img_h: int,
    img_w: int,
    threshold: float,
    chunk_size: int,
    skip_empty: bool,
) -> Tensor:
    """Paste (N, Hm, Wm) masks into (N, img_h, img_w), `chunk_size` instances at a time."""
    num_masks = masks.shape[0]
    out_dtype = torch.bool if threshold >= 0 else torch.uint8
    img_masks = torch.zeros(num_masks, img_h, img_w, device=boxes.device, dtype=out_dtype)
    for start in range(0, num_masks, chunk_size):
        stop = min(start + chunk_size, num_masks)
        _paste_chunk(masks[start:stop], boxes[start:stop], img_masks, start, threshold, skip_empty)
    return img_masks


def paste_mask_in_image_old(
    mask: Tensor, box: Tensor, img_h: int, img_w: int, threshold: float, padding: int = 0
) -> Tensor:
    """Paste one mask the legacy (Detectron1) way: resize to the box's pixel span, then copy.

    The box is truncated to integer pixels (x0, y0, x1, y1), the mask is resized with
    PIL bilinear to (x1 - x0 + 1) x (y1 - y0 + 1) pixels and copied there, clipped to the
    image. Coarser than `paste_masks_in_image` (it ignores the sub-pixel box position).

    Args:
        mask: (Hm, Wm) soft mask in [0, 1].
        box: (4,) XYXY box in image pixels.
        img_h, img_w: image size.
        threshold: if >= 0, the result is uint8 0/1 of value > threshold; if < 0, uint8
            `int(value * 255)`.
        padding: cells of zeros to add around the mask first (with the box grown to
            match via `pad_masks` / `scale_boxes`), so that the resize blends the border
            into zero; 0 pastes the mask as is (Detectron2's behaviour), 1 is Detectron1's.

    Returns:
        (img_h, img_w) uint8 mask on `mask`'s device.
    """
    if mask.dim() != 2 or box.shape != (4,):
        raise ValueError(
            f"paste_mask_in_image_old: need mask (Hm, Wm) and box (4,), "
            f"got {tuple(mask.shape)} and {tuple(box.shape)}"
        )
    if padding > 0:
        padded, scale = pad_masks(mask[None], padding)
        mask, box = padded[0], scale_boxes(box[None].float(), scale)[0]
    # Truncation toward zero, as Detectron1: a box from x=0.7 to 4.3 covers pixels 0..4,
    # that is 5 = x1 - x0 + 1 samples.
    x0, y0, x1, y1 = box.to(dtype=torch.int32).tolist()
    samples_w, samples_h = x1 - x0 + 1, y1 - y0 + 1
    if samples_w <= 0 or samples_h <= 0:
        raise ValueError(
            f"paste_mask_in_image_old: box must have x1 >= x0 and y1 >= y0, got {box.tolist()}"
        )

    resized = Image.fromarray(mask.detach().cpu().float().numpy())
    resized = np.asarray(resized.resize((samples_w, samples_h), resample=Image.BILINEAR))
    if threshold >= 0:
        pasted = torch.from_numpy((resized > threshold).astype(np.uint8))
    else:
        pasted = torch.from_numpy(resized * 255).to(torch.uint8)

    im_mask = torch.zeros((img_h, img_w), dtype=torch.uint8, device=mask.device)
    px0, px1 = max(x0, 0), min(x1 + 1, img_w)
    py0, py1 = max(y0, 0), min(y1 + 1, img_h)
    if px1 > px0 and py1 > py0:
        im_mask[py0:py1, px0:px1] = pasted[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0].to(mask.device)
    return im_mask


def pad_masks(masks: Tensor, padding: int) -> tuple[Tensor, float]:
    """Surround square masks with `padding` cells of zeros on every side.

    Args:
        masks: (B, M, M) masks.
        padding: number of cells to add on each side.

    Returns:
        (B, M + 2 * padding, M + 2 * padding) padded masks, and the scale
        (M + 2 * padding) / M by which a box must grow (`scale_boxes`) to keep the
        original cells where they were.
    """
    if padding < 0:
        raise ValueError(f"pad_masks: padding must be >= 0, got {padding}")
    num, height, width = masks.shape
    scale = float(width + 2 * padding) / width
    padded = masks.new_zeros((num, height + 2 * padding, width + 2 * padding))
    padded[:, padding : padding + height, padding : padding + width] = masks
    return padded, scale


def scale_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale XYXY boxes about their centres.

    Args:
        boxes: (B, 4) XYXY boxes.
        scale: factor applied to each box's width and height.

    Returns:
        (B, 4) scaled boxes.
    """
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    scaled = torch.zeros_like(boxes)
    scaled[:, 0] = x_c - w_half
    scaled[:, 2] = x_c + w_half
    scaled[:, 1] = y_c - h_half
    scaled[:, 3] = y_c + h_half
    return scaled
