from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.evaluation.sem_seg_evaluation import (
    SemSegEvaluator,
    _mask_to_boundary,
    load_image_into_numpy_array,
)

CLASSES = ["a", "b", "c"]


@pytest.fixture
def register(tmp_path):
    """Write label pngs, register a dataset of them, and forget it after the test."""
    names = []

    def _register(gts, classes=CLASSES, **meta):
        name = f"test_sem_seg_{uuid.uuid4().hex}"
        records = []
        for i, gt in enumerate(gts):
            path = tmp_path / f"{name}_gt{i}.png"
            Image.fromarray(np.asarray(gt, dtype=np.uint8)).save(path)
            records.append({"file_name": f"img{i}.jpg", "sem_seg_file_name": str(path)})
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(stuff_classes=classes, ignore_label=255, **meta)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _scores(pred, num_classes=3):
    """(C, H, W) one-hot scores whose argmax is the label map ``pred``."""
    pred = torch.as_tensor(np.asarray(pred), dtype=torch.int64)
    return torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()


def _evaluate(name, preds, **kwargs):
    evaluator = SemSegEvaluator(name, **kwargs)
    evaluator.reset()
    inputs = [{"file_name": f"img{i}.jpg"} for i in range(len(preds))]
    evaluator.process(inputs, [{"sem_seg": _scores(p)} for p in preds])
    return evaluator.evaluate()["sem_seg"]


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


# gt and prediction of one 2x4 image; 255 is ignored.
GT_1 = [[0, 0, 1, 1], [2, 2, 255, 1]]
PRED_1 = [[0, 1, 1, 1], [2, 0, 0, 2]]


def test_metrics_of_one_image_match_hand_computed_confusion_matrix(register):
    res = _evaluate(register([GT_1]), [PRED_1], distributed=False)
    # (pred, gt) pairs, the ignored pixel left out: (0,0) (1,0) (1,1) (1,1) (2,2) (0,2) (2,1)
    # class a: tp 1, gt 2, pred 2 -> IoU 1/3, ACC 1/2
    # class b: tp 2, gt 3, pred 3 -> IoU 2/4,  ACC 2/3
    # class c: tp 1, gt 2, pred 2 -> IoU 1/3, ACC 1/2
    _close(res["IoU-a"], 100 / 3)
    _close(res["IoU-b"], 50.0)
    _close(res["IoU-c"], 100 / 3)
    _close(res["ACC-a"], 50.0)
    _close(res["ACC-b"], 200 / 3)
    _close(res["ACC-c"], 50.0)
    _close(res["mIoU"], 100 * (1 / 3 + 1 / 2 + 1 / 3) / 3)  # 7/18
    # gt frequencies 2/7, 3/7, 2/7
    _close(res["fwIoU"], 100 * (2 / 7 / 3 + 3 / 7 / 2 + 2 / 7 / 3))  # 17/42
    _close(res["mACC"], 100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)  # 5/9
    _close(res["pACC"], 100 * 4 / 7)
    # 2 rows are fewer than the 3x3 erosion window: the boundary is the whole map
    for name in CLASSES:
        _close(res[f"BoundaryIoU-{name}"], res[f"IoU-{name}"])


def test_result_keys_follow_detectron2_order(register):
    res = _evaluate(register([GT_1]), [PRED_1], distributed=False)
    per_class = [key for name in CLASSES for key in (f"IoU-{name}", f"BoundaryIoU-{name}")] + [
        f"min(IoU, B-Iou)-{name}" for name in CLASSES
    ]
    assert list(res)[:2] == ["mIoU", "fwIoU"]
    assert set(per_class) <= set(res)
    assert list(res)[-5:] == ["mACC", "pACC", "ACC-a", "ACC-b", "ACC-c"]


def test_class_absent_from_gt_is_nan_and_left_out_of_means(register):
    gt = [[0, 0, 0], [1, 1, 1]]
    pred = [[0, 2, 0], [1, 1, 0]]
    res = _evaluate(register([gt]), [pred], distributed=False)
    # a: tp 2, gt 3, pred 3 -> 2/4; b: tp 2, gt 3, pred 2 -> 2/3; c: no gt -> NaN
    assert math.isnan(res["IoU-c"]) and math.isnan(res["ACC-c"])
    _close(res["mIoU"], 100 * (1 / 2 + 2 / 3) / 2)
    _close(res["fwIoU"], 100 * (0.5 * 1 / 2 + 0.5 * 2 / 3))
    _close(res["mACC"], 100 * 2 / 3)
    _close(res["pACC"], 100 * 4 / 6)


