"""Tests of PascalVOCDetectionEvaluator, voc_eval and voc_ap on a tiny VOC tree."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.pascal_voc import register_pascal_voc
from heron.evaluation.pascal_voc_evaluation import (
    PascalVOCDetectionEvaluator,
    parse_rec,
    voc_ap,
    voc_eval,
)
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

CLASSES = ("cat", "dog")


def _object(name: str, box: tuple[int, int, int, int], difficult: int) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _write_voc(root, images: dict[str, list[tuple[str, tuple, int]]]) -> None:
    """VOC tree: JPEGImages, Annotations (boxes in VOC's 1-based pixels), test split."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for image_id, objects in images.items():
        Image.new("RGB", (32, 32)).save(root / "JPEGImages" / f"{image_id}.jpg")
        xml = (
            "<annotation><size><width>32</width><height>32</height><depth>3</depth></size>"
            + "".join(_object(*o) for o in objects)
            + "</annotation>"
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(images) + "\n")


# img1: cat A (1..10) and dog (15..25, 1..10); img2: cat B (1..10) and a difficult cat C.
VOC_IMAGES = {
    "img1": [("cat", (1, 1, 10, 10), 0), ("dog", (15, 1, 25, 10), 0)],
    "img2": [("cat", (1, 1, 10, 10), 0), ("cat", (21, 21, 30, 30), 1)],
}


@pytest.fixture
def voc(tmp_path):
    """Register the tiny tree twice (years 2007 and 2012) under unique names."""
    _write_voc(tmp_path, VOC_IMAGES)
    names = {}
    for year in (2007, 2012):
        name = f"test_voc_eval_{year}_{uuid.uuid4().hex}"
        register_pascal_voc(name, str(tmp_path), "test", year, class_names=CLASSES)
        names[year] = name
    try:
        yield names
    finally:
        for name in names.values():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def _output(boxes: list[list[float]], scores: list[float], classes: list[int]) -> dict:
    instances = Instances((32, 32))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": instances}


def _cat_detections() -> dict[str, dict]:
    """Boxes in Heron's frame (the loader's: VOC xmin/ymin minus 1), ranked by score:
    d1 0.9 img1 = cat A (IoU 1) -> TP
    d2 0.8 img2 = difficult cat C -> ignored
    d3 0.7 img1 far from everything -> FP
    d4 0.6 img2 = VOC (1, 1, 10, 8) on cat B (1, 1, 10, 10): IoU 80 / 100 = 0.8
       -> TP for IoU thresholds 0.50..0.75, FP for 0.80..0.95 (0.8 is not > 0.8)
    """
    return {
        "img1": _output([[0, 0, 10, 10], [20, 20, 25, 25]], [0.9, 0.7], [0, 0]),
        "img2": _output([[20, 20, 30, 30], [0, 0, 10, 8]], [0.8, 0.6], [0, 0]),
    }


def _evaluate(name: str, outputs: dict[str, dict]) -> dict:
    evaluator = PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for image_id, output in outputs.items():
        evaluator.process([{"image_id": image_id}], [output])
    return evaluator.evaluate()


# cat, npos = 2 (C is difficult). Thresholds 0.50..0.75 (6 of them):
#   rec = [.5, .5, .5, 1], prec = [1, 1, .5, 2/3]
#   area: 0.5 * 1 + 0.5 * 2/3 = 5/6; 11-point: (6 * 1 + 5 * 2/3) / 11 = 28/33
# Thresholds 0.80..0.95 (4): rec = [.5, .5, .5, .5], prec = [1, 1, .5, 1/3]
#   area: 0.5 * 1 = 1/2; 11-point: 6 / 11 = 18/33
# dog: one gt, no detection -> AP 0 everywhere.
def test_area_metric_matches_hand_computation(voc):
    res = _evaluate(voc[2012], _cat_detections())["bbox"]
    cat_mean = (6 * 5 / 6 + 4 * 1 / 2) / 10  # = 0.7
    assert res["AP50"] == pytest.approx(100 * (5 / 6 + 0) / 2)
    assert res["AP75"] == pytest.approx(100 * (5 / 6 + 0) / 2)
    assert res["AP"] == pytest.approx(100 * (cat_mean + 0) / 2)  # 35


def test_voc2007_uses_the_11_point_metric(voc):
    res = _evaluate(voc[2007], _cat_detections())["bbox"]
    cat_mean = (6 * 28 / 33 + 4 * 18 / 33) / 10  # = 240 / 330
    assert res["AP50"] == pytest.approx(100 * (28 / 33) / 2)
    assert res["AP75"] == pytest.approx(100 * (28 / 33) / 2)
    assert res["AP"] == pytest.approx(100 * cat_mean / 2)


def test_perfect_detections_score_100(voc):
    outputs = {
        "img1": _output([[0, 0, 10, 10], [14, 0, 25, 10]], [0.9, 0.8], [0, 1]),
        "img2": _output([[0, 0, 10, 10]], [0.9], [0]),
    }
    for year in (2007, 2012):
        res = _evaluate(voc[year], outputs)["bbox"]
        for key in ("AP", "AP50", "AP75"):
            assert res[key] == pytest.approx(100.0), (year, key)


def test_no_detections_score_zero(voc):
    res = _evaluate(voc[2012], {"img1": _output([], [], [])})["bbox"]
    assert res == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}


