from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.coco import register_coco_instances
from heron.evaluation.coco_evaluation import (
    COCOEvaluator,
    _evaluate_box_proposals,
    _evaluate_predictions_on_coco,
    instances_to_coco_json,
)
from heron.evaluation.fast_eval import fast_coco_from_dataset
from heron.structures.boxes import Boxes, BoxMode
from heron.structures.instances import Instances

CAT_IDS = [1, 3, 7]  # non-contiguous dataset ids -> contiguous 0, 1, 2
BOX_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
KPT_METRICS = ["AP", "AP50", "AP75", "APm", "APl"]
NUM_KPTS = 4
KPT_SIGMAS = [0.05, 0.05, 0.08, 0.08]


@pytest.fixture
def register(tmp_path):
    """Write a COCO dict to tmp_path, register it under a unique name, remove it after."""
    names = []

    def _register(coco_dict: dict, load: bool = True) -> str:
        name = f"test_coco_eval_{uuid.uuid4().hex}"
        json_file = tmp_path / f"{name}.json"
        json_file.write_text(json.dumps(coco_dict))
        register_coco_instances(name, {}, str(json_file), str(tmp_path))
        names.append(name)
        if load:  # sets thing_classes and thing_dataset_id_to_contiguous_id
            DatasetCatalog.get(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _instances(h, w, boxes, scores, classes, masks=None, keypoints=None) -> Instances:
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    inst.scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    inst.pred_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    if masks is not None:
        inst.pred_masks = torch.as_tensor(masks)
    if keypoints is not None:
        inst.pred_keypoints = torch.as_tensor(keypoints)
    return inst


# ------------------------------------------------------------------ random data


def _random_dataset(rng: np.random.RandomState, with_keypoints: bool):
    """Random COCO ground truth and matching detections (as Instances and as COCO records).

    Ground truth: 1-5 images of 16-128 px (some empty), crowd regions, some categories
    absent. Detections: jittered copies of ground truth plus random boxes.
    """
    num_images = rng.randint(1, 6)
    image_ids = sorted(rng.choice(np.arange(1, 1000), num_images, replace=False).tolist())
    cat_ids = [1, 2] if with_keypoints else CAT_IDS
    used_cats = cat_ids if rng.rand() < 0.5 else cat_ids[: rng.randint(1, len(cat_ids))]
    images, annotations, outputs, ref_results = [], [], [], []
    for img_id in image_ids:
        h, w = rng.randint(16, 129, size=2).tolist()
        images.append({"id": img_id, "file_name": f"{img_id}.jpg", "height": h, "width": w})
        gts = []
        for _ in range(rng.choice([0, 1, 2, 4]) if rng.rand() < 0.9 else 0):
            x, y = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
            bw, bh = rng.uniform(1, w - x), rng.uniform(1, h - y)
            cat = int(rng.choice(used_cats))
            ann = {
                "id": len(annotations) + 1,
                "image_id": img_id,
                "bbox": [x, y, bw, bh],
                "area": bw * bh,
                "iscrowd": int(rng.rand() < 0.15),
                "category_id": cat,
                "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
            }
            if with_keypoints:
                kps = np.zeros((NUM_KPTS, 3))
                if cat == 1:  # only "person" has keypoints
                    kps[:, 0] = rng.randint(int(x), int(x + bw) + 1, NUM_KPTS)
                    kps[:, 1] = rng.randint(int(y), int(y + bh) + 1, NUM_KPTS)
                    kps[:, 2] = rng.choice([0, 1, 2], NUM_KPTS)
                    kps[kps[:, 2] == 0, :2] = 0
                ann["keypoints"] = kps.flatten().tolist()
                ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
            annotations.append(ann)
            gts.append(ann)
        boxes = []
        classes = []
        for gt in gts:  # jittered copies of (some) ground truth
            if rng.rand() < 0.8:
                x, y, bw, bh = gt["bbox"]
                j = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
                x0, y0 = np.clip([x + j[0], y + j[1]], 0, [w - 1, h - 1])
                x1, y1 = np.clip([x + bw + j[2], y + bh + j[3]], [x0, y0], [w, h])
                boxes.append([x0, y0, x1, y1])
                same = rng.rand() < 0.85
                classes.append(cat_ids.index(gt["category_id"]) if same else rng.randint(2))
        for _ in range(rng.randint(0, 4)):  # random boxes
            x0, y0 = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
            boxes.append([x0, y0, rng.uniform(x0, w), rng.uniform(y0, h)])
            classes.append(rng.randint(len(cat_ids)))
        n = len(boxes)
        boxes32 = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores32 = rng.permutation(np.linspace(0.05, 0.95, max(n, 1)))[:n].astype(np.float32)
        masks = np.zeros((n, h, w), dtype=bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes32):
            # a mask covering the top part of its box: mask area != box area, so the
            # small/medium/large split of mask AP depends on which area is used
            y_end = y0 + (y1 - y0) * rng.uniform(0.3, 1.0)
            masks[k, int(y0) : math.ceil(y_end), int(x0) : math.ceil(x1)] = True
        keypoints = None
        if with_keypoints:
            keypoints = np.zeros((n, NUM_KPTS, 3), dtype=np.float32)
            size = (n, NUM_KPTS)
            keypoints[:, :, 0] = rng.uniform(boxes32[:, None, 0], boxes32[:, None, 2] + 1, size)
            keypoints[:, :, 1] = rng.uniform(boxes32[:, None, 1], boxes32[:, None, 3] + 1, size)
            keypoints[:, :, 2] = rng.uniform(0, 1, (n, NUM_KPTS))
        inst = _instances(h, w, boxes32, scores32, classes, masks=masks, keypoints=keypoints)
        outputs.append(({"image_id": img_id}, {"instances": inst}))
        # reference records, built independently of the evaluator
        xywh = BoxMode.convert(boxes32.astype(np.float64), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        for k in range(n):
            rec = {
                "image_id": img_id,
                "category_id": cat_ids[classes[k]],
                "bbox": xywh[k].tolist(),
                "score": float(scores32[k]),
            }
            rle = mask_util.encode(np.asfortranarray(masks[k].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            rec["segmentation"] = rle
            if with_keypoints:
                kp = keypoints[k].astype(np.float64)
                kp[:, :2] -= 0.5  # Detectron2's shift back to COCO pixel indices
                rec["keypoints"] = kp.flatten().tolist()
            ref_results.append(rec)
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return coco, outputs, ref_results


def _reference_stats(json_file: str, results: list[dict], iou_type: str) -> np.ndarray:
    """pycocotools run directly, as its README shows (mask results without "bbox")."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        if not results:
            return None
        results = [dict(r) for r in results]
        if iou_type == "segm":
            for r in results:
                r.pop("bbox")
        if iou_type != "keypoints":
            for r in results:
                r.pop("keypoints", None)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.array(KPT_SIGMAS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _as_percent(stat: float) -> float:
    return stat * 100 if stat >= 0 else float("nan")


def _assert_metrics_match(results: dict, ref: COCOeval, metrics: list[str]) -> None:
    got = torch.tensor([results[m] for m in metrics], dtype=torch.float64)
    want = torch.tensor([_as_percent(s) for s in ref.stats[: len(metrics)]], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0, equal_nan=True)


def _run_evaluator(name, outputs, **kwargs) -> dict:
    evaluator = COCOEvaluator(name, distributed=False, **kwargs)
    evaluator.reset()
    for inputs, out in outputs:
        evaluator.process([inputs], [out])
    return evaluator.evaluate()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1))
def test_bbox_and_segm_metrics_equal_pycocotools(register, seed):
    coco, outputs, ref_results = _random_dataset(np.random.RandomState(seed), False)
    name = register(coco)
    json_file = MetadataCatalog.get(name).json_file
    for use_fast_impl in (False, True):
        results = _run_evaluator(name, outputs, use_fast_impl=use_fast_impl)
        if not ref_results:  # no detections: the empty-set rule (tested separately)
            assert all(results[t]["AP"] == 0.0 for t in ("bbox",))
            continue
        assert set(results) == {"bbox", "segm"}
        for task in ("bbox", "segm"):
            ref = _reference_stats(json_file, ref_results, task)
            _assert_metrics_match(results[task], ref, BOX_METRICS)
            # per-class AP: mean of valid precision entries at area "all", 100 detections
            for k, cat_id in enumerate(ref.params.catIds):
                p = ref.eval["precision"][:, :, k, 0, -1]
                want = p[p > -1].mean() * 100 if (p > -1).any() else float("nan")
                name_k = f"class{cat_id}"
                assert math.isclose(results[task][f"AP-{name_k}"], want, abs_tol=1e-6) or (
                    math.isnan(want) and math.isnan(results[task][f"AP-{name_k}"])
                )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1))
def test_every_stat_of_both_backends_equals_pycocotools(register, seed):
    coco, _, ref_results = _random_dataset(np.random.RandomState(seed), True)
    if not ref_results:
        return
    name = register(coco)
    json_file = MetadataCatalog.get(name).json_file
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
    fast_gt = fast_coco_from_dataset(gt.dataset)
    for task, num_stats in (("bbox", 12), ("segm", 12), ("keypoints", 10)):
        ref = _reference_stats(json_file, ref_results, task)
        records = [dict(r) for r in ref_results]
        if task != "keypoints":
            for r in records:
                r.pop("keypoints")
        for coco_gt, fast in ((gt, False), (fast_gt, True)):
            ours = _evaluate_predictions_on_coco(
                coco_gt, records, task, kpt_oks_sigmas=KPT_SIGMAS, use_fast_impl=fast
            )
            torch.testing.assert_close(
                torch.tensor(np.asarray(ours.stats[:num_stats], dtype=np.float64)),
                torch.tensor(np.asarray(ref.stats[:num_stats], dtype=np.float64)),
                atol=1e-8,
                rtol=0,
            )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1))
def test_keypoint_metrics_equal_pycocotools(register, seed):
    coco, outputs, ref_results = _random_dataset(np.random.RandomState(seed), True)
    if not ref_results:
        return
    name = register(coco)
    json_file = MetadataCatalog.get(name).json_file
    ref = _reference_stats(json_file, ref_results, "keypoints")
    for use_fast_impl in (False, True):
        results = _run_evaluator(
            name, outputs, use_fast_impl=use_fast_impl, kpt_oks_sigmas=KPT_SIGMAS
        )
        assert set(results) == {"bbox", "segm", "keypoints"}
        _assert_metrics_match(results["keypoints"], ref, KPT_METRICS)


# ------------------------------------------------------------------ hand-computed cases


def _one_image_dataset(gt_boxes, cats=(1,), iscrowd=None):
    anns = [
        {
            "id": i + 1,
            "image_id": 5,
            "bbox": list(b),
            "area": b[2] * b[3],
            "iscrowd": 0 if iscrowd is None else iscrowd[i],
            "category_id": cats[i] if len(cats) == len(gt_boxes) else cats[0],
        }
        for i, b in enumerate(gt_boxes)
    ]
    categories = [{"id": c, "name": f"class{c}"} for c in sorted(set(cats))]
    return {
        "images": [{"id": 5, "file_name": "5.jpg", "height": 100, "width": 100}],
        "annotations": anns,
        "categories": categories,
    }


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_perfect_detection_has_ap_100(register, use_fast_impl):
    name = register(_one_image_dataset([[10, 10, 50, 50]]))  # area 2500: medium
    out = _instances(100, 100, [[10, 10, 60, 60]], [0.9], [0])
    results = _run_evaluator(
        name, [({"image_id": 5}, {"instances": out})], use_fast_impl=use_fast_impl
    )
    bbox = results["bbox"]
    assert bbox["AP"] == pytest.approx(100) and bbox["APm"] == pytest.approx(100)
    assert math.isnan(bbox["APs"]) and math.isnan(bbox["APl"])  # no small or large objects
    assert "AP-class1" not in bbox  # one class: no per-class table


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_detection_at_iou_062_counts_for_three_of_ten_thresholds(register, use_fast_impl):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    # box 10 x 6.2 inside the 10 x 10 ground truth: IoU = 62 / 100 = 0.62, which passes
    # the thresholds 0.50, 0.55, 0.60 and fails 0.65 ... 0.95 -> AP = 3 / 10 = 30
    out = _instances(100, 100, [[0, 0, 10, 6.2]], [0.9], [0])
    bbox = _run_evaluator(
        name, [({"image_id": 5}, {"instances": out})], use_fast_impl=use_fast_impl
    )["bbox"]
    assert bbox["AP"] == pytest.approx(30)
    assert bbox["AP50"] == pytest.approx(100)
    assert bbox["AP75"] == pytest.approx(0)
    assert bbox["APs"] == pytest.approx(30)  # area 100 < 32 ** 2


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_false_positive_between_two_hits_gives_interpolated_ap(register, use_fast_impl):
    name = register(_one_image_dataset([[0, 0, 10, 10], [50, 50, 10, 10]]))
    # ranked by score: hit A, miss, hit B -> (recall, precision) = (.5, 1), (.5, .5), (1, 2/3).
    # Interpolated precision is 1 at the 51 recall points 0.00..0.50 and 2/3 at the 50
    # points 0.51..1.00, at every IoU threshold: AP = (51 + 50 * 2 / 3) / 101.
    out = _instances(
        100, 100, [[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 0]
    )
    bbox = _run_evaluator(
        name, [({"image_id": 5}, {"instances": out})], use_fast_impl=use_fast_impl
    )["bbox"]
    assert bbox["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100)


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_per_class_ap_uses_dataset_ids_and_nan_for_missing_class(register, use_fast_impl):
    coco = _one_image_dataset([[0, 0, 10, 10], [50, 50, 10, 10]], cats=(3, 7))
    coco["categories"].append({"id": 9, "name": "class9"})  # declared, never annotated
    name = register(coco)
    # contiguous 0 -> id 3 (perfect), 1 -> id 7 (IoU 0.62: AP 30), 2 -> id 9 (no gt)
    out = _instances(100, 100, [[0, 0, 10, 10], [50, 50, 60, 56.2]], [0.9, 0.8], [0, 1])
    bbox = _run_evaluator(
        name, [({"image_id": 5}, {"instances": out})], use_fast_impl=use_fast_impl
    )["bbox"]
    assert bbox["AP-class3"] == pytest.approx(100)
    assert bbox["AP-class7"] == pytest.approx(30)
    assert math.isnan(bbox["AP-class9"])
    assert bbox["AP"] == pytest.approx(65)  # mean over the two classes with ground truth


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_max_dets_per_image_sets_the_last_max_dets(register, use_fast_impl):
    # 12 detections, the only hit ranked last: cut at 10 it is lost, at 12 it counts
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    boxes = [[60, 60, 70, 70]] * 11 + [[0, 0, 10, 10]]
    scores = np.linspace(0.9, 0.3, 12)
    out = _instances(100, 100, boxes, scores, [0] * 12)
    # at 12 detections: 11 misses then a hit -> precision 1/12 at all recall points
    results = _run_evaluator(
        name,
        [({"image_id": 5}, {"instances": out})],
        use_fast_impl=use_fast_impl,
        max_dets_per_image=12,
    )
    assert results["bbox"]["AP"] == pytest.approx(100 / 12)
    results = _run_evaluator(
        name, [({"image_id": 5}, {"instances": out})], use_fast_impl=use_fast_impl
    )
    assert results["bbox"]["AP"] == pytest.approx(100 / 12)  # 100 detections keep it too
    with pytest.raises(ValueError, match="max_dets_per_image"):
        COCOEvaluator(name, max_dets_per_image=5)


def test_img_ids_restricts_evaluation(register):
    coco = _one_image_dataset([[0, 0, 10, 10]])
    coco["images"].append({"id": 6, "file_name": "6.jpg", "height": 100, "width": 100})
    coco["annotations"].append(
        {
            "id": 2,
            "image_id": 6,
            "bbox": [0, 0, 10, 10],
            "area": 100,
            "iscrowd": 0,
            "category_id": 1,
        }
    )
    name = register(coco)
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.process(
        [{"image_id": 5}], [{"instances": _instances(9, 9, [[0, 0, 10, 10]], [1], [0])}]
    )
    # image 6's box is missed: precision 1 up to recall 0.5 (51 of 101 recall points),
    # then 0 -> AP = 51 / 101 at every threshold
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(51 / 101 * 100)
    assert evaluator.evaluate(img_ids=[5])["bbox"]["AP"] == pytest.approx(100)


def test_crowd_region_absorbs_detections_without_false_positives(register):
    name = register(_one_image_dataset([[0, 0, 10, 10], [40, 40, 50, 50]], iscrowd=[0, 1]))
    # second detection lies inside the crowd region: ignored, so the AP stays 100
    out = _instances(100, 100, [[45, 45, 60, 60], [0, 0, 10, 10]], [0.95, 0.9], [0, 0])
    assert _run_evaluator(name, [({"image_id": 5}, {"instances": out})])["bbox"]["AP"] == (
        pytest.approx(100)
    )


# ------------------------------------------------------------------ conversion, files


def test_instances_to_coco_json_converts_boxes_masks_and_keypoints():
    masks = torch.zeros(1, 4, 5, dtype=torch.bool)
    masks[0, 1:3, 2:4] = True
    kps = torch.tensor([[[2.5, 1.5, 0.7], [3.0, 2.0, 0.1]]])
    inst = _instances(4, 5, [[1, 2, 4, 3]], [0.5], [2], masks=masks, keypoints=kps)
    (rec,) = instances_to_coco_json(inst, 42)
    assert rec["image_id"] == 42 and rec["category_id"] == 2 and rec["score"] == 0.5
    assert rec["bbox"] == [1, 2, 3, 1]  # XYXY (1, 2, 4, 3) -> XYWH
    assert rec["keypoints"] == pytest.approx([2.0, 1.0, 0.7, 2.5, 1.5, 0.1])  # x, y - 0.5
    decoded = mask_util.decode(rec["segmentation"])
    np.testing.assert_array_equal(decoded.astype(bool), masks[0].numpy())
    assert isinstance(rec["segmentation"]["counts"], str)
    assert kps[0, 0, 0] == 2.5  # the input is left alone
    assert instances_to_coco_json(_instances(4, 5, np.zeros((0, 4)), [], []), 1) == []


def test_evaluate_writes_results_with_dataset_category_ids(register, tmp_path):
    name = register(_one_image_dataset([[0, 0, 10, 10]], cats=(7,)))
    out_dir = tmp_path / "out"
    evaluator = COCOEvaluator(name, output_dir=str(out_dir), distributed=False)
    evaluator.process(
        [{"image_id": 5}], [{"instances": _instances(9, 9, [[0, 0, 10, 10]], [1], [0])}]
    )
    evaluator.evaluate()
    records = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert [r["category_id"] for r in records] == [7]
    saved = torch.load(out_dir / "instances_predictions.pth", weights_only=False)
    assert saved[0]["image_id"] == 5 and len(saved[0]["instances"]) == 1


def test_dataset_without_json_file_is_converted_and_cached(tmp_path):
    name = f"test_coco_eval_dicts_{uuid.uuid4().hex}"
    record = {
        "file_name": "a.jpg",
        "image_id": 3,
        "height": 50,
        "width": 50,
        "annotations": [
            {"bbox": [5, 5, 25, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
        ],
    }
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(thing_classes=["thing"])
    try:
        with pytest.raises(ValueError, match="output_dir"):
            COCOEvaluator(name)
        evaluator = COCOEvaluator(name, output_dir=str(tmp_path), distributed=False)
        cache = tmp_path / f"{name}_coco_format.json"
        assert cache.exists()
        assert MetadataCatalog.get(name).json_file == str(cache)
        assert json.loads(cache.read_text())["annotations"][0]["bbox"] == [5, 5, 20, 20]
        evaluator.process(
            [{"image_id": 3}], [{"instances": _instances(50, 50, [[5, 5, 25, 25]], [1], [0])}]
        )
        assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100)
        # a second evaluator reuses the cached file as it is
        mtime = os.path.getmtime(cache)
        COCOEvaluator(name, output_dir=str(tmp_path))
        assert os.path.getmtime(cache) == mtime
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ------------------------------------------------------------------ errors, empty input


def test_prediction_for_unknown_image_names_the_image(register):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.process(
        [{"image_id": 999}], [{"instances": _instances(9, 9, [[0, 0, 1, 1]], [1], [0])}]
    )
    with pytest.raises(ValueError, match="image_id 999"):
        evaluator.evaluate()


def test_prediction_with_unknown_category_names_the_record(register):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.process(
        [{"image_id": 5}], [{"instances": _instances(9, 9, [[0, 0, 1, 1]], [1], [4])}]
    )
    with pytest.raises(ValueError, match="image_id 5 has category id 4"):
        evaluator.evaluate()


@pytest.mark.parametrize(
    "box",
    [[0, 0, float("nan"), 1], [5, 0, 2, 1], [0, 0, float("inf"), 1]],
    ids=["nan", "neg", "inf"],
)
def test_malformed_box_names_the_record(register, box):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    evaluator = COCOEvaluator(name, distributed=False)
    inst = _instances(9, 9, [[0, 0, 1, 1], [0, 0, 1, 1]], [1, 0.5], [0, 0])
    inst.pred_boxes.tensor[1] = torch.tensor(box)  # Boxes() itself refuses NaN
    outputs = [{"instances": inst}]
    with pytest.raises(ValueError, match=r"prediction #1 of image_id 5 has a malformed box"):
        evaluator.process([{"image_id": 5}], outputs)


def test_segm_task_without_masks_is_rejected(register):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False)
    evaluator.process(
        [{"image_id": 5}], [{"instances": _instances(9, 9, [[0, 0, 1, 1]], [1], [0])}]
    )
    with pytest.raises(ValueError, match="task 'segm' needs a 'segmentation'"):
        evaluator.evaluate()


def test_unknown_task_is_rejected(register):
    name = register(_one_image_dataset([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="tasks must be among"):
        COCOEvaluator(name, tasks=("bbox", "panoptic"))


@pytest.mark.parametrize("use_fast_impl", [False, True])
def test_empty_predictions_give_zero_metrics_with_a_warning(register, caplog, use_fast_impl):
    name = register(_one_image_dataset([[0, 0, 10, 10]], cats=(1,)))
    evaluator = COCOEvaluator(name, distributed=False, use_fast_impl=use_fast_impl)
    evaluator.process(
        [{"image_id": 5}], [{"instances": _instances(9, 9, np.zeros((0, 4)), [], [])}]
    )
    with caplog.at_level(logging.WARNING):
        results = evaluator.evaluate()
    assert results == {"bbox": {m: 0.0 for m in BOX_METRICS}}
    assert "No predictions" in caplog.text


def test_empty_predictions_per_class_ap_is_zero_with_ground_truth_else_nan(register):
    coco = _one_image_dataset([[0, 0, 10, 10], [20, 20, 5, 5]], cats=(1, 3), iscrowd=[0, 1])
    coco["categories"].append({"id": 7, "name": "class7"})
    name = register(coco)
    results = _run_evaluator(name, [], tasks=("bbox", "segm"))
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == 0.0
        assert results[task]["AP-class1"] == 0.0
        assert math.isnan(results[task]["AP-class3"])  # only a crowd region: COCO counts none
        assert math.isnan(results[task]["AP-class7"])


# ------------------------------------------------------------------ proposals


def _proposals(boxes, logits) -> Instances:
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.objectness_logits = torch.tensor(logits, dtype=torch.float32)
    return inst


def test_proposal_recall_is_averaged_over_iou_thresholds(register, tmp_path):
    name = register(_one_image_dataset([[0, 0, 10, 10], [50, 50, 10, 10]]))
    # best overlaps: A is covered exactly (IoU 1); B at IoU 62 / 100 = 0.62.
    # Recall is 2/2 at t = .50, .55, .60 and 1/2 at the 7 others: AR = (3 + 3.5) / 10
    props = _proposals([[50, 50, 60, 56.2], [0, 0, 10, 10]], [1.0, 2.0])
    evaluator = COCOEvaluator(name, distributed=False, output_dir=str(tmp_path))
    evaluator.process([{"image_id": 5}], [{"proposals": props}])
    res = evaluator.evaluate()["box_proposals"]
    assert res["AR@100"] == pytest.approx(65) and res["AR@1000"] == pytest.approx(65)
    assert res["ARs@100"] == pytest.approx(65)  # both boxes are small (area 100)
    assert math.isnan(res["ARm@100"]) and math.isnan(res["ARl@1000"])  # 0 / 0 boxes
    assert (tmp_path / "box_proposals.pkl").exists()


def test_proposal_limit_keeps_the_highest_objectness():
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = _one_image_dataset([[0, 0, 10, 10]])
        coco.createIndex()
    props = _proposals([[0, 0, 10, 10], [50, 50, 60, 60]], [0.0, 1.0])
    stats = _evaluate_box_proposals([{"image_id": 5, "proposals": props}], coco, limit=1)
    assert stats["ar"].item() == 0.0  # only the far box (higher logit) is kept
    stats = _evaluate_box_proposals([{"image_id": 5, "proposals": props}], coco, limit=2)
    assert stats["ar"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="area must be one of"):
        _evaluate_box_proposals([], coco, area="huge")
