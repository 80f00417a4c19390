"""Model outputs to the JSON the HTTP API returns.

Instances become a list of dicts (class, score, XYXY box in original-image pixels, mask as
compressed COCO RLE, keypoints), sorted by score, descending; a semantic map becomes the
base64 PNG of its per-pixel argmax; a panoptic output becomes the base64 16-bit PNG of its
segment ids plus its segments_info. Drawing (``visualize=true``) uses
:class:`heron.utils.visualizer.Visualizer`.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from heron.structures.instances import Instances

__all__ = [
    "encode_png",
    "filter_instances",
    "instances_to_json",
    "masks_to_rle",
    "outputs_to_json",
    "panoptic_to_json",
    "render_visualization",
    "sem_seg_to_json",
]

# matplotlib's state (font cache, figure machinery) is not safe to share between threads.
_DRAW_LOCK = threading.Lock()


def encode_png(array: np.ndarray) -> str:
    """Base64 of the PNG of an image.

    Args:
        array: (H, W) uint8 or uint16 map (8- or 16-bit grayscale PNG), or (H, W, 3) uint8
            RGB image.
    """
    from PIL import Image

    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"array must be uint8 or uint16, got {array.dtype}")
    image = Image.fromarray(np.ascontiguousarray(array))  # uint16 (H, W) -> mode "I;16"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def masks_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Compressed COCO RLE of each mask.

    Args:
        masks: (N, H, W) bool or 0/1 masks.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` as ``pycocotools.mask.encode`` makes
        them, with counts decoded to text.
    """
    from pycocotools import mask as mask_util

    if masks.shape[0] == 0:
        return []
    array = masks.detach().to("cpu", torch.uint8).numpy()
    rles = mask_util.encode(np.asfortranarray(array.transpose(1, 2, 0)))  # wants (H, W, N)
    return [
        {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles
    ]


def filter_instances(
    instances: Instances, score_threshold: float = 0.0, class_ids: Sequence[int] | None = None
) -> Instances:
    """The instances with score >= `score_threshold` and class in `class_ids` (None: any),
    sorted by score, descending."""
    keep = torch.ones(len(instances), dtype=torch.bool, device=instances.scores.device)
    if score_threshold > 0:
        keep &= instances.scores >= score_threshold
    if class_ids is not None:
        wanted = torch.as_tensor(list(class_ids), dtype=torch.int64)
        keep &= torch.isin(instances.pred_classes, wanted.to(instances.pred_classes.device))
    kept = instances[keep]
    return kept[torch.argsort(kept.scores, descending=True, stable=True)]


def _class_name(class_names: Sequence[str], class_id: int) -> str:
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class_{class_id}"


def instances_to_json(instances: Instances, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per instance, in the given order.

    Args:
        instances: with pred_boxes (XYXY, original-image pixels), scores, pred_classes, and
            optionally pred_masks (N, H, W) and pred_keypoints (N, K, 3) as (x, y, score).
        class_names: names indexed by class id; ids beyond them are named "class_<id>".
    """
    instances = instances.to("cpu")
    boxes = instances.pred_boxes.tensor.tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    results = [
        {
            "class_id": int(c),
            "class_name": _class_name(class_names, int(c)),
            "score": float(s),
            "box": [float(v) for v in box],
        }
        for box, s, c in zip(boxes, scores, classes)
    ]
    if instances.has("pred_masks"):
        masks = instances.pred_masks
        if masks.dim() == 4:  # (N, 1, H, W)
            masks = masks[:, 0]
        for result, rle in zip(
            results, masks_to_rle(masks > 0.5 if masks.is_floating_point() else masks)
        ):
            result["mask"] = rle
    if instances.has("pred_keypoints"):
        keypoints = instances.pred_keypoints
        keypoints = getattr(keypoints, "tensor", keypoints).tolist()
        for result, points in zip(results, keypoints):
            result["keypoints"] = [[float(v) for v in p] for p in points]
    return results


def sem_seg_to_json(sem_seg: torch.Tensor, stuff_classes: Sequence[str]) -> dict[str, Any]:
    """The per-pixel argmax of a semantic-segmentation output as a PNG.

    Args:
        sem_seg: (C, H, W) per-class scores or logits.
        stuff_classes: the names of the C classes.

    Returns:
        ``{"png": base64 of an (H, W) class-id PNG, 8-bit for up to 255 classes, 16-bit
        beyond, "classes": stuff_classes}``.
    """
    num_classes = sem_seg.shape[0]
    labels = sem_seg.argmax(dim=0).to("cpu").numpy()
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    return {"png": encode_png(labels.astype(dtype)), "classes": list(stuff_classes)}


def panoptic_to_json(panoptic_seg: torch.Tensor, segments_info: list[dict]) -> dict[str, Any]:
    """A panoptic output as a 16-bit PNG of segment ids and its segments.

    Args:
        panoptic_seg: (H, W) int segment id per pixel, 0 for none.
        segments_info: one dict per segment with "id", "category_id", "isthing" and, for
            things, "score".

    Returns:
        ``{"png": base64 16-bit PNG of the ids, "segments_info": [{"id", "category_id",
        "isthing", "score" (when given), "area" (pixels with that id)}]}``.
    """
    seg = panoptic_seg.to("cpu").numpy()
    ids, counts = np.unique(seg, return_counts=True)
    areas = dict(zip(ids.tolist(), counts.tolist()))
    segments = []
    for info in segments_info:
        segment = {
            "id": int(info["id"]),
            "category_id": int(info["category_id"]),
            "isthing": bool(info["isthing"]),
        }
        if "score" in info:
            segment["score"] = float(info["score"])
        segment["area"] = int(areas.get(int(info["id"]), 0))
        segments.append(segment)
    return {"png": encode_png(seg.astype(np.uint16)), "segments_info": segments}


def render_visualization(image_bgr: np.ndarray, outputs: dict[str, Any], metadata: Any) -> str:
    """Base64 PNG of the image with `outputs` drawn on it, at the image's size.

    Draws the panoptic map if present, else the semantic map and the instances, whichever
    are present (as ``heron predict`` does).
    """
    from heron.utils.visualizer import ColorMode, Visualizer

    with _DRAW_LOCK:
        visualizer = Visualizer(image_bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        vis = visualizer.output
        if "panoptic_seg" in outputs:
            panoptic_seg, segments_info = outputs["panoptic_seg"]
            vis = visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info)
        else:
            if "sem_seg" in outputs:
                vis = visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).to("cpu"))
            if "instances" in outputs:
                vis = visualizer.draw_instance_predictions(outputs["instances"].to("cpu"))
        drawn = vis.get_image()
    return encode_png(drawn)


def outputs_to_json(
    outputs: dict[str, Any],
    *,
    thing_classes: Sequence[str],
    stuff_classes: Sequence[str],
    score_threshold: float = 0.0,
    class_ids: Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON fields of one model output, and the output with its instances filtered.

    Args:
        outputs: the model's output for one image: "instances", "sem_seg" and/or
            "panoptic_seg".
        thing_classes: names of the instance classes.
        stuff_classes: names of the semantic classes.
        score_threshold: instances scoring below it are left out.
        class_ids: only instances of these classes are returned (None: all).

    Returns:
        (fields, filtered): fields holds "instances" (always), "sem_seg" and "panoptic_seg"
        when the model made them; `filtered` is `outputs` with the kept instances, for
        drawing.
    """
    fields: dict[str, Any] = {"instances": []}
    filtered = dict(outputs)
    if "instances" in outputs:
        kept = filter_instances(outputs["instances"], score_threshold, class_ids)
        filtered["instances"] = kept
        fields["instances"] = instances_to_json(kept, thing_classes)
    if "sem_seg" in outputs:
        fields["sem_seg"] = sem_seg_to_json(outputs["sem_seg"], stuff_classes)
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        fields["panoptic_seg"] = panoptic_to_json(panoptic_seg, segments_info)
    return fields, filtered
