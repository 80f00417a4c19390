"""Map raw model outputs back to the caller's image size."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from heron.structures.instances import Instances
from heron.structures.masks import ROIMasks

__all__ = ["detector_postprocess", "sem_seg_postprocess"]


def detector_postprocess(
    results: Instances,
    output_height: int | Tensor,
    output_width: int | Tensor,
    mask_threshold: float = 0.5,
) -> Instances:
    """Rescale detections from the network's input size to (output_height, output_width).

    Boxes are scaled and clipped, and empty ones dropped; mask-head outputs (R, 1, M, M)
    are pasted into full-size bool masks; keypoints are scaled.

    Args:
        results: detections whose ``image_size`` is the resized input's (h, w).
        output_height, output_width: the wanted size, usually the original image's.
        mask_threshold: threshold for pasted masks (< 0 keeps soft uint8 masks).
    """
    if isinstance(output_width, Tensor):
        # Tensors (when tracing) keep the sizes dynamic.
        out_w, out_h = output_width.float(), output_height.float()
        new_size = torch.stack([output_height, output_width])
    else:
        out_w, out_h = output_width, output_height
        new_size = (output_height, output_width)
    scale_x = out_w / results.image_size[1]
    scale_y = out_h / results.image_size[0]
    results = Instances(new_size, **results.get_fields())

    if results.has("pred_boxes"):
        output_boxes = results.pred_boxes
    elif results.has("proposal_boxes"):
        output_boxes = results.proposal_boxes
    else:
        raise ValueError(
            f"detector_postprocess needs pred_boxes or proposal_boxes; fields are "
            f"{list(results.get_fields())}"
        )
    output_boxes.scale(scale_x, scale_y)
    output_boxes.clip(results.image_size)
    results = results[output_boxes.nonempty()]

    if results.has("pred_masks"):
        masks = results.pred_masks
        roi_masks = masks if isinstance(masks, ROIMasks) else ROIMasks(masks[:, 0, :, :])
        results.pred_masks = roi_masks.to_bitmasks(
            results.pred_boxes, output_height, output_width, mask_threshold
        ).tensor
    if results.has("pred_keypoints"):
        results.pred_keypoints[:, :, 0] *= scale_x
        results.pred_keypoints[:, :, 1] *= scale_y
    return results


def sem_seg_postprocess(
    result: Tensor, img_size: tuple[int, int], output_height: int, output_width: int
) -> Tensor:
    """Crop padded (C, H, W) logits to ``img_size`` and resize to the output size.

    Bilinear with align_corners=False, as Detectron2.
    """
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(
        result, size=(output_height, output_width), mode="bilinear", align_corners=False
    )[0]