def test_detection_on_difficult_object_alone_is_neither_tp_nor_fp(tmp_path):
    _write_voc(tmp_path, VOC_IMAGES)
    (tmp_path / "dets_cat.txt").write_text("img2 0.900 21.0 21.0 30.0 30.0\n")
    rec, prec, ap = voc_eval(
        str(tmp_path / "dets_{}.txt"),
        str(tmp_path / "Annotations" / "{}.xml"),
        str(tmp_path / "ImageSets" / "Main" / "test.txt"),
        "cat",
    )
    # tp = fp = 0: precision 0 / eps = 0, recall 0 / 2
    np.testing.assert_array_equal(rec, [0.0])
    np.testing.assert_array_equal(prec, [0.0])
    assert ap == 0.0


def test_voc_eval_uses_inclusive_pixel_iou(tmp_path):
    _write_voc(tmp_path, {"a": [("cat", (1, 1, 10, 10), 0)]})
    # VOC (1, 1, 10, 6): 10 x 6 = 60 inclusive pixels of the gt's 100 -> IoU 0.6
    # (with exclusive widths it would be 9 * 5 / (9 * 9) = 0.556)
    (tmp_path / "dets_cat.txt").write_text("a 0.500 1.0 1.0 10.0 6.0\n")
    args = (
        str(tmp_path / "dets_{}.txt"),
        str(tmp_path / "Annotations" / "{}.xml"),
        str(tmp_path / "ImageSets" / "Main" / "test.txt"),
        "cat",
    )
    assert voc_eval(*args, ovthresh=0.59)[2] == pytest.approx(1.0)
    assert voc_eval(*args, ovthresh=0.6)[2] == pytest.approx(0.0)


def test_evaluator_adds_one_to_xmin_ymin_when_writing(voc):
    # Heron box (0, 0, 10, 10) is VOC (1, 1, 10, 10): IoU 1 with cat A. Without the +1 it
    # would be VOC (0, 0, 10, 10): 100 / 121 = 0.826 <= 0.85, failing thresholds >= 0.85.
    outputs = {"img1": _output([[0, 0, 10, 10]], [0.9], [0])}
    res = _evaluate(voc[2012], outputs)["bbox"]
    # cat: 1 TP of 2 positives at every threshold -> AP 0.5; dog 0
    assert res["AP"] == pytest.approx(100 * 0.5 / 2)


def test_voc_ap_area_and_11_point():
    rec = np.array([0.5, 0.5, 0.5, 1.0])
    prec = np.array([1.0, 1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(5 / 6)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(28 / 33)


def test_voc_ap_of_empty_curve_is_zero():
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0


def test_parse_rec_reads_difficult_and_defaults_missing_tags(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(
        "<annotation>"
        + _object("cat", (2, 3, 4, 5), 1)
        + "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
        "<ymax>2</ymax></bndbox></object></annotation>"
    )
    objects = parse_rec(str(path))
    assert objects[0] == {
        "name": "cat",
        "pose": "Unspecified",
        "truncated": 0,
        "difficult": 1,
        "bbox": [2.0, 3.0, 4.0, 5.0],
    }
    assert objects[1]["difficult"] == 0 and objects[1]["pose"] is None


def test_parse_rec_rereads_an_edited_file(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("<annotation>" + _object("cat", (1, 1, 2, 2), 0) + "</annotation>")
    assert len(parse_rec(str(path))) == 1
    path.write_text("<annotation>" + _object("cat", (1, 1, 2, 2), 0) * 2 + "</annotation>")
    assert len(parse_rec(str(path))) == 2


def test_parse_rec_names_a_bad_coordinate(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("<annotation>" + _object("cat", (1, "x", 2, 2), 0) + "</annotation>")
    with pytest.raises(ValueError, match=r"object #0 <bndbox><ymin> must be a number, got 'x'"):
        parse_rec(str(path))


def test_detection_on_unlisted_image_raises(voc):
    with pytest.raises(KeyError, match="image 'img9'"):
        _evaluate(voc[2012], {"img9": _output([[0, 0, 5, 5]], [0.5], [0])})


def test_year_other_than_2007_or_2012_raises(tmp_path):
    _write_voc(tmp_path, VOC_IMAGES)
    name = f"test_voc_eval_bad_{uuid.uuid4().hex}"
    register_pascal_voc(name, str(tmp_path), "test", 2010, class_names=CLASSES)
    try:
        with pytest.raises(ValueError, match="must be 2007 or 2012, got 2010"):
            PascalVOCDetectionEvaluator(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
