"""Dataset formats (COCO instances and panoptic, LVIS, Pascal VOC, Cityscapes, ADE20K,
semantic-segmentation folders, YOLO txt, LabelMe JSON) read into Detectron2-style dataset
dicts, and the built-in shapes dataset."""

from heron.data.datasets.ade20k import (
    ADE20K_SEM_SEG_CATEGORIES,
    prepare_ade20k_sem_seg,
    register_all_ade20k,
)
from heron.data.datasets.cityscapes import (
    create_cityscapes_train_ids,
    load_cityscapes_instances,
    load_cityscapes_semantic,
    register_all_cityscapes,
)
from heron.data.datasets.coco import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    register_coco_instances,
)
from heron.data.datasets.coco_panoptic import (
    load_coco_panoptic_json,
    merge_to_panoptic,
    register_all_coco_panoptic,
    register_coco_panoptic,
    register_coco_panoptic_separated,
    separate_coco_semantic_from_panoptic,
)
from heron.data.datasets.labelme import load_labelme, register_labelme
from heron.data.datasets.lvis import (
    get_lvis_instances_meta,
    load_lvis_json,
    register_lvis_instances,
)
from heron.data.datasets.pascal_voc import load_voc_instances, register_pascal_voc
from heron.data.datasets.sem_seg import load_sem_seg
from heron.data.datasets.shapes import (
    generate_shapes_dataset,
    get_shapes_metadata,
    get_shapes_panoptic_metadata,
    register_shapes,
)
from heron.data.datasets.shapes_rotated import load_shapes_rotated_json, register_shapes_rotated
from heron.data.datasets.yolo import load_yolo, register_yolo

__all__ = [
    "ADE20K_SEM_SEG_CATEGORIES",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "create_cityscapes_train_ids",
    "generate_shapes_dataset",
    "get_lvis_instances_meta",
    "get_shapes_metadata",
    "get_shapes_panoptic_metadata",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "load_coco_json",
    "load_coco_panoptic_json",
    "load_labelme",
    "load_lvis_json",
    "load_sem_seg",
    "load_shapes_rotated_json",
    "load_voc_instances",
    "load_yolo",
    "merge_to_panoptic",
    "prepare_ade20k_sem_seg",
    "register_all_ade20k",
    "register_all_cityscapes",
    "register_all_coco_panoptic",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "register_labelme",
    "register_lvis_instances",
    "register_pascal_voc",
    "register_shapes",
    "register_shapes_rotated",
    "register_yolo",
    "separate_coco_semantic_from_panoptic",
]

# The standard names (coco_2017_*, lvis_v1_*, voc_*, cityscapes_*, ade20k_*, shapes_*) are registered on import,
# lazily: nothing is read until a dataset is asked for.
from heron.data.datasets import builtin as _builtin

_builtin._register_all()
