"""Registration of the standard dataset names, rooted at $HERON_DATASETS (default
"./datasets"), with Detectron2's directory layout below it.

Registration touches no file: a dataset's files are read the first time its name is asked
for. Cityscapes and ADE20K need a one-time preparation of their label images, as in
Detectron2 (`create_cityscapes_train_ids`, `prepare_ade20k_sem_seg`); COCO panoptic's
separated form needs `separate_coco_semantic_from_panoptic`.
"""

from __future__ import annotations

import os

from heron.data.datasets.ade20k import register_all_ade20k
from heron.data.datasets.builtin_meta import _get_builtin_metadata
from heron.data.datasets.cityscapes import register_all_cityscapes
from heron.data.datasets.coco import register_coco_instances
from heron.data.datasets.coco_panoptic import register_all_coco_panoptic
from heron.data.datasets.lvis import register_lvis_instances
from heron.data.datasets.pascal_voc import register_pascal_voc
from heron.data.datasets.shapes import register_shapes
from heron.data.datasets.shapes_rotated import register_shapes_rotated

__all__ = [
    "register_all_ade20k",
    "register_all_cityscapes",
    "register_all_coco",
    "register_all_coco_panoptic",
    "register_all_lvis",
    "register_all_pascal_voc",
    "register_all_shapes",
]

# name: (image folder, annotation json), relative to the datasets root
_COCO_INSTANCES = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}
_COCO_KEYPOINTS = {
    "keypoints_coco_2017_train": (
        "coco/train2017",
        "coco/annotations/person_keypoints_train2017.json",
    ),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
    "keypoints_coco_2017_val_100": (
        "coco/val2017",
        "coco/annotations/person_keypoints_val2017_100.json",
    ),
}
_LVIS_V1 = {
    "lvis_v1_train": ("coco/", "lvis/lvis_v1_train.json"),
    "lvis_v1_val": ("coco/", "lvis/lvis_v1_val.json"),
    "lvis_v1_test_dev": ("coco/", "lvis/lvis_v1_image_info_test_dev.json"),
    "lvis_v1_test_challenge": ("coco/", "lvis/lvis_v1_image_info_test_challenge.json"),
}
# name: (folder, split, year)
_PASCAL_VOC = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_train": ("VOC2007", "train", 2007),
    "voc_2007_val": ("VOC2007", "val", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "voc_2012_train": ("VOC2012", "train", 2012),
    "voc_2012_val": ("VOC2012", "val", 2012),
}


def _datasets_root() -> str:
    return os.path.expanduser(os.environ.get("HERON_DATASETS", "datasets"))


def register_all_coco(root: str) -> None:
    """coco_2017_* (instances) and keypoints_coco_2017_* under ``root``."""
    for splits, family in ((_COCO_INSTANCES, "coco"), (_COCO_KEYPOINTS, "coco_person")):
        for name, (image_root, json_file) in splits.items():
            register_coco_instances(
                name,
                _get_builtin_metadata(family),
                os.path.join(root, json_file),
                os.path.join(root, image_root),
            )


def register_all_lvis(root: str) -> None:
    """lvis_v1_* under ``root``; class names come from the json when it is read."""
    for name, (image_root, json_file) in _LVIS_V1.items():
        register_lvis_instances(
            name, {}, os.path.join(root, json_file), os.path.join(root, image_root)
        )


def register_all_pascal_voc(root: str) -> None:
    """voc_2007_* and voc_2012_* under ``root`` (VOCdevkit layout inside each folder)."""
    for name, (folder, split, year) in _PASCAL_VOC.items():
        register_pascal_voc(name, os.path.join(root, folder), split, year)


def register_all_shapes(root: str) -> None:
    """shapes_train / shapes_val (and their panoptic and rotated-box forms), generated under
    ``root``/shapes on first use."""
    register_shapes(root)
    register_shapes_rotated(root)


def _register_all() -> None:
    root = _datasets_root()
    register_all_coco(root)
    register_all_coco_panoptic(root)
    register_all_lvis(root)
    register_all_cityscapes(root)
    register_all_ade20k(root)
    register_all_pascal_voc(root)
    register_all_shapes(root)
