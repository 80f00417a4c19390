"""Dataset formats (COCO, LVIS, Pascal VOC, semantic-segmentation folders, YOLO txt,
LabelMe JSON) read into Detectron2-style dataset dicts, and the built-in shapes dataset."""

from heron.data.datasets.coco import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    register_coco_instances,
)
from heron.data.datasets.labelme import load_labelme, register_labelme
from heron.data.datasets.lvis import (
    get_lvis_instances_meta,
    load_lvis_json,
    register_lvis_instances,
)
from heron.data.datasets.pascal_voc import load_voc_instances, register_pascal_voc
from heron.data.datasets.sem_seg import load_sem_seg
from heron.data.datasets.shapes import generate_shapes_dataset, get_shapes_metadata, register_shapes
from heron.data.datasets.yolo import load_yolo, register_yolo

__all__ = [
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "generate_shapes_dataset",
    "get_lvis_instances_meta",
    "get_shapes_metadata",
    "load_coco_json",
    "load_labelme",
    "load_lvis_json",
    "load_sem_seg",
    "load_voc_instances",
    "load_yolo",
    "register_coco_instances",
    "register_labelme",
    "register_lvis_instances",
    "register_pascal_voc",
    "register_shapes",
    "register_yolo",
]

# The standard names (coco_2017_*, lvis_v1_*, voc_*, shapes_*) are registered on import,
# lazily: nothing is read until a dataset is asked for.
from heron.data.datasets import builtin as _builtin

_builtin._register_all()
