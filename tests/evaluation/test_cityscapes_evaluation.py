from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from heron.data.catalog import MetadataCatalog
from heron.evaluation.cityscapes_evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    _average_precision,
    _train_id_to_id_lut,
)
from heron.structures.instances import Instances

THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
CAR, PERSON = 2, 0  # indices into THING_CLASSES
# average instance sizes of the official iIoU weights
CAR_SIZE = 12794.0202738185


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.fixture
def cityscapes_tree(tmp_path):
    """Write gtFine pngs for frames and register metadata pointing at them."""
    names = []

    def _make(frames: dict[str, dict[str, np.ndarray]]):
        gt_dir = tmp_path / "gtFine" / "val"
        for frame, files in frames.items():
            city = frame.split("_")[0]
            (gt_dir / city).mkdir(parents=True, exist_ok=True)
            for kind, array in files.items():
                dtype = np.uint16 if kind == "instanceIds" else np.uint8
                path = gt_dir / city / f"{frame}_gtFine_{kind}.png"
                Image.fromarray(np.asarray(array, dtype=dtype)).save(path)
        name = f"test_cityscapes_{uuid.uuid4().hex}"
        MetadataCatalog.get(name).set(gt_dir=str(gt_dir), thing_classes=THING_CLASSES)
        names.append(name)
        return name

    yield _make
    for name in names:
        MetadataCatalog.remove(name)


def _input(frame):
    city = frame.split("_")[0]
    return {"file_name": f"/data/leftImg8bit/val/{city}/{frame}_leftImg8bit.png"}


def _sem_seg_output(train_ids):
    train_ids = torch.as_tensor(np.asarray(train_ids), dtype=torch.int64)
    return {"sem_seg": torch.nn.functional.one_hot(train_ids, 19).permute(2, 0, 1).float()}


def test_train_id_to_label_id_table():
    lut = _train_id_to_id_lut()
    # road 0 -> 7, car 13 -> 26, truck 14 -> 27, bicycle 18 -> 33; no train id 19 or 255
    assert [lut[0], lut[13], lut[14], lut[18]] == [7, 26, 27, 33]
    assert lut[19] == 255 and lut[255] == 255


# Frame A, 2x4. Label ids: road 7, sidewalk 8, car 26, person 24, unlabeled 0 (ignored).
A_LABELS = [[7, 7, 26, 26], [0, 8, 26, 24]]
# two car instances (26000: 2 px, 26001: 1 px) and a person (24000)
A_INSTANCES = [[7, 7, 26000, 26000], [0, 8, 26001, 24000]]
# train ids: road 0, sidewalk 1, car 13, truck 14, person 11
A_PRED = [[0, 1, 13, 13], [13, 1, 14, 11]]
# Frame B, 1x3: building 11 (train id 2), and a car group region (26, not an instance)
B_LABELS = [[11, 11, 26]]
B_INSTANCES = [[11, 11, 26]]
B_PRED = [[2, 13, 13]]


def _semantic_tree(cityscapes_tree):
    return cityscapes_tree(
        {
            "aachen_000000_000019": {"labelIds": A_LABELS, "instanceIds": A_INSTANCES},
            "bonn_000001_000019": {"labelIds": B_LABELS, "instanceIds": B_INSTANCES},
        }
    )


def test_semantic_iou_and_iiou_on_two_images(cityscapes_tree):
    evaluator = CityscapesSemSegEvaluator(_semantic_tree(cityscapes_tree))
    evaluator.reset()
    evaluator.process(
        [_input("aachen_000000_000019"), _input("bonn_000001_000019")],
        [_sem_seg_output(A_PRED), _sem_seg_output(B_PRED)],
    )
    res = evaluator.evaluate()["sem_seg"]
    # (gt -> pred label id): A: 7->7 7->8 26->26 26->26 0->26 8->8 26->27 24->24
    #                        B: 11->11 11->26 26->26;  0 is ignored: its 0->26 counts nowhere
    # road: tp 1 fn 1 fp 0 -> 1/2   sidewalk: tp 1 fp 1 -> 1/2   building: tp 1 fn 1 -> 1/2
    # person: 1   car: tp 3 fn 1 fp 1 (11->26) -> 3/5   truck: fp 1 -> 0; the rest NaN
    _close(res["IoU"], 100 * (0.5 + 0.5 + 0.5 + 1 + 0.6 + 0) / 6)
    # iIoU: car instance 26000 (2 px, both right) weight S/2, 26001 (1 px, wrong) weight S:
    # tp_w = S, fn_w = S, fp 1 -> S / (2S + 1); truck 0 / 1; person 1
    s = CAR_SIZE
    _close(res["iIoU"], 100 * (s / (2 * s + 1) + 0 + 1) / 3)
    # categories: flat (7, 8): tp 3 -> 1; construction: 1/2; human: 1;
    # vehicle: tp 4 (truck counts as vehicle), fn 0, fp 1 -> 4/5; object, nature, sky NaN
    _close(res["IoU_sup"], 100 * (1 + 0.5 + 1 + 0.8) / 4)
    # vehicle iIoU: both car instances fully predicted as vehicles -> 2S / (2S + 1)
    _close(res["iIoU_sup"], 100 * (1 + 2 * s / (2 * s + 1)) / 2)


