"""Heron's test-time pre- and postprocessing in numpy, for deployment without PyTorch.

Each function computes what its PyTorch counterpart in Heron computes (which in turn
follows Detectron2), in float32 and in the same order of operations where that decides
the result:

- `get_output_shape`, `resize_shortest_edge`: `ResizeShortestEdge.get_output_shape` and
  `ResizeTransform.apply_image` (PIL bilinear on uint8), heron/data/transforms.
- `detector_postprocess`: heron/modeling/postprocessing.py `detector_postprocess`.
- `paste_masks_in_image`: heron/layers/mask_ops.py (Detectron2's grid_sample-based paste).
- `sem_seg_postprocess`: heron/modeling/postprocessing.py (`F.interpolate` bilinear,
  align_corners=False).
- `combine_semantic_and_instance_outputs`: heron/modeling/meta_arch/panoptic_fpn.py.

Only numpy and Pillow are imported here.

Shapes:
    N: detections; K: keypoints per detection; C: semantic classes; M: mask resolution;
    H, W: network input (resized) size; h, w: original image size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "combine_semantic_and_instance_outputs",
    "detector_postprocess",
    "get_output_shape",
    "interpolate_bilinear",
    "paste_masks_in_image",
    "resize_shortest_edge",
    "sem_seg_postprocess",
]


def get_output_shape(
    oldh: int, oldw: int, short_edge_length: int, max_size: int
) -> tuple[int, int]:
    """Size (h, w) that ResizeShortestEdge gives an (oldh, oldw) image.

    The short side becomes `short_edge_length`; if the long side would then exceed
    `max_size`, both are scaled down so it equals `max_size`. Sizes round as int(x + 0.5),
    Detectron2's rule. Example: (417, 650), 480, 640 -> (411, 640).
    """
    size = short_edge_length * 1.0
    scale = size / min(oldh, oldw)
    if oldh < oldw:
        new_h, new_w = size, scale * oldw
    else:
        new_h, new_w = scale * oldh, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_shortest_edge(image: np.ndarray, short_edge_length: int, max_size: int) -> np.ndarray:
    """Resize an image as Heron's test-time ResizeShortestEdge does (PIL bilinear on uint8).

    Args:
        image: (h, w, 3) uint8 image, any channel order (channels are resized alike).
        short_edge_length: the target short side (cfg.INPUT.MIN_SIZE_TEST); 0 means no resize.
        max_size: cap on the long side (cfg.INPUT.MAX_SIZE_TEST).

    Returns:
        (H, W, 3) uint8 resized image (the input itself when `short_edge_length` is 0).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"resize_shortest_edge: image must be (H, W, 3) uint8, got shape "
            f"{tuple(image.shape)} dtype {image.dtype}"
        )
    if short_edge_length == 0:
        return image
    new_h, new_w = get_output_shape(image.shape[0], image.shape[1], short_edge_length, max_size)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (new_w, new_h), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def detector_postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    mask_probs: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    mask_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Map detections from the network input's size to the original image's.

    Boxes are scaled by (w / W, h / H), clipped to the image and the empty ones (zero
    width or height) dropped with their scores, classes, masks and keypoints; masks are
    pasted into (h, w) bool masks; keypoint x, y are scaled.

    Args:
        boxes: (N, 4) XYXY boxes in network-input pixels.
        scores: (N,) scores. classes: (N,) int64 class ids.
        input_size: (H, W) of the network input. output_size: (h, w) of the original.
        mask_probs: (N, 1, M, M) or (N, M, M) mask probabilities, or None.
        keypoints: (N, K, 3) (x, y, score) in network-input pixels, or None.
        mask_threshold: pasted pixels with value >= it are True (< 0: uint8 soft masks).

    Returns:
        dict with "boxes" (n, 4) float32, "scores" (n,) float32, "classes" (n,) int64, and
        "masks" (n, h, w) bool and "keypoints" (n, K, 3) float32 when given; n <= N.
    """
    out_h, out_w = (int(s) for s in output_size)
    # Python floats, as Detectron2's scale_x; float32 arrays times them stay float32.
    scale_x = out_w / input_size[1]
    scale_y = out_h / input_size[0]
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        row = int(np.nonzero(~np.isfinite(boxes).all(axis=1))[0][0])
        raise ValueError(f"detector_postprocess: box {row} is not finite: {boxes[row].tolist()}")
    boxes[:, 0::2] *= np.float32(scale_x)
    boxes[:, 1::2] *= np.float32(scale_y)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, out_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, out_h)
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)

    result = {
        "boxes": boxes[keep],
        "scores": np.asarray(scores, dtype=np.float32)[keep],
        "classes": np.asarray(classes, dtype=np.int64)[keep],
    }
    if mask_probs is not None:
        probs = np.asarray(mask_probs, dtype=np.float32)
        if probs.ndim == 4:
            probs = probs[:, 0]
        result["masks"] = paste_masks_in_image(
            probs[keep], result["boxes"], (out_h, out_w), mask_threshold
        )
    if keypoints is not None:
        kpts = np.array(keypoints, dtype=np.float32)[keep]
        kpts[:, :, 0] *= np.float32(scale_x)
        kpts[:, :, 1] *= np.float32(scale_y)
        result["keypoints"] = kpts
    return result


def paste_masks_in_image(
    masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Paste per-instance soft masks into image-sized masks, each stretched over its box.

    Image pixel (i, j) takes the mask's bilinear value (zero outside the mask) at the
    normalized coordinate of its centre, `(x + 0.5 - x0) / (x1 - x0) * 2 - 1`, exactly as
    `grid_sample(align_corners=False)` in Heron's and Detectron2's `paste_masks_in_image`.
    As their CPU path does, each mask is computed only inside its box grown by one pixel;
    pixels beyond hold values < 0.5, so thresholded masks are the same either way.

    Args:
        masks: (N, M, M) soft masks in [0, 1] (any (N, Hm, Wm) works).
        boxes: (N, 4) XYXY boxes in image pixels.
        image_shape: (h, w) of the image.
        threshold: >= 0: bool masks of value >= threshold; < 0: uint8 int(value * 255).

    Returns:
        (N, h, w) bool masks, or uint8 when threshold < 0.
    """
    masks = np.asarray(masks, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(
            f"paste_masks_in_image: masks must be (N, Hm, Wm), got shape {tuple(masks.shape)}"
        )
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(
            f"paste_masks_in_image: boxes must be ({masks.shape[0]}, 4) to match masks "
            f"{tuple(masks.shape)}, got shape {tuple(boxes.shape)}"
        )
    img_h, img_w = (int(s) for s in image_shape)
    out = np.zeros((masks.shape[0], img_h, img_w), dtype=bool if threshold >= 0 else np.uint8)
    for i in range(masks.shape[0]):
        y0, y1, x0, x1 = _box_window(boxes[i], img_h, img_w)
        if y1 <= y0 or x1 <= x0:
            continue  # the box lies outside the image
        soft = _sample_mask(masks[i], boxes[i], (y0, y1), (x0, x1))
        if threshold >= 0:
            out[i, y0:y1, x0:x1] = soft >= threshold
        else:
            out[i, y0:y1, x0:x1] = (soft * 255).astype(np.uint8)
    return out


def _box_window(box: np.ndarray, img_h: int, img_w: int) -> tuple[int, int, int, int]:
    """Half-open pixel window (y0, y1, x0, x1): the box grown by one pixel, clipped."""
    if not np.isfinite(box).all():
        raise ValueError(f"paste_masks_in_image: boxes must be finite, got {box.tolist()}")
    x0 = max(math.floor(box[0]) - 1, 0)
    y0 = max(math.floor(box[1]) - 1, 0)
    x1 = min(math.ceil(box[2]) + 1, img_w)
    y1 = min(math.ceil(box[3]) + 1, img_h)
    return int(y0), int(y1), int(x0), int(x1)


def _sample_mask(
    mask: np.ndarray, box: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Bilinear samples of one (Hm, Wm) mask at the pixel centres of rows x cols.

    Float32 in grid_sample's order (normalize to [-1, 1], unnormalize, floor, corner
    weights, fused multiply-adds), so values agree bitwise with PyTorch's CPU kernel.
    """
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    img_y = np.arange(rows[0], rows[1], dtype=np.float32) + np.float32(0.5)
    img_x = np.arange(cols[0], cols[1], dtype=np.float32) + np.float32(0.5)
    # The same expression as Detectron2's _do_paste_mask.
    with np.errstate(divide="ignore", invalid="ignore"):
        grid_y = (img_y - y0) / (y1 - y0) * np.float32(2) - np.float32(1)
        grid_x = (img_x - x0) / (x1 - x0) * np.float32(2) - np.float32(1)
    mask_h, mask_w = mask.shape
    src_y = _unnormalize(grid_y, mask_h)  # (h,) mask row coordinate of each pixel row
    src_x = _unnormalize(grid_x, mask_w)  # (w,)
    return _bilinear_zero_padded(mask, src_y, src_x)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once to float32, as a fused multiply-add instruction computes it.

    PyTorch's vectorized CPU grid sampler (AVX2/AVX-512 builds) fuses these multiply-adds;
    reproducing them makes pasted values agree bitwise with it. The float32 product is exact
    in float64, so only the final rounding (a double rounding, off in rare ties) differs.
    """
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + c).astype(np.float32)


