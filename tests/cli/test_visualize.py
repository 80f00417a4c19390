"""Tests of heron/cli/visualize.py: `heron visualize-data` (annotation and dataloader sources)
and `heron visualize-json`, in process through heron.cli.main.main."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from heron.cli.main import main
from heron.cli.visualize import parse_json_predictions, predictions_to_instances


def _read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int64)


def _box_diffs(drawn, raw, boxes_xywh, scale=1.0):
    """Mean absolute difference of drawn vs raw inside each (scaled) annotation box."""
    diffs = []
    for x, y, w, h in boxes_xywh:
        x0, y0 = int(x * scale), int(y * scale)
        x1, y1 = int(np.ceil((x + w) * scale)), int(np.ceil((y + h) * scale))
        diffs.append(np.abs(drawn[y0:y1, x0:x1] - raw[y0:y1, x0:x1]).mean())
    return diffs


def _coco(info):
    with open(info["json_file"]) as f:
        return json.load(f)


def test_visualize_data_annotation_draws_every_image_over_its_annotations(tiny_shapes, tmp_path):
    name, info = tiny_shapes
    out = tmp_path / "out"
    assert main(["visualize-data", "--dataset", name, "--output-dir", str(out)]) == 0
    coco = _coco(info)
    assert sorted(os.listdir(out)) == sorted(im["file_name"] for im in coco["images"])
    for image in coco["images"]:
        drawn = _read_rgb(out / image["file_name"])
        raw = _read_rgb(os.path.join(info["image_root"], image["file_name"]))
        assert drawn.shape == raw.shape == (64, 96, 3)
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        # masks are filled at alpha 0.5 and outlined: far above the few levels of JPEG noise
        assert boxes and min(_box_diffs(drawn, raw, boxes)) > 10


def test_visualize_data_annotation_num_images_limits_output(tiny_shapes, tmp_path):
    name, _ = tiny_shapes
    out = tmp_path / "out"
    argv = ["visualize-data", "--dataset", name, "--output-dir", str(out), "--num-images", "2"]
    assert main(argv) == 0
    assert len(os.listdir(out)) == 2


def test_visualize_data_dataloader_draws_augmented_images(tiny_shapes, tiny_model, tmp_path):
    _, info = tiny_shapes
    config, _ = tiny_model
    out = tmp_path / "out"
    # short side 64 -> 32 (scale 0.5, long side 96 -> 48 <= 128); no flip, so the drawn image
    # lines up with the raw one resized the same way (PIL bilinear, as ResizeTransform)
    overrides = ["INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "128"]
    overrides += ["INPUT.RANDOM_FLIP", "none", "SOLVER.IMS_PER_BATCH", "2"]
    argv = ["visualize-data", "--config-file", config, "--source", "dataloader"]
    assert main([*argv, "--output-dir", str(out), *overrides]) == 0
    coco = _coco(info)
    # the training sampler's first pass is a permutation: each image exactly once
    assert sorted(os.listdir(out)) == sorted(im["file_name"] for im in coco["images"])
    for image in coco["images"]:
        drawn = _read_rgb(out / image["file_name"])
        assert drawn.shape == (32, 48, 3)
        with Image.open(os.path.join(info["image_root"], image["file_name"])) as raw_image:
            raw_image = raw_image.convert("RGB").resize((48, 32), Image.Resampling.BILINEAR)
        raw = np.asarray(raw_image).astype(np.int64)
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert boxes and min(_box_diffs(drawn, raw, boxes, scale=0.5)) > 10


def test_visualize_data_dataloader_num_images_limits_output(tiny_model, tmp_path):
    config, _ = tiny_model
    out = tmp_path / "out"
    argv = ["visualize-data", "--config-file", config, "--source", "dataloader"]
    argv += ["--output-dir", str(out), "--num-images", "1"]
    assert main([*argv, "INPUT.MIN_SIZE_TRAIN", "(32,)", "SOLVER.IMS_PER_BATCH", "1"]) == 0
    assert len(os.listdir(out)) == 1


def test_visualize_data_unknown_dataset_exits_2(tmp_path, capsys):
    argv = ["visualize-data", "--dataset", "no_such_dataset_xyz", "--output-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "no_such_dataset_xyz" in capsys.readouterr().err


def _gt_results(info, image_ids, score=0.9):
    """COCO result records equal to the ground truth boxes and masks of `image_ids`."""
    import pycocotools.mask as mask_util

    coco = _coco(info)
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    records = []
    for a in coco["annotations"]:
        if a["image_id"] not in image_ids:
            continue
        h, w = sizes[a["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))
        rle["counts"] = rle["counts"].decode("utf-8")
        records.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": score,
                "segmentation": rle,
            }
        )
    return records


def test_visualize_json_draws_predictions_above_ground_truth(tiny_shapes, tmp_path):
    name, info = tiny_shapes
    coco = _coco(info)
    chosen = coco["images"][:2]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_gt_results(info, {im["id"] for im in chosen})))
    out = tmp_path / "out"
    argv = ["visualize-json", "--input", str(results), "--dataset", name, "--output", str(out)]
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(im["file_name"] for im in chosen)
    for image in chosen:
        drawn = _read_rgb(out / image["file_name"])
        assert drawn.shape == (128, 96, 3)  # two 64x96 drawings stacked vertically
        raw = _read_rgb(os.path.join(info["image_root"], image["file_name"]))
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert min(_box_diffs(drawn[:64], raw, boxes)) > 10  # predictions drawn on top
        assert min(_box_diffs(drawn[64:], raw, boxes)) > 10  # ground truth at the bottom


def test_visualize_json_below_threshold_draws_the_raw_image_on_top(tiny_shapes, tmp_path):
    name, info = tiny_shapes
    image = _coco(info)["images"][0]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_gt_results(info, {image["id"]}, score=0.3)))
    out = tmp_path / "out"
    argv = ["visualize-json", "--input", str(results), "--dataset", name, "--output", str(out)]
    assert main([*argv, "--conf-threshold", "0.5"]) == 0
    drawn = _read_rgb(out / image["file_name"])
    raw = _read_rgb(os.path.join(info["image_root"], image["file_name"]))
    # nothing above 0.5: the top half is the image itself, up to JPEG re-encoding noise
    # (quality 95 without chroma subsampling: under one level on average)
    assert np.abs(drawn[:64] - raw).mean() < 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"image_id": 1}, "expected a list"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], r"record 0: missing.*score"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}] * 2
         + [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}],
         "record 2: image_id 999 is not in the dataset"),
        ([{"image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1], "score": 0.9}],
         "record 0: category_id 42"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.9}], "record 0: bbox"),
    ],
)  # fmt: skip
def test_visualize_json_malformed_records_exit_2_naming_the_record(
    tiny_shapes, tmp_path, capsys, content, message
):
    name, _ = tiny_shapes
    results = tmp_path / "results.json"
    results.write_text(json.dumps(content))
    out = tmp_path / "out"
    argv = ["visualize-json", "--input", str(results), "--dataset", name, "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not out.exists()


def test_parse_json_predictions_groups_by_image_and_maps_category_ids():
    records = [
        {"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5},
        {"image_id": 8, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
    ]
    by_image = parse_json_predictions(records, {7, 8, 9}, {1: 0, 3: 2})
    assert sorted(by_image) == [7, 8]
    assert [r["category_id"] for r in by_image[7]] == [2, 0]
    assert records[0]["category_id"] == 3  # the input is not modified
    assert parse_json_predictions([], {7}, None) == {}


def test_predictions_to_instances_keeps_scores_above_threshold_and_converts_boxes():
    records = [
        {"image_id": 1, "category_id": 0, "bbox": [10, 20, 30, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5},  # not > 0.5
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.2},
    ]
    instances = predictions_to_instances(records, (64, 96), 0.5)
    assert len(instances) == 1
    # XYWH (10, 20, 30, 40) -> XYXY (10, 20, 10 + 30, 20 + 40)
    torch.testing.assert_close(instances.pred_boxes.tensor, torch.tensor([[10.0, 20, 40, 60]]))
    torch.testing.assert_close(instances.scores, torch.tensor([0.9]))
    assert instances.pred_classes.tolist() == [0]
    assert not instances.has("pred_masks_rle")


def test_predictions_to_instances_of_no_records_is_empty():
    instances = predictions_to_instances([], (64, 96), 0.5)
    assert len(instances) == 0
    assert instances.pred_boxes.tensor.shape == (0, 4)


@pytest.mark.parametrize(
    ("verb", "options"),
    [
        ("visualize-data", ["--config-file", "--dataset", "--source", "--output-dir"]),
        ("visualize-json", ["--input", "--dataset", "--output", "--conf-threshold"]),
    ],
)
def test_visualize_help_lists_key_options(verb, options, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in options)