def test_semantic_perfect_prediction_scores_100(cityscapes_tree):
    name = cityscapes_tree(
        {"aachen_000000_000019": {"labelIds": A_LABELS, "instanceIds": A_INSTANCES}}
    )
    evaluator = CityscapesSemSegEvaluator(name)
    # train ids of A_LABELS; the ignored pixel may hold anything
    evaluator.process(
        [_input("aachen_000000_000019")], [_sem_seg_output([[0, 0, 13, 13], [5, 1, 13, 11]])]
    )
    assert evaluator.evaluate()["sem_seg"] == {
        "IoU": 100.0,
        "iIoU": 100.0,
        "IoU_sup": 100.0,
        "iIoU_sup": 100.0,
    }


def test_semantic_missing_prediction_is_reported(cityscapes_tree):
    evaluator = CityscapesSemSegEvaluator(_semantic_tree(cityscapes_tree))
    evaluator.process([_input("aachen_000000_000019")], [_sem_seg_output(A_PRED)])
    with pytest.raises(ValueError, match=r"1 ground truth images .* \['bonn_000001_000019'\]"):
        evaluator.evaluate()


def test_semantic_unknown_input_raises_key_error(cityscapes_tree):
    evaluator = CityscapesSemSegEvaluator(_semantic_tree(cityscapes_tree))
    with pytest.raises(KeyError, match="koeln_000000_000001"):
        evaluator.process([_input("koeln_000000_000001")], [_sem_seg_output(A_PRED)])


def test_semantic_size_mismatch_names_the_file(cityscapes_tree):
    evaluator = CityscapesSemSegEvaluator(_semantic_tree(cityscapes_tree))
    with pytest.raises(
        ValueError, match=r"aachen_000000_000019_leftImg8bit.png' has size \(1, 3\)"
    ):
        evaluator.process([_input("aachen_000000_000019")], [_sem_seg_output(B_PRED)])


# ----------------------------------------------------------------------------- instances

FRAME = "aachen_000000_000019"
SIZE = 30


def _instance_tree(cityscapes_tree, instance_ids):
    return cityscapes_tree({FRAME: {"instanceIds": instance_ids}})


def _road():
    return np.full((SIZE, SIZE), 7, dtype=np.int64)  # road: evaluated, not an instance


def _box(r0, r1, c0, c1):
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _instances(masks, classes, scores):
    instances = Instances((SIZE, SIZE))
    instances.pred_masks = (
        torch.as_tensor(np.stack(masks)) if masks else torch.zeros(0, SIZE, SIZE, dtype=torch.bool)
    )
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    return {"instances": instances}


def _instance_ap(name, output):
    evaluator = CityscapesInstanceEvaluator(name)
    evaluator.reset()
    evaluator.process([_input(FRAME)], [output])
    return evaluator.evaluate()["segm"]


CAR_A = _box(0, 10, 0, 10)  # 100 px, just the minimum region size