def _unnormalize(grid: np.ndarray, size: int) -> np.ndarray:
    """grid_sample's align_corners=False map from [-1, 1] to pixel coordinates (float32).

    (grid + 1) * size / 2 - 0.5, evaluated as PyTorch's CPU kernel does: one fused
    multiply-add grid * (size / 2) + (size / 2 - 0.5).
    """
    half = np.float32(size / 2)
    return _fma(grid, half, np.float64(half - np.float32(0.5)))


def _bilinear_zero_padded(mask: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """(len(src_y), len(src_x)) bilinear samples of `mask`, zero outside it (float32)."""
    mask_h, mask_w = mask.shape
    # Only coordinates in (-1, size) touch the mask. Clamping the rest (also the NaN and inf
    # of a degenerate box, x1 == x0) keeps them outside, where they sample 0, and keeps the
    # integer casts below in range.
    src_y = np.clip(np.nan_to_num(src_y, nan=-2.0), -2, mask_h + 1)
    src_x = np.clip(np.nan_to_num(src_x, nan=-2.0), -2, mask_w + 1)
    y_n = np.floor(src_y)
    x_w = np.floor(src_x)
    frac_y = src_y - y_n  # weight of the south (lower) row
    frac_x = src_x - x_w  # weight of the east (right) column
    y_n = y_n.astype(np.int64)
    x_w = x_w.astype(np.int64)
    # Corner values, 0 where a corner lies outside the mask (padding_mode="zeros").
    padded = np.zeros((mask_h + 2, mask_w + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = mask
    # Indices into `padded`: a corner outside the mask is clipped onto the zero border.
    yi = np.clip(y_n, -1, mask_h) + 1
    xi = np.clip(x_w, -1, mask_w) + 1
    yi_s = np.clip(y_n + 1, -1, mask_h) + 1
    xi_e = np.clip(x_w + 1, -1, mask_w) + 1
    nw = padded[yi[:, None], xi[None, :]]
    ne = padded[yi[:, None], xi_e[None, :]]
    sw = padded[yi_s[:, None], xi[None, :]]
    se = padded[yi_s[:, None], xi_e[None, :]]
    n = frac_y[:, None]
    s = np.float32(1) - n
    w = frac_x[None, :]
    e = np.float32(1) - w
    # nw * (s * e) + ne * (s * w) + sw * (n * e) + se * (n * w), accumulated with fused
    # multiply-adds in this order, as PyTorch's CPU kernel does.
    out = nw * (s * e)
    out = _fma(ne, s * w, out)
    out = _fma(sw, n * e, out)
    return _fma(se, n * w, out)


def interpolate_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (C, H, W) maps to (C, *size) as `F.interpolate(bilinear, align_corners=False)`.

    Output pixel i samples source coordinate max((i + 0.5) * H / h - 0.5, 0), clamped to
    the last row/column (PyTorch's area_pixel_compute_source_index). Along each axis the
    two taps are blended with one fused multiply-add, as PyTorch's x86 CPU kernel does
    for the width and height passes; results agree with it to a few float32 ulps.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"interpolate_bilinear: x must be (C, H, W), got shape {x.shape}")
    out_h, out_w = (int(s) for s in size)
    rows0, rows1, row_l0, row_l1 = _linear_taps(x.shape[1], out_h)
    cols0, cols1, col_l0, col_l1 = _linear_taps(x.shape[2], out_w)
    # Width first, on the two source rows each output row reads.
    col_l0, col_l1 = col_l0[None, None, :], col_l1[None, None, :]
    top = _fma(x[:, rows0][:, :, cols0], col_l0, x[:, rows0][:, :, cols1] * col_l1)
    bottom = _fma(x[:, rows1][:, :, cols0], col_l0, x[:, rows1][:, :, cols1] * col_l1)
    row_l0, row_l1 = row_l0[None, :, None], row_l1[None, :, None]
    return _fma(bottom, row_l1, top * row_l0)


def _linear_taps(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index of one axis: source indices i0, i1 and their weights l0, l1."""
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = np.maximum(_fma(centres, scale, np.float64(-0.5)), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, np.float32(1) - l1, l1


def sem_seg_postprocess(
    result: np.ndarray, img_size: tuple[int, int], output_height: int, output_width: int
) -> np.ndarray:
    """Crop (C, H', W') logits to `img_size` (H, W) and resize them to the output size.

    Args:
        result: (C, H', W') semantic logits, H' >= H and W' >= W (padding is cropped).
        img_size: (H, W) of the network input before padding.
        output_height, output_width: the original image's size.

    Returns:
        (C, output_height, output_width) float32 logits.
    """
    result = np.asarray(result, dtype=np.float32)
    if result.ndim != 3:
        raise ValueError(
            f"sem_seg_postprocess: result must be (C, H, W) logits, got shape {result.shape}"
        )
    cropped = result[:, : img_size[0], : img_size[1]]
    return interpolate_bilinear(cropped, (output_height, output_width))


def combine_semantic_and_instance_outputs(
    instance_scores: np.ndarray,
    instance_classes: np.ndarray,
    instance_masks: np.ndarray,
    semantic_results: np.ndarray,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Merge instance masks and a semantic label map into one panoptic segmentation.

    PanopticFPN's rule: instances in decreasing score order each take the pixels no
    earlier segment took; the first one scoring below `instances_score_thresh` ends the
    pass, an empty mask is skipped, and so is a mask overlapping earlier segments in more
    than `overlap_threshold` of its area. Then every semantic label but 0 (the merged
    "things" class) takes its still-free pixels if they number at least
    `stuff_area_thresh`. Segment ids count from 1 in creation order; 0 is unassigned.

    Args:
        instance_scores: (N,) scores. instance_classes: (N,) int class ids.
        instance_masks: (N, h, w) bool masks at the label map's size.
        semantic_results: (h, w) int semantic labels (argmax of the logits).
        overlap_threshold, stuff_area_thresh, instances_score_thresh: as above.

    Returns:
        panoptic_seg: (h, w) int32 segment ids.
        segments_info: one dict per segment in id order; things {"id", "isthing": True,
            "score", "category_id", "instance_id" (index into the instances)}, stuff
            {"id", "isthing": False, "category_id", "area"}.
    """
    semantic_results = np.asarray(semantic_results)
    instance_masks = np.asarray(instance_masks, dtype=bool)
    if semantic_results.ndim != 2:
        raise ValueError(
            f"semantic_results must be an (H, W) label map, got shape {semantic_results.shape}"
        )
    if instance_masks.shape[1:] != semantic_results.shape:
        raise ValueError(
            f"instance_masks of shape {instance_masks.shape} do not match semantic_results "
            f"of shape {semantic_results.shape}"
        )
    scores = np.asarray(instance_scores, dtype=np.float32)
    panoptic_seg = np.zeros(semantic_results.shape, dtype=np.int32)
    segments_info: list[dict[str, Any]] = []
    segment_id = 0
    # Stable sort: equal scores keep index order (torch.argsort may order ties otherwise).
    for inst_id in np.argsort(-scores, kind="stable").tolist():
        score = float(scores[inst_id])
        if score < instances_score_thresh:
            break
        mask = instance_masks[inst_id]
        mask_area = int(mask.sum())
        if mask_area == 0:
            continue
        intersect_area = int((mask & (panoptic_seg > 0)).sum())
        if intersect_area * 1.0 / mask_area > overlap_threshold:
            continue
        if intersect_area > 0:
            mask = mask & (panoptic_seg == 0)
        segment_id += 1
        panoptic_seg[mask] = segment_id
        segments_info.append(
            {
                "id": segment_id,
                "isthing": True,
                "score": score,
                "category_id": int(instance_classes[inst_id]),
                "instance_id": inst_id,
            }
        )
    for semantic_label in np.unique(semantic_results).tolist():
        if semantic_label == 0:  # the semantic head's single "things" class
            continue
        mask = (semantic_results == semantic_label) & (panoptic_seg == 0)
        mask_area = int(mask.sum())
        if mask_area < stuff_area_thresh:
            continue
        segment_id += 1
        panoptic_seg[mask] = segment_id
        segments_info.append(
            {"id": segment_id, "isthing": False, "category_id": semantic_label, "area": mask_area}
        )
    return panoptic_seg, segments_info
