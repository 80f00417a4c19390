"""Tests of heron/evaluation/lvis_evaluation.py and heron/evaluation/lvis_eval.py.

The reference is the official ``lvis`` package (0.5.3), used here only; Heron never imports it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heron.data.catalog import MetadataCatalog
from heron.evaluation.lvis_eval import evaluate_lvis, limit_dets_per_image
from heron.evaluation.lvis_evaluation import LVISEvaluator
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
_SIZE = 128  # image height and width: boxes up to 128 x 128 reach the "large" range


@pytest.fixture
def lvis_ref(monkeypatch):
    """The lvis package, with the ``np.float`` alias it uses (removed in NumPy 1.24)."""
    lvis = pytest.importorskip("lvis")
    monkeypatch.setattr(np, "float", float, raising=False)
    return lvis


@pytest.fixture
def dataset(tmp_path):
    """Register an LVIS json under a unique name; yields a function (gt dict -> name)."""
    names = []

    def register(gt):
        name = f"lvis_test_{uuid.uuid4().hex}"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(gt))
        MetadataCatalog.get(name).set(json_file=str(path))
        names.append(name)
        return name

    yield register
    for name in names:
        MetadataCatalog.remove(name)


def _image(img_id, neg=(), not_exhaustive=()):
    return {
        "id": img_id,
        "height": _SIZE,
        "width": _SIZE,
        "neg_category_ids": list(neg),
        "not_exhaustive_category_ids": list(not_exhaustive),
    }


def _ann(ann_id, img_id, cat_id, box):
    x, y, w, h = box
    return {
        "id": ann_id,
        "image_id": img_id,
        "category_id": cat_id,
        "bbox": list(box),
        "area": w * h,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _cats(frequencies):
    return [
        {"id": k + 1, "name": f"c{k + 1}", "synonyms": [f"c{k + 1}"], "frequency": f}
        for k, f in enumerate(frequencies)
    ]


def _box_mask(box):
    """(H, W) bool mask of an XYWH box with integer corners."""
    x, y, w, h = (int(v) for v in box)
    mask = torch.zeros(_SIZE, _SIZE, dtype=torch.bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _outputs(dets_per_image, with_masks=False):
    """Model inputs/outputs from {image id: [(class index, XYWH box, score), ...]}."""
    inputs, outputs = [], []
    for img_id, dets in dets_per_image.items():
        inst = Instances((_SIZE, _SIZE))
        xywh = torch.tensor([d[1] for d in dets], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        inst.pred_boxes = Boxes(xyxy)
        inst.scores = torch.tensor([d[2] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        if with_masks:
            masks = [_box_mask(d[1]) for d in dets]
            inst.pred_masks = (
                torch.stack(masks) if masks else torch.zeros(0, _SIZE, _SIZE, dtype=torch.bool)
            )
        inputs.append({"image_id": img_id})
        outputs.append({"instances": inst})
    return inputs, outputs


def _evaluate(name, dets_per_image, with_masks=False, **kwargs):
    evaluator = LVISEvaluator(name, **kwargs)  # distributed=True works in one process
    evaluator.reset()
    evaluator.process(*_outputs(dets_per_image, with_masks))
    return evaluator.evaluate()


def _random_case(rng):
    """A random LVIS ground truth and detections {image id: [(class, XYWH, score)]}."""
    num_cats = int(rng.integers(2, 6))
    frequencies = [str(f) for f in rng.choice(["r", "c", "f"], size=num_cats)]
    images, anns, dets = [], [], {}
    for img_id in range(1, int(rng.integers(2, 5)) + 1):
        boxes = []
        cats_here = set()
        for _ in range(int(rng.integers(0, 5))):
            cat = int(rng.integers(1, num_cats + 1))
            large = rng.random() < 0.3  # sides >= 90: medium or large (area >= 96^2)
            x, y = (int(v) for v in rng.integers(0, 24 if large else _SIZE - 8, size=2))
            w = int(rng.integers(90 if large else 4, _SIZE - x + 1))
            h = int(rng.integers(90 if large else 4, _SIZE - y + 1))
            boxes.append((cat, (x, y, w, h)))
            anns.append(_ann(len(anns) + 1, img_id, cat, (x, y, w, h)))
            if rng.random() < 0.05:
                anns[-1]["area"] = 0  # not evaluated at all, in LVIS's API
            cats_here.add(cat)
        absent = [c for c in range(1, num_cats + 1) if c not in cats_here]
        neg = [c for c in absent if rng.random() < 0.5]
        not_exhaustive = [c for c in sorted(cats_here) if rng.random() < 0.4]
        images.append(_image(img_id, neg, not_exhaustive))
        dets[img_id] = []
        for _ in range(int(rng.integers(0, 9))):
            if boxes and rng.random() < 0.7:  # near a ground truth box, often its class
                cat, (x, y, w, h) = boxes[int(rng.integers(len(boxes)))]
                if rng.random() < 0.25:
                    cat = int(rng.integers(1, num_cats + 1))
                x = int(np.clip(x + rng.integers(-3, 4), 0, _SIZE - 2))
                y = int(np.clip(y + rng.integers(-3, 4), 0, _SIZE - 2))
                w = int(np.clip(w + rng.integers(-4, 5), 1, _SIZE - x))
                h = int(np.clip(h + rng.integers(-4, 5), 1, _SIZE - y))
            else:
                cat = int(rng.integers(1, num_cats + 1))
                x, y = (int(v) for v in rng.integers(0, _SIZE - 2, size=2))
                w = int(rng.integers(1, _SIZE - x + 1))
                h = int(rng.integers(1, _SIZE - y + 1))
            score = int(rng.integers(1, 9)) / 8  # exact in float32; ties are frequent
            dets[img_id].append((cat - 1, (x, y, w, h), score))
    if not anns:  # a json without annotations is a test set: LVISEvaluator does not evaluate
        anns.append(_ann(1, 1, 1, (0, 0, 20, 20)))
        images[0]["neg_category_ids"] = [c for c in images[0]["neg_category_ids"] if c != 1]
    if not any(dets.values()):  # the reference cannot load an empty result list
        dets[1] = [(0, (0, 0, 10, 10), 0.5)]
    gt = {"images": images, "annotations": anns, "categories": _cats(frequencies)}
    return gt, dets


def _reference(lvis, gt, dets, iou_type, max_dets):
    """The lvis package's metrics (fractions, -1 when undefined), as Detectron2 calls it."""
    results = []
    for img_id, items in dets.items():
        for cat, box, score in items:
            res = {"image_id": img_id, "category_id": cat + 1, "score": score}
            if iou_type == "segm":
                rle = mask_util.encode(np.asfortranarray(_box_mask(box).numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("utf-8")
                res["segmentation"] = rle
            else:
                res["bbox"] = [float(v) for v in box]
            results.append(res)
    lvis_gt = lvis.LVIS.__new__(lvis.LVIS)
    lvis_gt.dataset = copy.deepcopy(gt)
    lvis_gt.logger = logging.getLogger("lvis-reference")
    lvis_gt._create_index()
    lvis_dt = lvis.LVISResults(lvis_gt, results, max_dets=max_dets)
    lvis_eval = lvis.LVISEval(lvis_gt, lvis_dt, iou_type)
    lvis_eval.run()
    return lvis_eval.get_results()


def _assert_matches_reference(ours, ref):
    for metric in _METRICS:
        expected = ref[metric] * 100 if ref[metric] > -1 else math.nan
        torch.testing.assert_close(
            ours[metric], expected, rtol=0, atol=1e-6, equal_nan=True, msg=metric
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1), max_dets=st.sampled_from([3, 300]))
def test_lvis_evaluator_matches_lvis_api_on_random_data(lvis_ref, dataset, seed, max_dets):
    gt, dets = _random_case(np.random.default_rng(seed))
    name = dataset(gt)
    results = _evaluate(name, dets, with_masks=True, max_dets_per_image=max_dets)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(results[task]) == set(_METRICS)
        _assert_matches_reference(results[task], _reference(lvis_ref, gt, dets, task, max_dets))


# Hand-computed cases. Categories 1 ("f"), 2 ("c"), 3 ("r"). Image 1 has a 10x10 box of
# class 1, image 2 a 10x10 box of class 2 (both "small": area 100 < 32^2).
def _two_image_gt(img1_neg=(), img1_not_exhaustive=()):
    return {
        "images": [_image(1, img1_neg, img1_not_exhaustive), _image(2)],
        "annotations": [_ann(1, 1, 1, (0, 0, 10, 10)), _ann(2, 2, 2, (0, 0, 10, 10))],
        "categories": _cats(["f", "c", "r"]),
    }


def test_perfect_detections_give_ap_100_and_nan_for_groups_without_ground_truth(dataset):
    name = dataset(_two_image_gt())
    dets = {1: [(0, (0, 0, 10, 10), 0.9)], 2: [(1, (0, 0, 10, 10), 0.8)]}
    bbox = _evaluate(name, dets)["bbox"]
    for metric in ["AP", "AP50", "AP75", "APs", "APf", "APc"]:
        assert bbox[metric] == pytest.approx(100.0)
    # no medium or large ground truth, no rare category with ground truth
    assert math.isnan(bbox["APm"]) and math.isnan(bbox["APl"]) and math.isnan(bbox["APr"])


def test_detection_of_negative_category_counts_as_false_positive(dataset):
    name = dataset(_two_image_gt(img1_neg=[2]))
    # class 2 in image 1 (listed negative), ranked above the true positive of image 2:
    # FP then TP -> precision [0, 1/2], made non-increasing [1/2, 1/2]; recall [0, 1];
    # every recall threshold reads 1/2, at every IoU threshold -> AP(class 2) = 0.5.
    # class 1 has no detection -> AP(class 1) = 0. AP = (0 + 0.5) / 2.
    dets = {1: [(1, (50, 50, 10, 10), 0.9)], 2: [(1, (0, 0, 10, 10), 0.5)]}
    bbox = _evaluate(name, dets)["bbox"]
    assert bbox["APc"] == pytest.approx(50.0)
    assert bbox["APf"] == pytest.approx(0.0)
    assert bbox["AP"] == pytest.approx(25.0)


def test_detection_of_category_neither_present_nor_negative_is_ignored(dataset):
    name = dataset(_two_image_gt(img1_neg=[]))
    # same detections as above, but nothing is known about class 2 in image 1: the FP is
    # dropped, class 2 keeps precision 1 -> APc = 100, AP = (0 + 1) / 2.
    dets = {1: [(1, (50, 50, 10, 10), 0.9)], 2: [(1, (0, 0, 10, 10), 0.5)]}
    bbox = _evaluate(name, dets)["bbox"]
    assert bbox["APc"] == pytest.approx(100.0)
    assert bbox["AP"] == pytest.approx(50.0)


@pytest.mark.parametrize(("not_exhaustive", "expected_apf"), [([1], 100.0), ([], 50.0)])
def test_unmatched_detection_of_not_exhaustive_category_is_ignored(
    dataset, not_exhaustive, expected_apf
):
    name = dataset(_two_image_gt(img1_not_exhaustive=not_exhaustive))
    # class 1 in image 1: an unmatched box (0.9) above the true positive (0.8). Ignored when
    # class 1 is not exhaustively annotated -> AP 1; otherwise FP, TP -> AP 1/2.
    dets = {1: [(0, (60, 60, 10, 10), 0.9), (0, (0, 0, 10, 10), 0.8)]}
    assert _evaluate(name, dets)["bbox"]["APf"] == pytest.approx(expected_apf)


def test_ap_averages_iou_thresholds(dataset):
    name = dataset(_two_image_gt())
    # IoU of (0, 0, 10, 6.8) with (0, 0, 10, 10) is 0.68: a match at 0.50, 0.55, 0.60 and
    # 0.65 only, so AP(class 1) = 4/10, AP50 = 1, AP75 = 0; class 2 has no detection (0).
    dets = {1: [(0, (0, 0, 10, 6.8), 0.9)]}
    bbox = _evaluate(name, dets)["bbox"]
    assert bbox["APf"] == pytest.approx(40.0)
    assert bbox["AP"] == pytest.approx(20.0)
    assert bbox["AP50"] == pytest.approx(50.0)
    assert bbox["AP75"] == pytest.approx(0.0)


def test_ground_truth_outside_area_range_is_matched_only_as_a_last_resort():
    # Class 1: A = (0, 0, 30, 30) area 900 (small), B = (0, 0, 40, 32) area 1280 (medium);
    # the detection (0, 0, 36, 31), area 1116, has IoU 900/1116 = 0.806 with A and
    # 1116/1280 = 0.872 with B.
    gt = {
        "images": [_image(1)],
        "annotations": [_ann(1, 1, 1, (0, 0, 30, 30)), _ann(2, 1, 1, (0, 0, 40, 32))],
        "categories": _cats(["f"]),
    }
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 36, 31], "score": 0.9}]
    metrics = evaluate_lvis(gt, results, "bbox").metrics
    # small: B is ignored, so A (regular) wins at IoU 0.50..0.80 (7 thresholds, precision 1);
    # at 0.85 only B qualifies and the detection it takes is ignored; above, unmatched and
    # medium-sized, so ignored too -> APs = 7/10.
    assert metrics["APs"] == pytest.approx(0.7)
    # medium: A is ignored, B matches at 0.50..0.85 (8 thresholds); at 0.90 and 0.95 the
    # medium-sized detection is a false positive -> APm = 8/10.
    assert metrics["APm"] == pytest.approx(0.8)


