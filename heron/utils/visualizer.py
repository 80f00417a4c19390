"""Draw detection and segmentation data on images with matplotlib (Agg canvas, no pyplot).

`Visualizer` has Detectron2's names, defaults and drawing style: primitives
(`draw_text`, `draw_box`, `draw_rotated_box_with_label`, `draw_circle`, `draw_line`,
`draw_binary_mask`, `draw_soft_mask`, `draw_polygon`) and composite drawers
(`draw_instance_predictions`, `draw_sem_seg`, `draw_panoptic_seg`, `draw_dataset_dict`,
`overlay_instances`). Coordinates are continuous pixels: pixel (row i, col j) covers
[j, j + 1) x [i, i + 1). Images are (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from enum import Enum, unique
from typing import Any

import matplotlib.colors as mplc
import matplotlib.figure as mplfigure
import matplotlib.lines as mlines
import matplotlib.patches as mpatches
import numpy as np
import pycocotools.mask as mask_util
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from heron.structures.boxes import Boxes, BoxMode
from heron.structures.keypoints import Keypoints
from heron.structures.masks import BitMasks, PolygonMasks
from heron.structures.rotated_boxes import RotatedBoxes
from heron.utils.colormap import random_color
from heron.utils.visualizer_inputs import (
    GenericMask,
    _create_text_labels,
    _PanopticPrediction,
    _require,
    _to_numpy,
    connected_components,
)

__all__ = ["ColorMode", "GenericMask", "VisImage", "Visualizer"]

_SMALL_OBJECT_AREA_THRESH = 1000
_LARGE_MASK_AREA_THRESH = 120000
_OFF_WHITE = (1.0, 1.0, 240.0 / 255)
_BLACK = (0, 0, 0)
_RED = (1.0, 0, 0)
_KEYPOINT_THRESHOLD = 0.05


@unique
class ColorMode(Enum):
    """How instances are colored.

    IMAGE: a random color per instance, translucent masks.
    SEGMENTATION: instances of a class share a jittered `metadata.thing_colors` color, and
        masks are more opaque, to draw attention to segmentation quality.
    IMAGE_BW: like IMAGE, but pixels outside every mask are turned grey (instance masks only).
    """

    IMAGE = 0
    SEGMENTATION = 1
    IMAGE_BW = 2


class VisImage:
    """An image on a matplotlib Agg canvas that drawings are added to.

    Args:
        img: (H, W, 3) RGB image, values in [0, 255].
        scale: output size factor; the canvas is (H * scale, W * scale).
    """

    def __init__(self, img: np.ndarray, scale: float = 1.0) -> None:
        self.img = img
        self.scale = scale
        self.width, self.height = img.shape[1], img.shape[0]
        self._setup_figure(img)

    def _setup_figure(self, img: np.ndarray) -> None:
        fig = mplfigure.Figure(frameon=False)
        self.dpi = fig.get_dpi()
        # 1e-2 keeps matplotlib's truncation of inches * dpi from losing a pixel.
        fig.set_size_inches(
            (self.width * self.scale + 1e-2) / self.dpi,
            (self.height * self.scale + 1e-2) / self.dpi,
        )
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.axis("off")
        self.fig = fig
        self.ax = ax
        self.reset_image(img)

    def reset_image(self, img: np.ndarray) -> None:
        """Replace the background image (same size)."""
        img = np.asarray(img).astype("uint8")
        self.ax.imshow(img, extent=(0, self.width, self.height, 0), interpolation="nearest")

    def save(self, filepath: str) -> None:
        """Write the drawing to `filepath`; the extension picks the format (e.g. .png)."""
        self.fig.savefig(filepath)

    def get_image(self) -> np.ndarray:
        """Render and return the drawing as an (H * scale, W * scale, 3) uint8 RGB array."""
        self.canvas.draw()
        rgba = np.asarray(self.canvas.buffer_rgba())
        return rgba[:, :, :3].astype(np.uint8)


class Visualizer:
    """Draws detection and segmentation data on an image.

    Primitive drawers (`draw_text`, `draw_box`, ...) give full control; composite drawers
    (`draw_instance_predictions`, `draw_sem_seg`, `draw_panoptic_seg`, `draw_dataset_dict`)
    follow Detectron2's style, which favors legibility over speed. Every drawer returns the
    `VisImage`; read it with `get_image()` or write it with `save(path)`.

    Args:
        img_rgb: (H, W, 3) RGB image, values in [0, 255] (clipped).
        metadata: dataset metadata (`thing_classes`, `thing_colors`, `stuff_classes`,
            `stuff_colors`, `keypoint_names`, `keypoint_connection_rules`, ...), a
            `heron.data.catalog.Metadata` or any object with those attributes; None for
            none.
        scale: output size factor.
        instance_mode: how instances are colored, see `ColorMode`.
    """

    def __init__(
        self,
        img_rgb: np.ndarray | torch.Tensor,
        metadata: Any = None,
        scale: float = 1.0,
        instance_mode: ColorMode = ColorMode.IMAGE,
    ) -> None:
        img = _to_numpy(img_rgb)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"img_rgb must be (H, W, 3) RGB, got shape {img.shape}")
        self.img = img.clip(0, 255).astype(np.uint8)
        if metadata is None:
            from heron.data.catalog import Metadata  # heron.data sits above heron.utils

            metadata = Metadata()
        self.metadata = metadata
        self.output = VisImage(self.img, scale=scale)
        self.cpu_device = torch.device("cpu")
        # Text below 10 points (at scale 1) is unreadable, hence the floor.
        self._default_font_size = max(
            np.sqrt(self.output.height * self.output.width) // 90, 10 // scale
        )
        self._instance_mode = ColorMode(instance_mode)
        self.keypoint_threshold = _KEYPOINT_THRESHOLD

    def _meta(self, key: str, default: Any = None) -> Any:
        return getattr(self.metadata, key, default)

    def draw_instance_predictions(self, predictions: Any) -> VisImage:
        """Draw a model's `Instances`: pred_boxes, scores, pred_classes, pred_masks (or
        pred_masks_rle) and pred_keypoints, whichever are present."""
        boxes = predictions.pred_boxes if predictions.has("pred_boxes") else None
        scores = _to_numpy(predictions.scores) if predictions.has("scores") else None
        classes = (
            _to_numpy(predictions.pred_classes).tolist()
            if predictions.has("pred_classes")
            else None
        )
        labels = _create_text_labels(classes, scores, self._meta("thing_classes"))
        keypoints = predictions.pred_keypoints if predictions.has("pred_keypoints") else None
        height, width = self.output.height, self.output.width
        masks, any_mask = None, None
        if predictions.has("pred_masks"):
            mask_array = _to_numpy(predictions.pred_masks)
            masks = [GenericMask(x, height, width) for x in mask_array]
            any_mask = mask_array.reshape(-1, height, width).any(axis=0)
        elif predictions.has("pred_masks_rle"):
            masks = [GenericMask(x, height, width) for x in predictions.pred_masks_rle]
            any_mask = np.zeros((height, width), dtype=bool)
            for m in masks:
                any_mask |= m.mask > 0

        colors, alpha = None, 0.5
        if (
            self._instance_mode == ColorMode.SEGMENTATION
            and self._meta("thing_colors")
            and classes is not None
        ):
            thing_colors = self._meta("thing_colors")
            colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in classes]
            alpha = 0.8
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(any_mask))
            alpha = 0.3
        self.overlay_instances(
            masks=masks,
            boxes=boxes,
            labels=labels,
            keypoints=keypoints,
            assigned_colors=colors,
            alpha=alpha,
        )
        return self.output

    def draw_sem_seg(
        self,
        sem_seg: np.ndarray | torch.Tensor,
        area_threshold: float | None = None,
        alpha: float = 0.8,
    ) -> VisImage:
        """Draw an (H, W) integer label map, largest class first, each in its stuff color.

        Labels >= len(metadata.stuff_classes) (e.g. 255, ignore) are not drawn; regions
        smaller than `area_threshold` pixels are skipped.
        """
        sem_seg = _to_numpy(sem_seg)
        stuff_classes = _require(self.metadata, "stuff_classes", "draw_sem_seg")
        stuff_colors = self._meta("stuff_colors")
        labels, areas = np.unique(sem_seg, return_counts=True)
        for label in labels[np.argsort(-areas, kind="stable")]:
            if not 0 <= label < len(stuff_classes):
                continue
            color = None
            if stuff_colors is not None and label < len(stuff_colors):
                color = [x / 255 for x in stuff_colors[label]]
            self.draw_binary_mask(
                (sem_seg == label).astype(np.uint8),
                color=color,
                edge_color=_OFF_WHITE,
                text=stuff_classes[label],
                alpha=alpha,
                area_threshold=area_threshold,
            )
        return self.output

    def draw_panoptic_seg(
        self,
        panoptic_seg: np.ndarray | torch.Tensor,
        segments_info: list[dict] | None,
        area_threshold: float | None = None,
        alpha: float = 0.7,
    ) -> VisImage:
        """Draw a panoptic id map: stuff segments first, then thing instances.

        Args:
            panoptic_seg: (H, W) segment ids.
            segments_info: per segment a dict with "id", "category_id", "isthing" (and
                optional "score", "iscrowd"); category ids are contiguous. If None, ids are
                category_id * metadata.label_divisor + instance, and -1 is void.
            area_threshold: stuff segments with fewer pixels are not drawn.
            alpha: mask opacity.
        """
        pred = _PanopticPrediction(panoptic_seg, segments_info, self.metadata)
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(pred.non_empty_mask()))
        stuff_colors = self._meta("stuff_colors")
        for mask, sinfo in pred.semantic_masks():
            category = sinfo["category_id"]
            color = None if stuff_colors is None else [x / 255 for x in stuff_colors[category]]
            self.draw_binary_mask(
                mask,
                color=color,
                edge_color=_OFF_WHITE,
                text=_require(self.metadata, "stuff_classes", "stuff segments")[category],
                alpha=alpha,
                area_threshold=area_threshold,
            )
        instances = list(pred.instance_masks())
        if not instances:
            return self.output
        masks, sinfos = zip(*instances)
        category_ids = [s["category_id"] for s in sinfos]
        scores = [s["score"] for s in sinfos] if all("score" in s for s in sinfos) else None
        labels = _create_text_labels(
            category_ids,
            scores,
            _require(self.metadata, "thing_classes", "thing segments"),
            [s.get("iscrowd", 0) for s in sinfos],
        )
        thing_colors = self._meta("thing_colors")
        colors = None
        if thing_colors is not None:
            colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in category_ids]
        self.overlay_instances(
            masks=list(masks), labels=labels, assigned_colors=colors, alpha=alpha
        )
        return self.output

    draw_panoptic_seg_predictions = draw_panoptic_seg  # Detectron2's older name

    def draw_dataset_dict(self, dic: dict) -> VisImage:
        """Draw one dataset record: its "annotations" (boxes with bbox_mode, polygon or RLE
        "segmentation", "keypoints"), then "sem_seg"/"sem_seg_file_name", then
        "pan_seg"/"pan_seg_file_name" with "segments_info"."""
        annos = dic.get("annotations")
        if annos:
            self._draw_annotations(annos)
        sem_seg = dic.get("sem_seg")
        if sem_seg is None and "sem_seg_file_name" in dic:
            sem_seg = _read_png(dic["sem_seg_file_name"]).astype(np.uint8)
        if sem_seg is not None:
            self.draw_sem_seg(sem_seg, area_threshold=0, alpha=0.5)
        pan_seg = dic.get("pan_seg")
        if pan_seg is None and "pan_seg_file_name" in dic:
            rgb = _read_png(dic["pan_seg_file_name"]).astype(np.int64)
            pan_seg = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]  # COCO rgb2id
        if pan_seg is not None:
            if "segments_info" not in dic:
                raise KeyError("dataset dict has a panoptic map but no 'segments_info'")
            self.draw_panoptic_seg(pan_seg, dic["segments_info"], area_threshold=0, alpha=0.5)
        return self.output

    def _draw_annotations(self, annos: list[dict]) -> None:
        masks = [a["segmentation"] for a in annos] if "segmentation" in annos[0] else None
        keypoints = None
        if "keypoints" in annos[0]:
            keypoints = np.asarray([a["keypoints"] for a in annos], dtype=np.float64)
            keypoints = keypoints.reshape(len(annos), -1, 3)
        boxes = None
        if "bbox" in annos[0]:
            boxes = [
                BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                if len(a["bbox"]) == 4
                else list(a["bbox"])
                for a in annos
            ]
        category_ids = [a["category_id"] for a in annos]
        colors = None
        thing_colors = self._meta("thing_colors")
        if self._instance_mode == ColorMode.SEGMENTATION and thing_colors:
            colors = [self._jitter([x / 255 for x in thing_colors[c]]) for c in category_ids]
        labels = _create_text_labels(
            category_ids,
            scores=None,
            class_names=self._meta("thing_classes"),
            is_crowd=[a.get("iscrowd", 0) for a in annos],
        )
        self.overlay_instances(
            labels=labels, boxes=boxes, masks=masks, keypoints=keypoints, assigned_colors=colors
        )

    def overlay_instances(
        self,
        *,
        boxes: Any = None,
        labels: Sequence[str] | None = None,
        masks: Any = None,
        keypoints: Any = None,
        assigned_colors: Sequence[Any] | None = None,
        alpha: float = 0.5,
    ) -> VisImage:
        """Draw N instances, largest first so small ones stay visible.

        Args:
            boxes: `Boxes` or (N, 4) XYXY array, or `RotatedBoxes` or (N, 5) (cx, cy, w, h,
                angle degrees CCW) array (then drawn by `overlay_rotated_instances`).
            labels: N strings.
            masks: `PolygonMasks`, `BitMasks`, (N, H, W) array or tensor, or a list of per
                instance polygons (list of [x0, y0, ...]), binary masks, RLE dicts or
                `GenericMask`s.
            keypoints: `Keypoints` or (N, K, 3) array of (x, y, visibility or score).
            assigned_colors: N matplotlib colors; random table colors if None.
            alpha: mask opacity.
        """
        num_instances = 0
        if boxes is not None:
            boxes = self._convert_boxes(boxes)
            num_instances = len(boxes)
        if masks is not None:
            masks = self._convert_masks(masks)
            num_instances = self._check_count("masks", len(masks), num_instances)
        if keypoints is not None:
            keypoints = self._convert_keypoints(keypoints)
            num_instances = self._check_count("keypoints", len(keypoints), num_instances)
        if labels is not None:
            self._check_count("labels", len(labels), num_instances, allow_new=False)
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(num_instances)]
        else:
            self._check_count("assigned_colors", len(assigned_colors), num_instances, False)
        if num_instances == 0:
            return self.output
        if boxes is not None and boxes.shape[1] == 5:
            return self.overlay_rotated_instances(boxes, labels, assigned_colors)

        areas = None
        if boxes is not None:
            areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        elif masks is not None:
            areas = np.asarray([m.area() for m in masks])
        if areas is not None:
            order = np.argsort(-areas, kind="stable").tolist()
            boxes = boxes[order] if boxes is not None else None
            labels = [labels[i] for i in order] if labels is not None else None
            masks = [masks[i] for i in order] if masks is not None else None
            assigned_colors = [assigned_colors[i] for i in order]
            keypoints = keypoints[order] if keypoints is not None else None

        for i in range(num_instances):
            color = assigned_colors[i]
            if boxes is not None:
                self.draw_box(boxes[i], edge_color=color)
            if masks is not None:
                for segment in masks[i].polygons:
                    self.draw_polygon(segment.reshape(-1, 2), color, alpha=alpha)
            if labels is not None:
                self._draw_instance_label(
                    labels[i], color, boxes[i] if boxes is not None else None,
                    masks[i] if masks is not None else None,
                )  # fmt: skip
        if keypoints is not None:
            for keypoints_per_instance in keypoints:
                self.draw_and_connect_keypoints(keypoints_per_instance)
        return self.output

    @staticmethod
    def _check_count(name: str, count: int, expected: int, allow_new: bool = True) -> int:
        if expected == 0 and allow_new:
            return count
        if count != expected:
            raise ValueError(f"{name} has {count} entries, expected {expected} (one per instance)")
        return expected

    def _draw_instance_label(
        self, label: str, color: Any, box: np.ndarray | None, mask: GenericMask | None
    ) -> None:
        if box is not None:
            x0, y0, x1, y1 = box
            text_pos, horiz_align = (x0, y0), "left"  # on the box corner
        elif mask is not None:
            if len(mask.polygons) == 0:
                return  # mask too small to have a polygon
            x0, y0, x1, y1 = mask.bbox()
            # The median is steadier than the centroid against thin protrusions.
            text_pos, horiz_align = np.median(mask.mask.nonzero(), axis=1)[::-1], "center"
        else:
            return  # labels on keypoint-only instances do not help
        scale = self.output.scale
        if (y1 - y0) * (x1 - x0) < _SMALL_OBJECT_AREA_THRESH * scale or y1 - y0 < 40 * scale:
            # Small object: put the text beside it, not on it.
            text_pos = (x1, y0) if y1 >= self.output.height - 5 else (x0, y1)
        height_ratio = (y1 - y0) / np.sqrt(self.output.height * self.output.width)
        font_size = (
            np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2) * 0.5 * self._default_font_size
        )
        self.draw_text(
            label,
            text_pos,
            color=self._change_color_brightness(color, brightness_factor=0.7),
            horizontal_alignment=horiz_align,
            font_size=font_size,
        )

    def overlay_rotated_instances(
        self,
        boxes: np.ndarray,
        labels: Sequence[str] | None = None,
        assigned_colors: Sequence[Any] | None = None,
    ) -> VisImage:
        """Draw (N, 5) rotated boxes (cx, cy, w, h, angle degrees CCW), largest first."""
        boxes = self._convert_boxes(boxes)
        num_instances = len(boxes)
        if assigned_colors is None:
            assigned_colors = [random_color(rgb=True, maximum=1) for _ in range(num_instances)]
        if num_instances == 0:
            return self.output
        order = np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable").tolist()
        for i in order:
            self.draw_rotated_box_with_label(
                boxes[i],
                edge_color=assigned_colors[i],
                label=labels[i] if labels is not None else None,
            )
        return self.output

    def draw_and_connect_keypoints(self, keypoints: Any) -> VisImage:
        """Draw one instance's (K, 3) keypoints (x, y, score) above `keypoint_threshold`,
        the `metadata.keypoint_connection_rules` lines between visible pairs, and for COCO
        person keypoints the nose to mid-shoulder to mid-hip lines."""
        visible: dict[str, tuple[float, float]] = {}
        keypoint_names = self._meta("keypoint_names")
        for idx, (x, y, prob) in enumerate(_to_numpy(keypoints).tolist()):
            if prob > self.keypoint_threshold:
                self.draw_circle((x, y), color=_RED)
                if keypoint_names:
                    visible[keypoint_names[idx]] = (x, y)
        for kp0, kp1, color in self._meta("keypoint_connection_rules") or []:
            if kp0 in visible and kp1 in visible:
                (x0, y0), (x1, y1) = visible[kp0], visible[kp1]
                self.draw_line([x0, x1], [y0, y1], color=tuple(c / 255.0 for c in color))
        if "left_shoulder" in visible and "right_shoulder" in visible:
            mid_shoulder = np.mean([visible["left_shoulder"], visible["right_shoulder"]], axis=0)
            if "nose" in visible:
                nose = visible["nose"]
                self.draw_line([nose[0], mid_shoulder[0]], [nose[1], mid_shoulder[1]], color=_RED)
            if "left_hip" in visible and "right_hip" in visible:
                mid_hip = np.mean([visible["left_hip"], visible["right_hip"]], axis=0)
                self.draw_line(
                    [mid_hip[0], mid_shoulder[0]], [mid_hip[1], mid_shoulder[1]], color=_RED
                )
        return self.output

    # ------------------------------------------------------------------ primitives

    def draw_text(
        self,
        text: str,
        position: Sequence[float],
        *,
        font_size: float | None = None,
        color: Any = "g",
        horizontal_alignment: str = "center",
        rotation: float = 0,
    ) -> VisImage:
        """Draw `text` with its top at `position` (x, y), on a dark box; the color is
        lightened so it stays readable there. `rotation` is in degrees CCW."""
        if not font_size:
            font_size = self._default_font_size
        color = np.maximum(list(mplc.to_rgb(color)), 0.2)
        color[np.argmax(color)] = max(0.8, np.max(color))
        x, y = position
        self.output.ax.text(
            x,
            y,
            text,
            size=font_size * self.output.scale,
            family="sans-serif",
            bbox={"facecolor": "black", "alpha": 0.8, "pad": 0.7, "edgecolor": "none"},
            verticalalignment="top",
            horizontalalignment=horizontal_alignment,
            color=color,
            zorder=10,
            rotation=rotation,
        )
        return self.output

    def draw_box(
        self,
        box_coord: Sequence[float],
        alpha: float = 0.5,
        edge_color: Any = "g",
        line_style: str = "-",
    ) -> VisImage:
        """Draw the outline of an (x0, y0, x1, y1) box."""
        x0, y0, x1, y1 = box_coord
        linewidth = max(self._default_font_size / 4, 1)
        self.output.ax.add_patch(
            mpatches.Rectangle(
                (x0, y0),
                x1 - x0,
                y1 - y0,
                fill=False,
                edgecolor=edge_color,
                linewidth=linewidth * self.output.scale,
                alpha=alpha,
                linestyle=line_style,
            )
        )
        return self.output

    def draw_rotated_box_with_label(
        self,
        rotated_box: Sequence[float],
        alpha: float = 0.5,
        edge_color: Any = "g",
        line_style: str = "-",
        label: str | None = None,
    ) -> VisImage:
        """Draw a (cx, cy, w, h, angle degrees CCW) box; its top edge is dashed and the
        label sits at its top-left corner. (`alpha` is accepted for Detectron2's signature;
        the edges are opaque, as there.)"""
        cnt_x, cnt_y, w, h, angle = (float(v) for v in rotated_box)
        # Thinner lines for small boxes.
        small = w * h < _SMALL_OBJECT_AREA_THRESH * self.output.scale
        linewidth = self._default_font_size / (6 if small else 3)
        theta = math.radians(angle)
        c, s = math.cos(theta), math.sin(theta)
        # Image y points down, so a CCW rotation on screen maps (u, v) to (c u + s v, c v - s u).
        corners = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
        rect = [(s * v + c * u + cnt_x, c * v - s * u + cnt_y) for u, v in corners]
        for k in range(4):
            j = (k + 1) % 4
            self.draw_line(
                [rect[k][0], rect[j][0]],
                [rect[k][1], rect[j][1]],
                color=edge_color,
                linestyle="--" if k == 1 else line_style,
                linewidth=linewidth,
            )
        if label is not None:
            height_ratio = h / np.sqrt(self.output.height * self.output.width)
            font_size = (
                np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2) * 0.5 * self._default_font_size
            )
            label_color = self._change_color_brightness(edge_color, brightness_factor=0.7)
            self.draw_text(label, rect[1], color=label_color, font_size=font_size, rotation=angle)
        return self.output

    def draw_circle(self, circle_coord: Sequence[float], color: Any, radius: float = 3) -> VisImage:
        """Draw a filled circle of `radius` pixels centered at (x, y)."""
        self.output.ax.add_patch(
            mpatches.Circle(tuple(circle_coord), radius=radius, fill=True, color=color)
        )
        return self.output

    def draw_line(
        self,
        x_data: Sequence[float],
        y_data: Sequence[float],
        color: Any,
        linestyle: str = "-",
        linewidth: float | None = None,
    ) -> VisImage:
        """Draw a polyline through (x_data[i], y_data[i]); width in points (at scale 1)."""
        if linewidth is None:
            linewidth = self._default_font_size / 3
        linewidth = max(linewidth, 1)
        self.output.ax.add_line(
            mlines.Line2D(
                x_data,
                y_data,
                linewidth=linewidth * self.output.scale,
                color=color,
                linestyle=linestyle,
            )
        )
        return self.output

    def draw_binary_mask(
        self,
        binary_mask: np.ndarray,
        color: Any = None,
        *,
        edge_color: Any = None,
        text: str | None = None,
        alpha: float = 0.5,
        area_threshold: float | None = 10,
    ) -> VisImage:
        """Fill an (H, W) binary mask with `color` at opacity `alpha`, outlined.

        Masks without holes are drawn as polygons, skipping components under
        `area_threshold` pixels; masks with holes are drawn as a raster. `text` goes on the
        largest component (and on any very large one).
        """
        color = mplc.to_rgb(random_color(rgb=True, maximum=1) if color is None else color)
        binary_mask = _to_numpy(binary_mask).astype(np.uint8)
        height, width = binary_mask.shape[:2]
        mask = GenericMask(binary_mask, self.output.height, self.output.width)
        has_valid_segment = False
        if not mask.has_holes:
            for segment in mask.polygons:
                area = mask_util.area(mask_util.frPyObjects([segment], height, width))
                if area < (area_threshold or 0):
                    continue
                has_valid_segment = True
                self.draw_polygon(
                    segment.reshape(-1, 2), color=color, edge_color=edge_color, alpha=alpha
                )
        else:
            rgba = np.zeros((height, width, 4), dtype=np.float32)
            rgba[:, :, :3] = color
            rgba[:, :, 3] = (mask.mask == 1).astype(np.float32) * alpha
            has_valid_segment = True
            self._imshow_overlay(rgba)
        if text is not None and has_valid_segment:
            lighter = self._change_color_brightness(color, brightness_factor=0.7)
            self._draw_text_in_mask(binary_mask, text, lighter)
        return self.output

    def draw_soft_mask(
        self,
        soft_mask: np.ndarray,
        color: Any = None,
        *,
        text: str | None = None,
        alpha: float = 0.5,
    ) -> VisImage:
        """Blend `color` over the image with per-pixel opacity soft_mask * alpha.

        Args:
            soft_mask: (H, W) floats in [0, 1].
        """
        color = mplc.to_rgb(random_color(rgb=True, maximum=1) if color is None else color)
        soft_mask = _to_numpy(soft_mask).astype(np.float32)
        rgba = np.zeros(soft_mask.shape[:2] + (4,), dtype=np.float32)
        rgba[:, :, :3] = color
        rgba[:, :, 3] = soft_mask * alpha
        self._imshow_overlay(rgba)
        if text is not None:
            lighter = self._change_color_brightness(color, brightness_factor=0.7)
            self._draw_text_in_mask((soft_mask > 0.5).astype(np.uint8), text, lighter)
        return self.output

    def _imshow_overlay(self, rgba: np.ndarray) -> None:
        extent = (0, self.output.width, self.output.height, 0)
        self.output.ax.imshow(rgba, extent=extent, interpolation="nearest")

    def draw_polygon(
        self, segment: np.ndarray, color: Any, edge_color: Any = None, alpha: float = 0.5
    ) -> VisImage:
        """Fill an (N, 2) polygon with `color` at opacity `alpha` and outline it; the
        default edge is `color`, or a darker shade when alpha > 0.8."""
        if edge_color is None:
            if alpha > 0.8:
                edge_color = self._change_color_brightness(color, brightness_factor=-0.7)
            else:
                edge_color = color
        polygon = mpatches.Polygon(
            np.asarray(segment).reshape(-1, 2),
            fill=True,
            facecolor=mplc.to_rgb(color) + (alpha,),
            edgecolor=mplc.to_rgb(edge_color) + (1,),
            linewidth=max(self._default_font_size // 15 * self.output.scale, 1),
        )
        self.output.ax.add_patch(polygon)
        return self.output

    # ------------------------------------------------------------------ helpers

    def _jitter(self, color: Any) -> tuple[float, float, float]:
        """Shift an RGB [0, 1] color by a random vector of length 0.5, clipped to [0, 1]."""
        vec = np.random.rand(3)
        vec = vec / np.linalg.norm(vec) * 0.5
        return tuple(np.clip(vec + mplc.to_rgb(color), 0, 1).tolist())

    def _create_grayscale_image(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The image in grey (channel mean), keeping its colors where `mask` is set."""
        img_bw = self.img.astype("f4").mean(axis=2)
        img_bw = np.stack([img_bw] * 3, axis=2)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            img_bw[mask] = self.img[mask]
        return img_bw

    def _change_color_brightness(self, color: Any, brightness_factor: float) -> tuple:
        """Scale a color's HLS lightness by (1 + brightness_factor), factor in [-1, 1]."""
        if not -1.0 <= brightness_factor <= 1.0:
            raise ValueError(f"brightness_factor must be in [-1, 1], got {brightness_factor}")
        hue, lightness, saturation = colorsys.rgb_to_hls(*mplc.to_rgb(color))
        lightness = min(max(lightness * (1 + brightness_factor), 0.0), 1.0)
        return colorsys.hls_to_rgb(hue, lightness, saturation)

    def _convert_boxes(self, boxes: Any) -> np.ndarray:
        if isinstance(boxes, (Boxes, RotatedBoxes)):
            boxes = boxes.tensor
        boxes = _to_numpy(boxes).astype(np.float64)
        if boxes.ndim == 1 and boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
            raise ValueError(f"boxes must be (N, 4) or (N, 5), got shape {boxes.shape}")
        return boxes

    def _convert_masks(self, masks_or_polygons: Any) -> list[GenericMask]:
        m = masks_or_polygons
        if isinstance(m, PolygonMasks):
            m = m.polygons
        if isinstance(m, BitMasks):
            m = m.tensor
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        height, width = self.output.height, self.output.width
        return [x if isinstance(x, GenericMask) else GenericMask(x, height, width) for x in m]

    def _convert_keypoints(self, keypoints: Any) -> np.ndarray:
        if isinstance(keypoints, Keypoints):
            keypoints = keypoints.tensor
        return _to_numpy(keypoints)

    def _draw_text_in_mask(self, binary_mask: np.ndarray, text: str, color: Any) -> None:
        """Put `text` at the median pixel of the largest component and of any huge one."""
        num, labels, areas = connected_components(binary_mask)
        if num <= 1:
            return
        largest = int(np.argmax(areas[1:])) + 1
        for cid in range(1, num):
            if cid == largest or areas[cid] > _LARGE_MASK_AREA_THRESH:
                center = np.median((labels == cid).nonzero(), axis=1)[::-1]
                self.draw_text(text, center, color=color)

    def get_output(self) -> VisImage:
        """Return the `VisImage` holding all drawings so far."""
        return self.output


def _read_png(file_name: str) -> np.ndarray:
    from PIL import Image

    from heron.utils.file_io import PathManager

    with PathManager.open(file_name, "rb") as f:
        return np.asarray(Image.open(f))
