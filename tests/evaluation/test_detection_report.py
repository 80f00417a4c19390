"""Tests of heron/evaluation/detection_report.py."""

from __future__ import annotations

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation.detection_report import (
    DetectionReportEvaluator,
    all_point_average_precision,
    confusion_matrix,
    greedy_match,
)
from heron.structures.boxes import Boxes, BoxMode
from heron.structures.instances import Instances

_CAT, _DOG, _BG = 0, 1, 2


def _obj(box, cls, crowd=0):
    return {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls, "iscrowd": crowd}


# Image 1: cat A (0,0,10,10), dog B (20,20,30,30), crowd dog C (50,50,60,60).
# Image 2: cat D (0,0,10,10), given in XYWH to check the box-mode conversion.
_DICTS = [
    {
        "image_id": 1,
        "height": 64,
        "width": 64,
        "annotations": [
            _obj([0, 0, 10, 10], _CAT),
            _obj([20, 20, 30, 30], _DOG),
            _obj([50, 50, 60, 60], _DOG, crowd=1),
        ],
    },
    {
        "image_id": 2,
        "height": 64,
        "width": 64,
        "annotations": [
            {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": _CAT}
        ],
    },
]

# (class, XYXY box, score). Per class, at IoU 0.5:
#   d1 cat 0.9 on A: TP          d2 dog 0.8 on A: FP (no dog there)
#   d3 dog 0.4 on B: TP          d4 dog 0.7 on the crowd C: FP (crowd dropped)
#   d5 dog 0.6 on D: FP          d6 cat 0.3, half of D (IoU 50/100 = 0.5): TP
_PREDS = {
    1: [
        (_CAT, [0, 0, 10, 10], 0.9),
        (_DOG, [0, 0, 10, 10], 0.8),
        (_DOG, [20, 20, 30, 30], 0.4),
        (_DOG, [50, 50, 60, 60], 0.7),
    ],
    2: [(_DOG, [0, 0, 10, 10], 0.6), (_CAT, [0, 0, 10, 5], 0.3)],
}


@pytest.fixture
def dataset():
    name = f"report_test_{uuid.uuid4().hex}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in _DICTS])
    MetadataCatalog.get(name).set(thing_classes=["cat", "dog"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _batch(preds):
    inputs, outputs = [], []
    for img_id, dets in preds.items():
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([d[1] for d in dets], dtype=torch.float32).view(-1, 4))
        inst.scores = torch.tensor([d[2] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        inputs.append({"image_id": img_id})
        outputs.append({"instances": inst})
    return inputs, outputs


def _run(name, out_dir, preds=_PREDS, **kwargs):
    evaluator = DetectionReportEvaluator(name, str(out_dir), distributed=False, **kwargs)
    evaluator.reset()
    evaluator.process(*_batch(preds))
    return evaluator.evaluate()


def test_summary_values_by_hand(dataset, tmp_path):
    results = _run(dataset, tmp_path)
    # cat: TP 0.9, TP 0.3 of 2 gt -> AP 1. dog: FP 0.8, FP 0.7, FP 0.6, TP 0.4 of 1 gt ->
    # precision 1/4 at recall 1 -> AP 1/4. mAP = (1 + 0.25) / 2 = 0.625.
    # score >= 0.5: cat 1 TP of 1 det, dog 0 TP of 3 -> precision 1/4, recall 1/3 (3 gt).
    expected = {"mAP50": 62.5, "precision": 25.0, "recall": 100 / 3}
    assert results.keys() == {"report"}
    assert results["report"].keys() == expected.keys()
    for key, value in expected.items():
        assert results["report"][key] == pytest.approx(value)


def test_report_json_per_class_numbers_and_curves(dataset, tmp_path):
    _run(dataset, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["iou_threshold"] == 0.5 and report["score_threshold"] == 0.5
    assert report["num_images"] == 2
    cat, dog = report["classes"]
    assert cat["name"] == "cat" and dog["name"] == "dog"
    assert (cat["num_gt"], cat["num_detections"]) == (2, 2)
    assert (dog["num_gt"], dog["num_detections"]) == (1, 4)  # the crowd box is not counted
    assert cat["precision"] == pytest.approx(1.0) and cat["recall"] == pytest.approx(0.5)
    assert dog["precision"] == pytest.approx(0.0) and dog["recall"] == pytest.approx(0.0)
    assert cat["ap"] == pytest.approx(1.0) and dog["ap"] == pytest.approx(0.25)
    assert cat["pr_curve"] == {
        "recall": [0.5, 1.0],
        "precision": [1.0, 1.0],
        "score": pytest.approx([0.9, 0.3]),
    }
    # dog, by score: FP, FP, FP, TP -> TP/(TP+FP) = 0, 0, 0, 1/4; recall 0, 0, 0, 1
    assert dog["pr_curve"]["recall"] == [0.0, 0.0, 0.0, 1.0]
    assert dog["pr_curve"]["precision"] == [0.0, 0.0, 0.0, 0.25]
    assert dog["pr_curve"]["score"] == pytest.approx([0.8, 0.7, 0.6, 0.4])
    assert report["summary"]["mAP"] == pytest.approx(0.625)


def test_confusion_matrix_by_hand(dataset, tmp_path):
    _run(dataset, tmp_path)
    cm = json.loads((tmp_path / "report.json").read_text())["confusion_matrix"]
    assert cm["labels"] == ["cat", "dog", "background"]
    # score >= 0.5, class-agnostic greedy matching:
    # image 1: d1 -> A [cat, cat]; d2 finds A taken, B at IoU 0 -> [bg, dog];
    #          d4 on the (dropped) crowd -> [bg, dog]; B unmatched (d3 is below 0.5) -> [dog, bg]
    # image 2: d5 (dog) takes D (cat) -> [cat, dog]
    assert cm["matrix"] == [
        [1, 1, 0],
        [0, 0, 1],
        [0, 2, 0],
    ]


def test_plots_are_decodable_pngs(dataset, tmp_path):
    _run(dataset, tmp_path)
    for name in ("pr_curves.png", "confusion_matrix.png"):
        path = tmp_path / name
        assert path.stat().st_size > 5000
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 300 and image.height >= 300
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 10  # not a blank canvas


def test_lower_score_threshold_moves_detections_into_the_matrix(dataset, tmp_path):
    results = _run(dataset, tmp_path, score_threshold=0.0)
    # all 6 detections count: TP cat d1, d6; dog d3 -> 3 TP of 6 dets, all 3 gt found
    assert results["report"]["precision"] == pytest.approx(50.0)
    assert results["report"]["recall"] == pytest.approx(100.0)
    cm = json.loads((tmp_path / "report.json").read_text())["confusion_matrix"]["matrix"]
    # image 1: d3 now takes B -> [dog, dog]; image 2: d5 takes D, so d6 (cat) -> [bg, cat]
    assert cm == [
        [1, 1, 0],
        [0, 1, 0],
        [1, 2, 0],
    ]


def test_stricter_iou_threshold(dataset, tmp_path):
    # at IoU 0.75, d6 (IoU 0.5) is a FP: cat is TP 0.9, FP 0.3 -> AP 1/2; dog stays 1/4
    results = _run(dataset, tmp_path, iou_threshold=0.75)
    assert results["report"]["mAP75"] == pytest.approx(100 * (0.5 + 0.25) / 2)


def test_images_without_detections_count_their_ground_truth(dataset, tmp_path):
    results = _run(dataset, tmp_path, preds={1: [], 2: []})
    # 3 gt and no detection: AP 0 for both classes, recall 0, precision undefined
    assert results["report"]["mAP50"] == 0.0
    assert results["report"]["recall"] == 0.0
    assert math.isnan(results["report"]["precision"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["precision"] is None  # NaN is written as null
    # 2 cats (A, D) and 1 dog (B) missed
    assert report["confusion_matrix"]["matrix"] == [[0, 0, 2], [0, 0, 1], [0, 0, 0]]


def test_no_predictions_warns(dataset, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="heron.evaluation.detection_report"):
        results = _run(dataset, tmp_path, preds={})
    assert "Did not receive valid predictions" in caplog.text
    assert all(math.isnan(v) for v in results["report"].values())
    assert (tmp_path / "report.json").is_file()


def test_unknown_image_and_class_raise(dataset, tmp_path):
    with pytest.raises(ValueError, match="image_id 7"):
        _run(dataset, tmp_path, preds={7: [(_CAT, [0, 0, 1, 1], 0.5)]})
    with pytest.raises(ValueError, match=r"image_id 1 has class 2; expected 0\.\.1"):
        _run(dataset, tmp_path, preds={1: [(2, [0, 0, 1, 1], 0.5)]})
    with pytest.raises(ValueError, match="iou_threshold"):
        DetectionReportEvaluator(dataset, str(tmp_path), iou_threshold=0.0)


def test_greedy_match_prefers_highest_unmatched_iou():
    ious = np.array([[0.6, 0.9], [0.7, 0.8], [0.55, 0.4]])
    # row 0 takes column 1 (0.9); row 1 the remaining column 0 (0.7); row 2 nothing left
    assert greedy_match(ious, 0.5).tolist() == [1, 0, -1]
    assert greedy_match(ious, 0.95).tolist() == [-1, -1, -1]
    assert greedy_match(np.zeros((2, 0)), 0.5).tolist() == [-1, -1]
    assert greedy_match(np.zeros((0, 3)), 0.5).tolist() == []


def test_all_point_average_precision_by_hand():
    # envelope of precision (1, 1/2, 2/3) is (1, 2/3, 2/3); recall steps 1/2, 0, 1/2
    # -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    ap = all_point_average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(5 / 6)
    assert all_point_average_precision(np.zeros(0), np.zeros(0)) == 0.0
    # recall stops at 1/2: the area beyond it is 0
    assert all_point_average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_confusion_matrix_of_empty_image():
    matrix = confusion_matrix(np.zeros(0, dtype=np.int64), np.array([1]), np.zeros((1, 0)), 2, 0.5)
    assert matrix.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
