"""Dataset formats (to Detectron2-style dataset dicts) and the built-in shapes dataset."""

from heron.data.datasets.coco import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    register_coco_instances,
)
from heron.data.datasets.shapes import generate_shapes_dataset, get_shapes_metadata, register_shapes

__all__ = [
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "generate_shapes_dataset",
    "get_shapes_metadata",
    "load_coco_json",
    "register_coco_instances",
    "register_shapes",
]
