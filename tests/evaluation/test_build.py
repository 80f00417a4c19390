"""Tests of heron/evaluation/build.py: the evaluator_type dispatch."""

from __future__ import annotations

import json
import uuid

import pytest

from heron.config import get_cfg
from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    build_evaluator,
)


def _empty_coco(path):
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    return str(path)


@pytest.fixture
def named():
    names = []

    def make(**metadata):
        name = f"test_build_eval_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, list)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_each_evaluator_type_gets_its_evaluator(named, tmp_path):
    cfg = get_cfg()
    coco = named(evaluator_type="coco", json_file=_empty_coco(tmp_path / "instances.json"))
    assert isinstance(build_evaluator(cfg, coco), COCOEvaluator)
    assert isinstance(
        build_evaluator(
            cfg, named(evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255)
        ),
        SemSegEvaluator,
    )
    lvis = named(evaluator_type="lvis", json_file=_empty_coco(tmp_path / "lvis.json"))
    assert isinstance(build_evaluator(cfg, lvis, str(tmp_path)), LVISEvaluator)
    voc = named(
        evaluator_type="pascal_voc",
        dirname=str(tmp_path),
        split="test",
        year=2007,
        thing_classes=["a"],
    )
    assert isinstance(build_evaluator(cfg, voc), PascalVOCDetectionEvaluator)


def test_panoptic_gets_semantic_instance_and_panoptic_evaluators(named, tmp_path):
    name = named(
        evaluator_type="coco_panoptic_seg",
        stuff_classes=["things", "sky"],
        ignore_label=255,
        thing_dataset_id_to_contiguous_id={1: 0},
        stuff_dataset_id_to_contiguous_id={0: 0, 2: 1},
        json_file=_empty_coco(tmp_path / "instances.json"),
        panoptic_json=str(tmp_path / "p.json"),
        panoptic_root=str(tmp_path),
    )
    evaluator = build_evaluator(get_cfg(), name, str(tmp_path))
    assert isinstance(evaluator, DatasetEvaluators)
    kinds = [type(e) for e in evaluator._evaluators]
    assert kinds == [SemSegEvaluator, COCOEvaluator, COCOPanopticEvaluator]


def test_unknown_or_missing_type_raises_not_implemented(named):
    with pytest.raises(NotImplementedError, match="evaluator_type 'mystery'"):
        build_evaluator(get_cfg(), named(evaluator_type="mystery"))
    with pytest.raises(NotImplementedError, match="evaluator_type None"):
        build_evaluator(get_cfg(), named())
