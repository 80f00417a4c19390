"""Tests of heron.evaluation.panoptic_quality on tiny hand-built panoptic PNGs (4 x 5 pixels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from heron.evaluation.panoptic_quality import id2rgb, pq_compute, rgb2id

CATEGORIES = [
    {"id": 1, "name": "cat", "isthing": 1},
    {"id": 2, "name": "dog", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
]
CAT, DOG, SKY = 1, 2, 3


def _segments(ids: np.ndarray, category_of: dict[int, int], crowd: tuple[int, ...] = ()) -> list:
    """segments_info for every non-zero id in ``ids``; area counted from the array."""
    return [
        {
            "id": seg_id,
            "category_id": category_of[seg_id],
            "iscrowd": int(seg_id in crowd),
            "area": int((ids == seg_id).sum()),
        }
        for seg_id in sorted(category_of)
    ]


def _evaluate(tmp_path, images: list[tuple], categories=CATEGORIES) -> dict:
    """images: (gt ids, gt category_of, gt crowd ids, pred ids, pred category_of) per image."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_anns, pred_anns = [], []
    for image_id, (gt, gt_cats, crowd, pred, pred_cats) in enumerate(images, start=1):
        name = f"{image_id}.png"
        Image.fromarray(id2rgb(np.array(gt))).save(gt_dir / name)
        Image.fromarray(id2rgb(np.array(pred))).save(pred_dir / name)
        gt_anns.append(
            {
                "image_id": image_id,
                "file_name": name,
                "segments_info": _segments(np.array(gt), gt_cats, crowd),
            }
        )
        pred_segments = [{"id": k, "category_id": v} for k, v in pred_cats.items()]
        pred_anns.append({"image_id": image_id, "file_name": name, "segments_info": pred_segments})
    gt_json = {"annotations": gt_anns, "categories": categories}
    pred_json = {"annotations": pred_anns}
    return pq_compute(gt_json, pred_json, str(gt_dir), str(pred_dir))


def _close(actual: float, expected: float) -> None:
    assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


def _check(group: dict, pq: float, sq: float, rq: float, n: int) -> None:
    _close(group["pq"], pq)
    _close(group["sq"], sq)
    _close(group["rq"], rq)
    assert group["n"] == n


# Ground truth used by several tests: rows 0-1 a cat (id 1, 10 px), rows 2-3 sky (id 2, 10 px).
GT_CAT_SKY = [[1] * 5, [1] * 5, [2] * 5, [2] * 5]


def test_perfect_prediction_scores_one(tmp_path):
    pred = [[7] * 5, [7] * 5, [9] * 5, [9] * 5]  # same regions under other ids
    res = _evaluate(tmp_path, [(GT_CAT_SKY, {1: CAT, 2: SKY}, (), pred, {7: CAT, 9: SKY})])
    _check(res["All"], 1.0, 1.0, 1.0, 2)
    _check(res["Things"], 1.0, 1.0, 1.0, 1)
    _check(res["Stuff"], 1.0, 1.0, 1.0, 1)


def test_partial_overlaps_give_exact_iou_and_only_present_categories_are_averaged(tmp_path):
    # pred cat: the first 8 of the gt cat's 10 px; its other 2 px go to the predicted sky.
    pred = [[5] * 5, [5, 5, 5, 6, 6], [6] * 5, [6] * 5]
    res = _evaluate(tmp_path, [(GT_CAT_SKY, {1: CAT, 2: SKY}, (), pred, {5: CAT, 6: SKY})])
    # cat: 8 / (8 + 10 - 8) = 0.8; sky: 10 / (12 + 10 - 10) = 5/6; both TP, RQ 1
    cat_iou, sky_iou = 0.8, 10 / 12
    assert res["per_class"][CAT]["tp"] == 1 and res["per_class"][CAT]["fp"] == 0
    _close(res["per_class"][CAT]["sq"], cat_iou)
    _close(res["per_class"][SKY]["pq"], sky_iou)
    # dog never occurs: left out of the averages (n = 2, not 3)
    _check(res["All"], (cat_iou + sky_iou) / 2, (cat_iou + sky_iou) / 2, 1.0, 2)
    _check(res["Things"], cat_iou, cat_iou, 1.0, 1)
    _check(res["Stuff"], sky_iou, sky_iou, 1.0, 1)


def test_iou_of_exactly_half_is_a_false_positive_and_a_false_negative(tmp_path):
    # pred cat covers 5 of the gt cat's 10 px: IoU 5 / 10 = 0.5, not > 0.5
    pred = [[5] * 5, [6] * 5, [6] * 5, [6] * 5]
    res = _evaluate(tmp_path, [(GT_CAT_SKY, {1: CAT, 2: SKY}, (), pred, {5: CAT, 6: SKY})])
    cat = res["per_class"][CAT]
    assert (cat["tp"], cat["fp"], cat["fn"]) == (0, 1, 1)
    # sky: 10 / 15 = 2/3 > 0.5 -> TP
    _close(res["per_class"][SKY]["pq"], 2 / 3)
    _check(res["All"], (0 + 2 / 3) / 2, (0 + 2 / 3) / 2, (0 + 1) / 2, 2)


