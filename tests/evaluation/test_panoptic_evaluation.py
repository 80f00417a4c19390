"""Tests of COCOPanopticEvaluator end to end on the panoptic shapes dataset."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.coco_panoptic import register_coco_panoptic
from heron.data.datasets.shapes import generate_shapes_dataset, get_shapes_panoptic_metadata
from heron.evaluation.panoptic_evaluation import COCOPanopticEvaluator
from heron.evaluation.panoptic_quality import rgb2id

KEYS = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]


@pytest.fixture
def shapes(tmp_path):
    """Register a 3-image panoptic shapes split under a unique name; yield (name, records)."""
    info = generate_shapes_dataset(tmp_path, num_images=3, image_size=(64, 64), panoptic=True)
    name = f"test_panoptic_eval_{uuid.uuid4().hex}"
    register_coco_panoptic(
        name,
        get_shapes_panoptic_metadata(separated=False),
        info["image_root"],
        info["panoptic_root"],
        info["panoptic_json"],
    )
    try:
        yield name, DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _gt_ids(record: dict) -> np.ndarray:
    with Image.open(record["pan_seg_file_name"]) as img:
        return rgb2id(np.asarray(img)).astype(np.int64)


def _inputs(record: dict) -> dict:
    return {"file_name": record["file_name"], "image_id": record["image_id"]}


def _gt_as_prediction(record: dict) -> dict:
    """The ground truth in the model's (panoptic_img, segments_info) form, contiguous ids."""
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
    ]
    return {"panoptic_seg": (torch.from_numpy(_gt_ids(record)).to(torch.int32), segments)}


def _run(name: str, records: list[dict], outputs: list[dict], output_dir=None) -> dict:
    evaluator = COCOPanopticEvaluator(name, output_dir=output_dir)
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([_inputs(record)], [output])
    return evaluator.evaluate()


def test_ground_truth_as_prediction_scores_100(shapes, caplog):
    name, records = shapes
    with caplog.at_level(logging.INFO, logger="heron.evaluation.panoptic_evaluation"):
        res = _run(name, records, [_gt_as_prediction(r) for r in records])
    assert list(res) == ["panoptic_seg"]
    assert list(res["panoptic_seg"]) == KEYS
    for key in KEYS:
        assert res["panoptic_seg"][key] == pytest.approx(100.0, abs=1e-9), key
    assert "Panoptic Evaluation Results" in caplog.text


def test_removing_one_thing_segment_gives_one_false_negative(shapes):
    name, records = shapes
    outputs = [_gt_as_prediction(r) for r in records]
    # drop the first thing of image 0: its pixels become 0 (no segment) in the prediction
    removed = next(s for s in records[0]["segments_info"] if s["isthing"])
    panoptic_img, segments = outputs[0]["panoptic_seg"]
    panoptic_img = panoptic_img.clone()
    panoptic_img[panoptic_img == removed["id"]] = 0
    segments = [s for s in segments if s["id"] != removed["id"]]
    outputs[0] = {"panoptic_seg": (panoptic_img, segments)}
    res = _run(name, records, outputs)["panoptic_seg"]

    # Every other segment is matched with IoU 1. The removed segment's category c, with
    # n_c ground-truth segments, keeps n_c - 1 TPs and gets one FN:
    #   PQ_c = RQ_c = (n_c - 1) / (n_c - 1 + 0.5), SQ_c = 1 (0 if n_c == 1).
    counts = Counter((s["category_id"], s["isthing"]) for r in records for s in r["segments_info"])
    n_c = counts[(removed["category_id"], True)]
    pq_c = (n_c - 1) / (n_c - 0.5)
    sq_c = 1.0 if n_c > 1 else 0.0
    num_things = sum(1 for _, isthing in counts if isthing)
    num_all = len(counts)
    assert res["PQ_th"] == pytest.approx(100 * (num_things - 1 + pq_c) / num_things)
    assert res["SQ_th"] == pytest.approx(100 * (num_things - 1 + sq_c) / num_things)
    assert res["RQ_th"] == pytest.approx(100 * (num_things - 1 + pq_c) / num_things)
    assert res["PQ"] == pytest.approx(100 * (num_all - 1 + pq_c) / num_all)
    assert res["PQ_st"] == pytest.approx(100.0)
    assert res["PQ"] < 100.0


def test_label_divisor_output_is_decoded_like_detectron2(shapes):
    name, records = shapes
    outputs, originals = [], []
    for record in records:
        # category * 1000 + instance with contiguous ids; -1 is VOID
        ids = _gt_ids(record)
        encoded = np.full(ids.shape, -1, dtype=np.int64)
        for k, s in enumerate(record["segments_info"], start=1):
            instance = k if s["isthing"] else 0
            encoded[ids == s["id"]] = s["category_id"] * 1000 + instance
        tensor = torch.from_numpy(encoded).to(torch.int32)
        originals.append(tensor.clone())
        outputs.append({"panoptic_seg": (tensor, None)})
    res = _run(name, records, outputs)["panoptic_seg"]
    for key in KEYS:
        assert res[key] == pytest.approx(100.0, abs=1e-9), key
    for output, original in zip(outputs, originals):  # the +1 shift works on a copy
        torch.testing.assert_close(output["panoptic_seg"][0], original)


def test_output_dir_receives_predictions_json_with_dataset_category_ids(shapes, tmp_path):
    name, records = shapes
    out_dir = tmp_path / "out"
    _run(name, records, [_gt_as_prediction(r) for r in records], output_dir=str(out_dir))
    with open(os.path.join(out_dir, "predictions.json")) as f:
        written = json.load(f)
    assert [a["image_id"] for a in written["annotations"]] == [r["image_id"] for r in records]
    first = written["annotations"][0]
    assert (
        first["file_name"]
        == os.path.splitext(os.path.basename(records[0]["file_name"]))[0] + ".png"
    )
    # shapes: thing contiguous i -> dataset id i + 1; stuff contiguous j -> dataset id j + 1
    assert [s["category_id"] for s in first["segments_info"]] == [
        s["category_id"] + 1 for s in records[0]["segments_info"]
    ]
    assert all(
        "isthing" not in s and "png_string" not in a
        for a in written["annotations"]
        for s in a["segments_info"]
    )


def test_unknown_contiguous_category_raises(shapes):
    name, records = shapes
    evaluator = COCOPanopticEvaluator(name)
    evaluator.reset()
    bad = {
        "panoptic_seg": (
            torch.zeros(4, 4, dtype=torch.int32),
            [{"id": 1, "category_id": 42, "isthing": True}],
        )
    }
    with pytest.raises(KeyError, match="thing category_id 42"):
        evaluator.process([_inputs(records[0])], [bad])


def test_reset_clears_predictions_so_a_second_pass_is_independent(shapes):
    name, records = shapes
    evaluator = COCOPanopticEvaluator(name)
    evaluator.reset()
    evaluator.process([_inputs(records[0])], [_gt_as_prediction(records[0])])
    evaluator.reset()
    for record in records:
        evaluator.process([_inputs(record)], [_gt_as_prediction(record)])
    assert evaluator.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    # evaluate can run again on the same predictions
    assert evaluator.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)