def test_segm_uses_mask_iou(dataset):
    name = dataset(_two_image_gt())
    # the 10x10 mask against the 10x10 polygon of class 1 -> IoU 1; a 10x5 mask on class 2's
    # 10x10 polygon -> IoU 0.5: matched at threshold 0.50 only -> AP(class 2) = 1/10.
    dets = {1: [(0, (0, 0, 10, 10), 0.9)], 2: [(1, (0, 0, 10, 5), 0.9)]}
    segm = _evaluate(name, dets, with_masks=True)["segm"]
    assert segm["APf"] == pytest.approx(100.0)
    assert segm["APc"] == pytest.approx(10.0)


def test_limit_dets_per_image_keeps_highest_scores_per_image():
    results = [
        {"image_id": 1, "score": 0.1},
        {"image_id": 2, "score": 0.3},
        {"image_id": 1, "score": 0.9},
        {"image_id": 1, "score": 0.5},
    ]
    kept = limit_dets_per_image(results, 2)
    assert [(r["image_id"], r["score"]) for r in kept] == [(1, 0.9), (1, 0.5), (2, 0.3)]
    assert limit_dets_per_image(results, -1) == [results[0], results[2], results[3], results[1]]


def test_max_dets_per_image_drops_low_scores(dataset):
    name = dataset(_two_image_gt())
    # with one detection per image only the unmatched 0.9 box is kept: AP(class 1) = 0
    dets = {1: [(0, (60, 60, 10, 10), 0.9), (0, (0, 0, 10, 10), 0.8)]}
    assert _evaluate(name, dets, max_dets_per_image=1)["bbox"]["APf"] == pytest.approx(0.0)
    assert _evaluate(name, dets, max_dets_per_image=2)["bbox"]["APf"] == pytest.approx(50.0)


