"""Describing the served model: class names and tasks from the config and metadata."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from heron.config import get_cfg
from heron.serve.model import ModelState, class_names, model_tasks


def _cfg(arch: str, **model):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    for key, value in model.items():
        setattr(cfg.MODEL, key, value)
    return cfg


@pytest.mark.parametrize(
    ("cfg", "tasks"),
    [
        (None, ["instances"]),
        (_cfg("GeneralizedRCNN"), ["instances"]),
        (
            _cfg("GeneralizedRCNN", MASK_ON=True, KEYPOINT_ON=True),
            ["instances", "masks", "keypoints"],
        ),
        (_cfg("RetinaNet"), ["instances"]),
        (_cfg("SemanticSegmentor"), ["sem_seg"]),
        (_cfg("PanopticFPN", MASK_ON=True), ["instances", "masks", "sem_seg", "panoptic_seg"]),
    ],
)
def test_model_tasks_follow_the_architecture(cfg, tasks):
    assert model_tasks(cfg) == tasks


def test_class_names_come_from_metadata_as_object_or_dict():
    cfg = _cfg("GeneralizedRCNN")
    metadata = SimpleNamespace(thing_classes=["cat", "dog"], stuff_classes=["sky"])
    assert class_names(cfg, metadata) == (["cat", "dog"], ["sky"])
    assert class_names(None, {"thing_classes": ["cat"]}) == (["cat"], [])


def test_class_names_without_metadata_are_numbered_by_the_head():
    cfg = _cfg("GeneralizedRCNN")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    assert class_names(cfg, None) == (["class_0", "class_1", "class_2"], [])
    retina = _cfg("RetinaNet")
    retina.MODEL.RETINANET.NUM_CLASSES = 2
    assert class_names(retina, None)[0] == ["class_0", "class_1"]
    semantic = _cfg("SemanticSegmentor")
    semantic.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
    assert class_names(semantic, None) == ([], ["class_0", "class_1"])
    assert class_names(None, None) == ([], [])


def test_describe_reports_the_contract_fields():
    state = ModelState(lambda images: images, {"thing_classes": ["a"]})
    cfg = _cfg("GeneralizedRCNN", WEIGHTS="/some/dir/model_final.pth", DEVICE="cpu")
    info = state.describe(cfg, max_batch=4, max_image_mb=20)
    assert info["architecture"] == "GeneralizedRCNN"
    assert info["weights"] == "model_final.pth"
    assert info["classes"] == ["a"] and info["stuff_classes"] == []
    assert info["input_format"] == "BGR" and info["device"] == "cpu"
    assert info["max_batch"] == 4 and info["max_image_mb"] == 20
    assert info["tasks"] == ["instances"]