def test_instance_perfect_match_gives_100(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    res = _instance_ap(_instance_tree(cityscapes_tree, gt), _instances([CAR_A], [CAR], [0.9]))
    # car: one gt, one prediction with IoU 1 at every threshold; other classes NaN
    assert res == {"AP": 100.0, "AP50": 100.0}


def test_instance_missed_gt_halves_recall(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    gt[_box(15, 25, 15, 25)] = 26001
    res = _instance_ap(_instance_tree(cityscapes_tree, gt), _instances([CAR_A], [CAR], [0.9]))
    # one point (recall 1/2, precision 1) plus the recall-0 point: widths 1/4 + 1/4 -> 1/2
    assert res == {"AP": 50.0, "AP50": 50.0}


def test_instance_no_prediction_scores_zero(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    res = _instance_ap(_instance_tree(cityscapes_tree, gt), {})
    assert res == {"AP": 0.0, "AP50": 0.0}


def test_instance_false_positive_with_higher_score_counts(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    fp = _box(15, 25, 15, 25)  # on road
    res = _instance_ap(
        _instance_tree(cityscapes_tree, gt), _instances([CAR_A, fp], [CAR, CAR], [0.9, 0.95])
    )
    # thresholds 0.9 (tp 1, fp 1: p 1/2, r 1) and 0.95 (p 0, r 0), then (p 0, r 0):
    # widths (1 - 0)/2, (1 - 0)/2, 0 -> 1/2 * 1/2 = 1/4
    assert res == {"AP": 25.0, "AP50": 25.0}


def test_instance_false_positive_with_lower_score_costs_nothing(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    fp = _box(15, 25, 15, 25)
    res = _instance_ap(
        _instance_tree(cityscapes_tree, gt), _instances([CAR_A, fp], [CAR, CAR], [0.9, 0.5])
    )
    # at 0.9 precision is 1 with recall 1; the 0.5 point adds no recall width
    assert res == {"AP": 100.0, "AP50": 100.0}


def test_instance_false_positive_in_ignore_region_not_counted(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    gt[_box(15, 25, 15, 25)] = 0  # unlabeled: ignored in evaluation
    gt[_box(15, 25, 0, 10)] = 26  # a car group region
    preds = [CAR_A, _box(15, 25, 15, 25), _box(15, 25, 0, 10)]
    res = _instance_ap(
        _instance_tree(cityscapes_tree, gt), _instances(preds, [CAR] * 3, [0.9, 0.95, 0.95])
    )
    # both high-scoring predictions lie wholly on ignored pixels: no false positive
    assert res == {"AP": 100.0, "AP50": 100.0}


def test_instance_region_below_100_pixels_ignored(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    small = _box(20, 29, 20, 29)  # 81 px
    gt[small] = 26001
    res = _instance_ap(
        _instance_tree(cityscapes_tree, gt),
        _instances([CAR_A, small], [CAR, CAR], [0.9, 0.95]),
    )
    # the small car is neither a miss nor a match, and the prediction on it is ignored
    assert res == {"AP": 100.0, "AP50": 100.0}


def test_instance_overlap_must_exceed_each_threshold(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    pred = _box(0, 8, 0, 10)  # IoU 80/100 = 0.8
    res = _instance_ap(_instance_tree(cityscapes_tree, gt), _instances([pred], [CAR], [0.9]))
    # matched at 0.5 ... 0.75 (6 thresholds), not at 0.8 ... 0.95 (a miss and a FP: AP 0)
    _close(res["AP"], 60.0)
    _close(res["AP50"], 100.0)


def test_instance_classes_without_gt_are_left_out(cityscapes_tree):
    gt = _road()
    gt[CAR_A] = 26000
    gt[_box(15, 25, 15, 25)] = 24000  # a person nobody predicts: AP 0
    preds = [CAR_A, _box(0, 10, 20, 30)]  # a perfect car, and a rider where none is: NaN
    res = _instance_ap(_instance_tree(cityscapes_tree, gt), _instances(preds, [CAR, 1], [0.9, 0.8]))
    assert res == {"AP": 50.0, "AP50": 50.0}


def test_instance_without_any_gt_is_nan(cityscapes_tree):
    res = _instance_ap(_instance_tree(cityscapes_tree, _road()), _instances([CAR_A], [CAR], [0.9]))
    assert math.isnan(res["AP"]) and math.isnan(res["AP50"])


def test_instance_mask_size_mismatch_names_the_file(cityscapes_tree):
    gt = _road()
    evaluator = CityscapesInstanceEvaluator(_instance_tree(cityscapes_tree, gt))
    output = _instances([CAR_A], [CAR], [0.9])
    output["instances"].pred_masks = torch.zeros(1, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"aachen_000000_000019_leftImg8bit.png' have size"):
        evaluator.process([_input(FRAME)], [output])


def test_average_precision_of_hand_built_lists():
    # two gt, matched scores 0.8 and 0.6, a FP at 0.7:
    # threshold 0.6: tp 2 fp 1 -> p 2/3 r 1; 0.7: tp 1 fp 1 -> p 1/2 r 1/2; 0.8: p 1 r 1/2
    # recall [1, 1/2, 1/2, 0] padded [1, 1, 1/2, 1/2, 0, 0]: widths 1/4, 1/4, 1/4, 1/4
    ap = _average_precision([1, 0, 1], [0.8, 0.7, 0.6], hard_fns=0)
    _close(ap, (2 / 3 + 1 / 2 + 1 + 1) / 4)
