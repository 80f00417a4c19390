"""Draw predictions on video frames, keeping each tracked object's color across frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch

from heron.utils.colormap import random_color
from heron.utils.visualizer import ColorMode, VisImage, Visualizer
from heron.utils.visualizer_inputs import _create_text_labels, _PanopticPrediction, _to_numpy

__all__ = ["VideoVisualizer"]

_TTL = 8  # frames an unmatched object's color stays reserved
_BOX_IOU_THRESHOLD = 0.6
_MASK_IOU_THRESHOLD = 0.5


class _DetectedInstance:
    """An object seen in a frame, kept so later frames can inherit its color.

    Attributes:
        label: class index (None if unknown); only objects of equal labels match.
        bbox: (4,) XYXY box, or None when matching by mask.
        mask_rle: COCO RLE of the mask, used when bbox is None.
        color: RGB in [0, 1], or None until assigned.
        ttl: frames left during which an unmatched object can still pass on its color.
    """

    __slots__ = ["bbox", "color", "label", "mask_rle", "ttl"]

    def __init__(
        self, label: Any, bbox: np.ndarray | None, mask_rle: dict | None, color: Any, ttl: int
    ) -> None:
        self.label = label
        self.bbox = bbox
        self.mask_rle = mask_rle
        self.color = color
        self.ttl = ttl


class VideoVisualizer:
    """Visualizer for consecutive frames: matched objects keep their color.

    Each frame's objects are matched to the previous frames' by IoU (boxes when present,
    else masks) among objects of the same class; an unmatched object keeps its color
    reserved for 8 frames in case the detector missed it once.

    Args:
        metadata: dataset metadata, as for `Visualizer` (`duration_threshold` is read for
            predictions that carry `ID_duration`).
        instance_mode: ColorMode.IMAGE or ColorMode.IMAGE_BW.
    """

    def __init__(self, metadata: Any, instance_mode: ColorMode = ColorMode.IMAGE) -> None:
        instance_mode = ColorMode(instance_mode)
        if instance_mode not in (ColorMode.IMAGE, ColorMode.IMAGE_BW):
            raise ValueError(
                f"instance_mode must be ColorMode.IMAGE or ColorMode.IMAGE_BW, got {instance_mode}"
            )
        self.metadata = metadata
        self._old_instances: list[_DetectedInstance] = []
        self._instance_mode = instance_mode

    def draw_instance_predictions(self, frame: np.ndarray, predictions: Any) -> VisImage:
        """Draw a frame's `Instances` (pred_boxes, scores, pred_classes, pred_masks,
        pred_keypoints; optional COLOR and ID_duration from a tracker).

        Masks are drawn without boxes. Colors come from matching with earlier frames
        unless the predictions carry a COLOR field.

        Args:
            frame: (H, W, 3) RGB image in [0, 255].
        """
        frame_visualizer = Visualizer(frame, self.metadata)
        num_instances = len(predictions)
        if num_instances == 0:
            return frame_visualizer.output
        boxes = _to_numpy(predictions.pred_boxes.tensor) if predictions.has("pred_boxes") else None
        scores = _to_numpy(predictions.scores) if predictions.has("scores") else None
        classes = _to_numpy(predictions.pred_classes) if predictions.has("pred_classes") else None
        keypoints = None
        if predictions.has("pred_keypoints"):
            keypoints = predictions.pred_keypoints
            keypoints = _to_numpy(getattr(keypoints, "tensor", keypoints))  # Keypoints or (N, K, 3)
        masks = _to_numpy(predictions.pred_masks) if predictions.has("pred_masks") else None

        if predictions.has("COLOR"):
            colors = list(predictions.COLOR)
        else:
            detected = self._detect(classes, boxes, masks, num_instances)
            colors = self._assign_colors(detected)
        visible = np.ones(num_instances, dtype=bool)
        if predictions.has("ID_duration"):
            threshold = getattr(self.metadata, "duration_threshold", 0) or 0
            visible = np.asarray([d > threshold for d in predictions.ID_duration], dtype=bool)
        labels = _create_text_labels(classes, scores, getattr(self.metadata, "thing_classes", None))

        alpha = 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            any_mask = (
                masks.reshape(num_instances, *masks.shape[-2:]).any(axis=0)
                if masks is not None
                else None
            )
            frame_visualizer.output.reset_image(frame_visualizer._create_grayscale_image(any_mask))
            alpha = 0.3
        keep = np.nonzero(visible)[0].tolist()
        frame_visualizer.overlay_instances(
            boxes=None if masks is not None or boxes is None else boxes[keep],  # boxes distract
            masks=None if masks is None else masks[keep],
            labels=None if labels is None else [labels[i] for i in keep],
            keypoints=None if keypoints is None else keypoints[keep],
            assigned_colors=[colors[i] for i in keep],
            alpha=alpha,
        )
        return frame_visualizer.output

    @staticmethod
    def _detect(
        classes: np.ndarray | None, boxes: np.ndarray | None, masks: np.ndarray | None, n: int
    ) -> list[_DetectedInstance]:
        rles: list[dict | None] = [None] * n
        if boxes is None:
            if masks is None:
                raise ValueError("predictions need pred_boxes or pred_masks to track colors")
            rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        return [
            _DetectedInstance(
                None if classes is None else int(classes[i]),
                None if boxes is None else boxes[i],
                rles[i],
                color=None,
                ttl=_TTL,
            )
            for i in range(n)
        ]

    def draw_sem_seg(
        self,
        frame: np.ndarray,
        sem_seg: np.ndarray | torch.Tensor,
        area_threshold: float | None = None,
    ) -> VisImage:
        """Draw an (H, W) semantic label map on a frame (colors are per class already)."""
        frame_visualizer = Visualizer(frame, self.metadata)
        frame_visualizer.draw_sem_seg(sem_seg, area_threshold=area_threshold)
        return frame_visualizer.output

    def draw_panoptic_seg_predictions(
        self,
        frame: np.ndarray,
        panoptic_seg: np.ndarray | torch.Tensor,
        segments_info: list[dict] | None,
        area_threshold: float | None = None,
        alpha: float = 0.5,
    ) -> VisImage:
        """Draw a panoptic id map on a frame; thing segments keep colors by mask IoU."""
        frame_visualizer = Visualizer(frame, self.metadata)
        pred = _PanopticPrediction(panoptic_seg, segments_info, self.metadata)
        if self._instance_mode == ColorMode.IMAGE_BW:
            frame_visualizer.output.reset_image(
                frame_visualizer._create_grayscale_image(pred.non_empty_mask())
            )
        stuff_colors = getattr(self.metadata, "stuff_colors", None)
        for mask, sinfo in pred.semantic_masks():
            category = sinfo["category_id"]
            frame_visualizer.draw_binary_mask(
                mask,
                color=None if stuff_colors is None else [x / 255 for x in stuff_colors[category]],
                text=self.metadata.stuff_classes[category],
                alpha=alpha,
                area_threshold=area_threshold,
            )
        instances = list(pred.instance_masks())
        if not instances:
            return frame_visualizer.output
        masks, sinfos = zip(*instances)
        masks = np.stack(masks)
        category_ids = [s["category_id"] for s in sinfos]
        detected = self._detect(np.asarray(category_ids), None, masks, len(masks))
        colors = self._assign_colors(detected)
        labels = [self.metadata.thing_classes[c] for c in category_ids]
        frame_visualizer.overlay_instances(
            masks=list(masks), labels=labels, assigned_colors=colors, alpha=alpha
        )
        return frame_visualizer.output

    draw_panoptic_seg = draw_panoptic_seg_predictions

    def _assign_colors(self, instances: list[_DetectedInstance]) -> list[Any]:
        """Give each new instance the color of its best-matching earlier instance.

        An earlier instance passes its color to the same-class new instance of highest IoU
        when that IoU exceeds 0.6 (boxes) or 0.5 (masks) and the new instance has no color
        yet; otherwise its ttl drops by one and it is kept while ttl > 0. New instances left
        without a color get a random table color. Updates the tracked state.

        Returns:
            one RGB [0, 1] color per instance.
        """
        old = self._old_instances
        ious = np.zeros((len(old), len(instances)), dtype=np.float64)
        if old and instances:
            is_crowd = np.zeros(len(instances), dtype=np.uint8)
            if instances[0].bbox is None:
                ious = mask_util.iou(
                    [o.mask_rle for o in old], [n.mask_rle for n in instances], is_crowd
                )
                threshold = _MASK_IOU_THRESHOLD
            else:
                # pycocotools takes XYWH boxes.
                def to_xywh(box):
                    box = np.asarray(box, dtype=np.float64)
                    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]

                ious = mask_util.iou(
                    [to_xywh(o.bbox) for o in old], [to_xywh(n.bbox) for n in instances], is_crowd
                )
                threshold = _BOX_IOU_THRESHOLD
            ious = np.asarray(ious, dtype=np.float64).reshape(len(old), len(instances))
        else:
            threshold = 1.0
        for i, o in enumerate(old):
            for j, n in enumerate(instances):
                if o.label != n.label:
                    ious[i, j] = 0.0  # only the same class can match

        survivors = []
        for i, o in enumerate(old):
            if len(instances) and ious[i].max() > threshold:
                best = int(ious[i].argmax())
                if instances[best].color is None:
                    instances[best].color = o.color
                    continue
            # Unmatched: keep it a few frames in case the detector missed it.
            o.ttl -= 1
            if o.ttl > 0:
                survivors.append(o)
        for n in instances:
            if n.color is None:
                n.color = random_color(rgb=True, maximum=1)
        self._old_instances = instances[:] + survivors
        return [n.color for n in instances]
