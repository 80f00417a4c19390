"""Data structures for detection: boxes, rotated boxes, instances, masks, keypoints and
padded image batches, with Detectron2's names and semantics."""

from heron.structures.boxes import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.structures.keypoints import Keypoints, heatmaps_to_keypoints
from heron.structures.masks import (
    BitMasks,
    PolygonMasks,
    ROIMasks,
    polygon_area,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)
from heron.structures.rotated_boxes import RotatedBoxes, pairwise_iou_rotated

__all__ = [
    "BitMasks",
    "BoxMode",
    "Boxes",
    "ImageList",
    "Instances",
    "Keypoints",
    "PolygonMasks",
    "ROIMasks",
    "RotatedBoxes",
    "heatmaps_to_keypoints",
    "matched_pairwise_iou",
    "pairwise_intersection",
    "pairwise_ioa",
    "pairwise_iou",
    "pairwise_iou_rotated",
    "pairwise_point_box_distance",
    "polygon_area",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
]