def test_all_pixels_ignored_gives_nan_means_and_zero_fwiou(register):
    res = _evaluate(register([[[255, 255]]]), [[[0, 1]]], distributed=False)
    for key in ("mIoU", "mACC", "pACC", "IoU-a", "ACC-b"):
        assert math.isnan(res[key]), key
    # fwIoU is a sum over the valid classes, as in Detectron2: empty sum
    assert res["fwIoU"] == 0.0


def test_ignore_label_argument_overrides_metadata(register):
    # label 2 ignored: only the first pixel counts, and it is right
    res = _evaluate(register([[[0, 2]]]), [[[0, 1]]], distributed=False, ignore_label=2)
    _close(res["pACC"], 100.0)
    _close(res["IoU-a"], 100.0)
    assert math.isnan(res["IoU-b"])


def test_two_images_in_one_batch_sum_their_confusion_matrices(register, tmp_path):
    gt_2 = [[1, 1, 255]]
    pred_2 = [[1, 0, 2]]
    name = register([GT_1, gt_2])
    evaluator = SemSegEvaluator(name, output_dir=str(tmp_path / "out"))  # distributed=True
    evaluator.reset()
    evaluator.process(
        [{"file_name": "img0.jpg"}, {"file_name": "img1.jpg"}],
        [{"sem_seg": _scores(PRED_1)}, {"sem_seg": _scores(pred_2)}],
    )
    res = evaluator.evaluate()["sem_seg"]
    # image 2 adds (1,1) (0,1); its (2, ignored) pixel counts nowhere
    # a: tp 1, gt 2, pred 3 -> 1/4, ACC 1/2; b: tp 3, gt 5, pred 4 -> 3/6, ACC 3/5
    # c: tp 1, gt 2, pred 2 -> 1/3, ACC 1/2
    _close(res["IoU-a"], 25.0)
    _close(res["IoU-b"], 50.0)
    _close(res["mIoU"], 100 * 13 / 36)
    _close(res["fwIoU"], 100 * (2 / 9 / 4 + 5 / 9 / 2 + 2 / 9 / 3))  # 11/27
    _close(res["mACC"], 100 * (1 / 2 + 3 / 5 + 1 / 2) / 3)
    _close(res["pACC"], 100 * 5 / 9)
    saved = torch.load(tmp_path / "out" / "sem_seg_evaluation.pth", weights_only=True)
    assert saved.keys() == res.keys()
    _close(saved["mIoU"], res["mIoU"])
    with open(tmp_path / "out" / "sem_seg_predictions.json") as f:
        predictions = json.load(f)
    # image 1 predicts classes 0, 1, 2 and image 2 too: one segment each
    assert [(p["file_name"], p["category_id"]) for p in predictions] == [
        ("img0.jpg", 0),
        ("img0.jpg", 1),
        ("img0.jpg", 2),
        ("img1.jpg", 0),
        ("img1.jpg", 1),
        ("img1.jpg", 2),
    ]


def test_mask_to_boundary_of_square_is_its_one_pixel_ring():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:8, 2:8] = 1
    boundary = _mask_to_boundary(mask)
    # diagonal 14.1, 2% of it rounds to 0 -> one erosion; the 6x6 square keeps its 4x4 core
    expected = mask.copy()
    expected[3:7, 3:7] = 0
    np.testing.assert_array_equal(boundary, expected)
    assert boundary.sum() == 36 - 16


