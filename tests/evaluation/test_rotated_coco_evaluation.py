from __future__ import annotations

import contextlib
import io
import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation.rotated_coco_evaluation import RotatedCOCOeval, RotatedCOCOEvaluator
from heron.structures.boxes import BoxMode
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import RotatedBoxes


@pytest.fixture
def rotated_dataset(tmp_path):
    """Register a dataset of rotated boxes (no json_file); yield a function that sets its
    ground truth and returns (name, output_dir)."""
    names = []

    def _make(gt_boxes, iscrowd=None):
        name = f"test_rotated_eval_{uuid.uuid4().hex}"
        anns = [
            {
                "bbox": list(b),
                "bbox_mode": BoxMode.XYWHA_ABS,
                "category_id": 0,
                "iscrowd": 0 if iscrowd is None else iscrowd[i],
            }
            for i, b in enumerate(gt_boxes)
        ]
        record = {"file_name": "a.jpg", "image_id": 1, "height": 40, "width": 40}
        record["annotations"] = anns
        DatasetCatalog.register(name, lambda: [record])
        MetadataCatalog.get(name).set(thing_classes=["thing"])
        names.append(name)
        return name, str(tmp_path / name)

    yield _make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _evaluate(name, output_dir, boxes, scores):
    evaluator = RotatedCOCOEvaluator(name, output_dir=output_dir, distributed=False)
    inst = Instances((40, 40))
    inst.pred_boxes = RotatedBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    return evaluator.evaluate()


def test_square_and_its_quarter_turn_have_ap_100(rotated_dataset):
    # a 4 x 4 square turned by 90 degrees about its center covers itself: IoU 1
    name, out = rotated_dataset([[10, 10, 4, 4, 0]])
    results = _evaluate(name, out, [[10, 10, 4, 4, 90]], [0.9])
    assert set(results) == {"bbox"}
    assert results["bbox"]["AP"] == pytest.approx(100)
    assert results["bbox"]["APs"] == pytest.approx(100)  # area 16 < 32 ** 2
    written = json.loads(Path(out, "coco_instances_results.json").read_text())
    assert written[0]["bbox"] == pytest.approx([10, 10, 4, 4, 90])


def test_square_turned_45_degrees_passes_half_the_thresholds(rotated_dataset):
    # A square of side s and its 45-degree turn about the center overlap in a regular
    # octagon of area 2 (sqrt 2 - 1) s^2, so IoU = 2 (sqrt2 - 1) / (2 - 2 (sqrt2 - 1))
    # = sqrt(2) / 2 = 0.7071: thresholds 0.50 ... 0.70 pass (5 of 10) -> AP 50.
    iou = 2 * (math.sqrt(2) - 1) / (2 - 2 * (math.sqrt(2) - 1))
    assert iou == pytest.approx(math.sqrt(2) / 2)
    name, out = rotated_dataset([[20, 20, 10, 10, 0]])
    bbox = _evaluate(name, out, [[20, 20, 10, 10, 45]], [0.9])["bbox"]
    assert bbox["AP"] == pytest.approx(50)
    assert bbox["AP50"] == pytest.approx(100)
    assert bbox["AP75"] == pytest.approx(0)
    assert bbox["APs"] == pytest.approx(50)  # area 100 < 32 ** 2: small
    assert math.isnan(bbox["APm"])  # no medium ground truth


def test_rotated_iou_of_box_lists_matches_hand_values():
    ev = RotatedCOCOeval(iouType="bbox")
    # gt: 4 x 2 box at the origin; dt 0: same box turned 180 degrees (IoU 1);
    # dt 1: same center, turned 90 degrees -> overlap 2 x 2 = 4, union 8 + 8 - 4: IoU 1/3;
    # dt 2: shifted by 4 along x -> touches at an edge: IoU 0
    dt = [[0, 0, 4, 2, 180], [0, 0, 4, 2, 90], [4, 0, 4, 2, 0]]
    gt = [[0, 0, 4, 2, 0]]
    ious = ev.compute_iou_dt_gt(dt, gt, [0])
    np.testing.assert_allclose(ious, [[1.0], [1 / 3], [0.0]], atol=1e-6)


def test_axis_aligned_boxes_use_coco_iou_with_crowd():
    ev = RotatedCOCOeval(iouType="bbox")
    # XYWH boxes, gt is a crowd region: COCO uses intersection over detection area
    ious = ev.compute_iou_dt_gt([[0, 0, 2, 2]], [[0, 0, 4, 4]], [1])
    np.testing.assert_allclose(ious, [[1.0]])
    ious = ev.compute_iou_dt_gt([[0, 0, 2, 2]], [[0, 0, 4, 4]], [0])
    np.testing.assert_allclose(ious, [[0.25]])