def test_predicted_pixels_on_void_are_left_out_of_the_union(tmp_path):
    # gt: row 0 VOID, rows 1-2 cat (10 px), row 3 sky; the pred cat also covers row 0.
    gt = [[0] * 5, [1] * 5, [1] * 5, [2] * 5]
    pred = [[5] * 5, [5] * 5, [5] * 5, [6] * 5]
    res = _evaluate(tmp_path, [(gt, {1: CAT, 2: SKY}, (), pred, {5: CAT, 6: SKY})])
    # union = 15 + 10 - 10 - 5 (on VOID) = 10 -> IoU 1 (it would be 10/15 counting VOID)
    _close(res["per_class"][CAT]["sq"], 1.0)
    _check(res["All"], 1.0, 1.0, 1.0, 2)


def test_unmatched_prediction_mostly_on_void_is_not_a_false_positive(tmp_path):
    gt = [[0] * 5, [3] * 5, [3] * 5, [3] * 5]  # row 0 VOID, sky 15 px
    pred = [
        [7, 7, 7, 8, 8],  # dog 7: 3 of 4 px on VOID (0.75 > 0.5) -> ignored
        [7, 8, 8, 9, 9],  # cat 8: 2 of 4 px on VOID (0.5, not > 0.5) -> FP
        [9] * 5,
        [9] * 5,
    ]
    res = _evaluate(tmp_path, [(gt, {3: SKY}, (), pred, {7: DOG, 8: CAT, 9: SKY})])
    # sky: 12 / (12 + 15 - 12) = 0.8
    assert res["per_class"][DOG]["fp"] == 0
    assert res["per_class"][CAT]["fp"] == 1
    _check(res["All"], (0.8 + 0) / 2, (0.8 + 0) / 2, (1 + 0) / 2, 2)  # sky and cat
    _check(res["Things"], 0.0, 0.0, 0.0, 1)
    _check(res["Stuff"], 0.8, 0.8, 1.0, 1)


def test_crowd_regions_never_match_and_exempt_predictions_of_their_class(tmp_path):
    # gt: rows 0-1 a crowd of cats (id 1, 10 px), rows 2-3 sky (id 2, 10 px)
    pred = [
        [11] * 5,  # cat 11: 8 px, all in the cat crowd -> not a TP, not an FP
        [11, 11, 11, 13, 12],  # dog 12: 1 px in the *cat* crowd -> FP
        [13, 14, 14, 14, 14],  # cat 13: 1 px crowd + 1 px sky = 0.5, not > 0.5 -> FP
        [14] * 5,  # sky 14: 9 px, all on gt sky -> IoU 9 / 10
    ]
    res = _evaluate(
        tmp_path,
        [(GT_CAT_SKY, {1: CAT, 2: SKY}, (1,), pred, {11: CAT, 12: DOG, 13: CAT, 14: SKY})],
    )
    cat, dog = res["per_class"][CAT], res["per_class"][DOG]
    assert (cat["tp"], cat["fp"], cat["fn"]) == (0, 1, 0)  # the crowd is no FN either
    assert (dog["tp"], dog["fp"], dog["fn"]) == (0, 1, 0)
    _check(res["All"], 0.9 / 3, 0.9 / 3, 1 / 3, 3)
    _check(res["Things"], 0.0, 0.0, 0.0, 2)
    _check(res["Stuff"], 0.9, 0.9, 1.0, 1)


def test_counts_accumulate_over_images_before_dividing(tmp_path):
    perfect = (GT_CAT_SKY, {1: CAT, 2: SKY}, (), GT_CAT_SKY, {1: CAT, 2: SKY})
    cat_missed = [[0] * 5, [0] * 5, [2] * 5, [2] * 5]  # VOID where the cat is
    missed = (GT_CAT_SKY, {1: CAT, 2: SKY}, (), cat_missed, {2: SKY})
    res = _evaluate(tmp_path, [perfect, missed])
    # cat: TP 1 (IoU 1), FN 1 -> PQ = 1 / (1 + 0.5) = 2/3, SQ 1, RQ 2/3; sky: 1
    _check(res["Things"], 2 / 3, 1.0, 2 / 3, 1)
    _check(res["All"], (2 / 3 + 1) / 2, 1.0, (2 / 3 + 1) / 2, 2)