def test_mask_to_boundary_matches_cv2_erode_with_zero_border():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for ratio, (h, w) in [(0.02, (7, 9)), (0.1, (23, 31)), (0.2, (30, 12)), (0.3, (5, 40))]:
        blocks = rng.integers(0, 5, size=(h // 3 + 1, w // 3 + 1))
        mask = np.kron(blocks, np.ones((3, 3), dtype=np.int64))[:h, :w].astype(np.uint8)
        # Detectron2's definition, with OpenCV as the reference
        dilation = max(1, round(ratio * math.sqrt(h**2 + w**2)))
        padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1:-1, 1:-1]
        np.testing.assert_array_equal(_mask_to_boundary(mask, ratio), mask - eroded)


def test_mask_to_boundary_rejects_3d_input():
    with pytest.raises(ValueError, match=r"2-dimensional .* got shape \(2, 2, 3\)"):
        _mask_to_boundary(np.zeros((2, 2, 3), dtype=np.uint8))


def test_boundary_iou_of_shifted_square(register):
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[2:8, 2:8] = 1
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[2:8, 3:9] = 1
    res = _evaluate(register([gt], classes=["bg", "sq"]), [pred], distributed=False)
    # squares: 36 px each, overlap 6x5 = 30 -> IoU 30/42; background 58/70
    _close(res["IoU-sq"], 100 * 30 / 42)
    _close(res["IoU-bg"], 100 * 58 / 70)
    # rings of 20 px; they share 5 px on the top row and 5 on the bottom -> 10/30
    _close(res["BoundaryIoU-sq"], 100 / 3)
    # boundary value 0 elsewhere: 80 px each, 70 shared -> 70/90
    _close(res["BoundaryIoU-bg"], 100 * 7 / 9)
    _close(res["min(IoU, B-Iou)-sq"], 100 / 3)


def test_boundary_iou_skipped_with_255_classes(register):
    classes = [f"c{i}" for i in range(255)]
    res = _evaluate(register([[[0, 1]]], classes=classes), [[[0, 1]]], distributed=False)
    assert not any(key.startswith(("BoundaryIoU", "min(")) for key in res)
    _close(res["pACC"], 100.0)


def test_encode_json_sem_seg_round_trips_with_dataset_ids(register):
    name = register([GT_1], stuff_dataset_id_to_contiguous_id={10: 0, 20: 1, 30: 2})
    evaluator = SemSegEvaluator(name, distributed=False)
    sem_seg = np.array([[0, 2, 2], [2, 0, 1]])
    segments = evaluator.encode_json_sem_seg(sem_seg, "x.jpg")
    assert [s["category_id"] for s in segments] == [10, 20, 30]
    for segment, label in zip(segments, [0, 1, 2]):
        assert segment["file_name"] == "x.jpg"
        rle = dict(segment["segmentation"])
        assert isinstance(rle["counts"], str)
        rle["counts"] = rle["counts"].encode("utf-8")
        np.testing.assert_array_equal(mask_util.decode(rle), (sem_seg == label).astype(np.uint8))
    json.dumps(segments)  # serializable


def test_encode_json_sem_seg_names_label_missing_from_dataset_ids(register):
    name = register([GT_1], stuff_dataset_id_to_contiguous_id={10: 0})
    evaluator = SemSegEvaluator(name, distributed=False)
    with pytest.raises(KeyError, match=r"label 1 for 'x.jpg'"):
        evaluator.encode_json_sem_seg(np.array([[0, 1]]), "x.jpg")


def test_prediction_size_differing_from_gt_names_the_file(register):
    evaluator = SemSegEvaluator(register([GT_1]), distributed=False)
    with pytest.raises(ValueError, match=r"'img0.jpg' has size \(2, 3\).*\(2, 4\)"):
        evaluator.process([{"file_name": "img0.jpg"}], [{"sem_seg": _scores([[0, 1, 2]] * 2)}])


def test_unknown_input_file_raises_key_error(register):
    evaluator = SemSegEvaluator(register([GT_1]), distributed=False)
    with pytest.raises(KeyError, match=r"'other\.jpg' is not a record"):
        evaluator.process([{"file_name": "other.jpg"}], [{"sem_seg": _scores(PRED_1)}])


def test_gt_label_outside_classes_is_reported(register):
    evaluator = SemSegEvaluator(register([[[0, 7]]]), distributed=False)
    with pytest.raises(ValueError, match=r"labels \[7\] outside \[0, 3\)"):
        evaluator.process([{"file_name": "img0.jpg"}], [{"sem_seg": _scores([[0, 1]])}])


def test_num_classes_must_match_metadata(register):
    with pytest.raises(ValueError, match="num_classes=4 differs from the 3"):
        SemSegEvaluator(register([GT_1]), num_classes=4)


def test_load_image_into_numpy_array_reads_labels_as_int(tmp_path):
    path = tmp_path / "l.png"
    Image.fromarray(np.array([[3, 255]], dtype=np.uint8)).save(path)
    array = load_image_into_numpy_array(str(path), copy=True, dtype=int)
    assert array.dtype == np.int64 and array.flags.writeable
    np.testing.assert_array_equal(array, [[3, 255]])