def test_mixed_axis_aligned_and_rotated_boxes_are_compared_as_rotated():
    ev = RotatedCOCOeval(iouType="bbox")
    # XYWH (0, 0, 4, 4) is the rotated box centered at (2, 2) with angle 0
    ious = ev.compute_iou_dt_gt([[0, 0, 4, 4]], [[2, 2, 4, 4, 90]], [0])
    np.testing.assert_allclose(ious, [[1.0]], atol=1e-6)
    assert RotatedCOCOeval.is_rotated([]) is False
    assert RotatedCOCOeval.is_rotated(np.zeros((0, 5))) is True


def test_rotated_crowd_regions_are_rejected():
    ev = RotatedCOCOeval(iouType="bbox")
    with pytest.raises(ValueError, match="crowd"):
        ev.compute_iou_dt_gt([[0, 0, 2, 2, 0]], [[0, 0, 4, 4, 0]], [1])


def test_rotated_gt_is_converted_with_five_number_boxes(rotated_dataset):
    name, out = rotated_dataset([[10, 10, 4, 2, 30]])
    RotatedCOCOEvaluator(name, output_dir=out, distributed=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(f"{out}/{name}_coco_format.json")
    (ann,) = coco.anns.values()
    assert ann["bbox"] == [10, 10, 4, 2, 30]
    assert ann["area"] == pytest.approx(8)  # w * h


def test_rotated_malformed_box_names_the_record(rotated_dataset):
    name, out = rotated_dataset([[10, 10, 4, 4, 0]])
    evaluator = RotatedCOCOEvaluator(name, output_dir=out, distributed=False)
    inst = Instances((40, 40))
    inst.pred_boxes = RotatedBoxes(torch.tensor([[10.0, 10.0, -4.0, 4.0, 0.0]]))
    inst.scores = torch.tensor([0.5])
    inst.pred_classes = torch.tensor([0])
    with pytest.raises(ValueError, match="prediction #0 of image_id 1 has a malformed box"):
        evaluator.process([{"image_id": 1}], [{"instances": inst}])


def test_rotated_empty_predictions_give_zero_metrics(rotated_dataset):
    name, out = rotated_dataset([[10, 10, 4, 4, 0]])
    results = _evaluate(name, out, np.zeros((0, 5)), [])
    assert results == {"bbox": {m: 0.0 for m in ["AP", "AP50", "AP75", "APs", "APm", "APl"]}}


def _as_rotated(anns, rotated):
    """Copies of the records; with ``rotated``, XYWH boxes become XYWHA of angle 0."""
    out = []
    for a in anns:
        a = dict(a)
        if rotated:
            x, y, w, h = a["bbox"]
            a["bbox"] = [x + w / 2, y + h / 2, w, h, 0.0]
        out.append(a)
    return out


def _coco(images, anns):
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_axis_aligned_boxes_as_rotated_give_pycocotools_stats():
    rng = np.random.RandomState(0)
    images = [{"id": i, "height": 200, "width": 200} for i in range(1, 6)]
    gts, dts = [], []
    for img in images:
        for _ in range(rng.randint(0, 5)):
            x, y = rng.uniform(0, 60, 2).tolist()
            w, h = rng.uniform(0, 130, 2).tolist()  # small, medium and large
            cat = int(rng.randint(1, 3))
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": img["id"],
                    "bbox": [x, y, w + 1, h + 1],
                    "area": (w + 1) * (h + 1),
                    "iscrowd": 0,
                    "category_id": cat,
                }
            )
            jitter = rng.normal(0, 4, 4)
            dts.append(
                {
                    "image_id": img["id"],
                    "category_id": cat,
                    "score": float(rng.rand()),
                    "bbox": [
                        x + jitter[0],
                        y + jitter[1],
                        w + 1 + abs(jitter[2]),
                        h + 1 + abs(jitter[3]),
                    ],
                }
            )
        dts.append(
            {
                "image_id": img["id"],
                "category_id": 1,
                "score": float(rng.rand()),
                "bbox": rng.uniform(1, 100, 4).tolist(),
            }
        )
    stats = []
    for rotated, cls in ((False, COCOeval), (True, RotatedCOCOeval)):
        gt = _coco(images, _as_rotated(gts, rotated))
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(_as_rotated(dts, rotated))
            ev = cls(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats.append(torch.tensor(ev.stats))
    assert (stats[0] > 0).all()  # every statistic is exercised
    torch.testing.assert_close(stats[1], stats[0], atol=1e-8, rtol=0)