def test_no_segments_anywhere_gives_zero_averages(tmp_path):
    void = [[0] * 5] * 4
    res = _evaluate(tmp_path, [(void, {}, (), void, {})])
    for name in ("All", "Things", "Stuff"):
        _check(res[name], 0.0, 0.0, 0.0, 0)
    assert res["per_class"][CAT] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}


def test_pq_compute_reads_json_files_and_default_folders(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    ids = np.array(GT_CAT_SKY)
    Image.fromarray(id2rgb(ids)).save(tmp_path / "gt" / "a.png")
    Image.fromarray(id2rgb(ids)).save(tmp_path / "pred" / "a.png")
    segments = _segments(ids, {1: CAT, 2: SKY})
    ann = {"image_id": "a", "file_name": "a.png", "segments_info": segments}
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": [ann], "categories": CATEGORIES}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [ann]}))
    # folders default to the json paths without ".json"
    res = pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"))
    _check(res["All"], 1.0, 1.0, 1.0, 2)


def test_categories_argument_overrides_the_json(tmp_path):
    gt = (GT_CAT_SKY, {1: CAT, 2: SKY}, (), GT_CAT_SKY, {1: CAT, 2: SKY})
    # sky declared a thing: both categories are things now
    as_things = [dict(c, isthing=1) for c in CATEGORIES]
    res = _evaluate(tmp_path, [gt], categories=CATEGORIES)
    assert res["Things"]["n"] == 1
    (tmp_path / "again").mkdir()
    res = _evaluate(tmp_path / "again", [gt], categories=as_things)
    assert res["Things"]["n"] == 2 and res["Stuff"]["n"] == 0


def _one_image(tmp_path, pred_ids, pred_segments, pred_shape=None):
    gt_ids = np.array(GT_CAT_SKY)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(id2rgb(gt_ids)).save(tmp_path / "gt" / "1.png")
    Image.fromarray(id2rgb(np.array(pred_ids))).save(tmp_path / "pred" / "1.png")
    gt_ann = {"image_id": 1, "file_name": "1.png", "segments_info": _segments(gt_ids, {1: 1, 2: 3})}
    pred_ann = {"image_id": 1, "file_name": "1.png", "segments_info": pred_segments}
    return (
        {"annotations": [gt_ann], "categories": CATEGORIES},
        {"annotations": [pred_ann]},
        str(tmp_path / "gt"),
        str(tmp_path / "pred"),
    )


def test_segment_in_png_but_not_in_json_raises(tmp_path):
    args = _one_image(tmp_path, GT_CAT_SKY, [{"id": 1, "category_id": CAT}])
    with pytest.raises(KeyError, match=r"segment with ID 2 is in the predicted PNG"):
        pq_compute(*args)


def test_segment_in_json_but_not_in_png_raises(tmp_path):
    segments = [{"id": i, "category_id": CAT} for i in (1, 2, 5)]
    args = _one_image(tmp_path, GT_CAT_SKY, segments)
    with pytest.raises(KeyError, match=r"segment IDs \[5\] are in the prediction"):
        pq_compute(*args)


def test_unknown_predicted_category_raises(tmp_path):
    segments = [{"id": 1, "category_id": 99}, {"id": 2, "category_id": SKY}]
    args = _one_image(tmp_path, GT_CAT_SKY, segments)
    with pytest.raises(KeyError, match="unknown category_id 99"):
        pq_compute(*args)


def test_missing_prediction_for_an_image_raises(tmp_path):
    gt_json, _, gt_dir, pred_dir = _one_image(tmp_path, GT_CAT_SKY, [])
    with pytest.raises(KeyError, match="no prediction for the image with id 1"):
        pq_compute(gt_json, {"annotations": []}, gt_dir, pred_dir)


def test_images_of_different_sizes_raise(tmp_path):
    args = _one_image(tmp_path, [[0] * 4] * 4, [])
    with pytest.raises(
        ValueError, match=r"ground truth is \(4, 5\) but the prediction is \(4, 4\)"
    ):
        pq_compute(*args)


def test_missing_folder_raises(tmp_path):
    gt_json, pred_json, gt_dir, _ = _one_image(tmp_path, GT_CAT_SKY, [])
    with pytest.raises(ValueError, match=r"pred_folder .* is not a directory"):
        pq_compute(gt_json, pred_json, gt_dir, str(tmp_path / "nowhere"))


def test_id2rgb_and_rgb2id_round_trip():
    ids = np.array([[0, 1, 255], [256, 65535, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 0].tolist() == [0, 1, 0]  # 256 = 0 + 256 * 1
    np.testing.assert_array_equal(rgb2id(rgb), ids)


def test_id2rgb_rejects_negative_ids():
    with pytest.raises(ValueError, match=r"id_map values must lie in \[0, 16777216\)"):
        id2rgb(np.array([[-1, 0]]))