def test_results_file_has_lvis_category_ids_and_xywh_boxes(dataset, tmp_path):
    name = dataset(_two_image_gt())
    out = tmp_path / "out"
    _evaluate(name, {2: [(1, (1, 2, 3, 4), 0.5)]}, output_dir=str(out))
    records = json.loads((out / "lvis_instances_results.json").read_text())
    assert records == [
        {"image_id": 2, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    ]
    assert (out / "instances_predictions.pth").is_file()


def test_unknown_image_id_raises(dataset):
    name = dataset(_two_image_gt())
    with pytest.raises(ValueError, match="image_id 99"):
        _evaluate(name, {99: [(0, (0, 0, 10, 10), 0.5)]})


def test_unknown_class_index_raises(dataset):
    name = dataset(_two_image_gt())
    with pytest.raises(ValueError, match=r"image_id 1.*class index 3"):
        _evaluate(name, {1: [(3, (0, 0, 10, 10), 0.5)]})


def test_category_without_frequency_raises():
    gt = _two_image_gt()
    del gt["categories"][1]["frequency"]
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(ValueError, match="category id 2 has frequency None"):
        evaluate_lvis(gt, results, "bbox")


def test_unknown_task_and_missing_json_file_raise(dataset):
    name = dataset(_two_image_gt())
    with pytest.raises(ValueError, match="tasks must be among"):
        LVISEvaluator(name, tasks=("keypoints",))
    with pytest.raises(ValueError, match="json_file"):
        LVISEvaluator(f"lvis_unregistered_{uuid.uuid4().hex}")


@pytest.mark.parametrize("dets", [{}, {1: []}])
def test_empty_predictions_give_zeros_and_a_warning(dataset, caplog, dets):
    name = dataset(_two_image_gt())
    with caplog.at_level(logging.WARNING, logger="heron.evaluation.lvis_evaluation"):
        results = _evaluate(name, dets)
    assert results == {"bbox": {metric: 0.0 for metric in _METRICS}}
    assert "No predictions" in caplog.text


def test_box_proposals_recall(dataset):
    name = dataset(_two_image_gt())
    proposals = Instances((_SIZE, _SIZE))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60]]))
    proposals.objectness_logits = torch.tensor([1.0, 2.0])
    evaluator = LVISEvaluator(name, distributed=False)
    evaluator.process([{"image_id": 1}, {"image_id": 2}], [{"proposals": proposals}] * 2)
    ar = evaluator.evaluate()["box_proposals"]
    # image 1's box is covered exactly (recall 1 at every IoU), image 2's also: AR = 100;
    # both boxes are small, so ARs = 100 and the medium/large ranges have no boxes (0/0)
    assert ar["AR@100"] == pytest.approx(100.0)
    assert ar["ARs@1000"] == pytest.approx(100.0)


def test_json_without_annotations_is_not_evaluated_but_results_are_written(dataset, tmp_path):
    gt = _two_image_gt()
    gt["annotations"] = []
    name = dataset(gt)
    out = tmp_path / "out"
    assert _evaluate(name, {1: [(0, (0, 0, 10, 10), 0.5)]}, output_dir=str(out)) == {}
    assert len(json.loads((out / "lvis_instances_results.json").read_text())) == 1
