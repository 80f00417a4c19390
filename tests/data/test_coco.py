from __future__ import annotations

import copy
import json
import logging
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.coco import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    register_coco_instances,
)
from heron.structures.boxes import BoxMode

UNICODE_NAME = "ünïcode_猫.png"


def _square_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _compressed_rle():
    # reference encoder: pycocotools; a 2x2 square at rows 4-5, cols 4-5 of an 8x8 image
    rle = mask_util.encode(np.asfortranarray(_square_mask(8, 8, 4, 6, 4, 6)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _coco_dict():
    return {
        "info": {"description": "toy"},
        # unsorted and non-contiguous on purpose: 3 -> 0, 7 -> 1
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "images": [
            {"id": 2, "file_name": "b.jpg", "height": 10, "width": 20},
            {"id": 1, "file_name": UNICODE_NAME, "height": 8, "width": 8},
            {"id": 5, "file_name": "empty.jpg", "height": 6, "width": 6},
        ],
        "annotations": [
            {  # polygon: the 6x4 rectangle of the box, shoelace area 24; two keypoints
                "id": 10,
                "image_id": 2,
                "category_id": 7,
                "iscrowd": 0,
                "bbox": [2, 1, 6, 4],
                "segmentation": [[2, 1, 8, 1, 8, 5, 2, 5]],
                "keypoints": [3, 2, 2, 0, 0, 0],
                "num_keypoints": 1,
                "area": 24,
            },
            {  # crowd, uncompressed RLE (column-major): rows 0-1 of columns 0-3 set
                # runs: 0 zeros, then (2 ones, 6 zeros) x 3, 2 ones, 64 - 26 = 38 zeros
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 1,
                "bbox": [0, 0, 4, 2],
                "segmentation": {"counts": [0, 2, 6, 2, 6, 2, 6, 2, 38], "size": [8, 8]},
                "area": 8,
            },
            {  # compressed RLE, a 2x2 square: area 4
                "id": 12,
                "image_id": 1,
                "category_id": 7,
                "iscrowd": 0,
                "bbox": [4, 4, 2, 2],
                "segmentation": _compressed_rle(),
                "area": 4,
            },
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "ignore": 1},
            {  # a triangle (area 1 * 1 / 2 = 0.5) and a 2-point polygon that must be dropped
                "id": 14,
                "image_id": 2,
                "category_id": 3,
                "iscrowd": 0,
                "bbox": [0, 0, 1, 1],
                "segmentation": [[0, 0, 1, 0, 1, 1], [0, 0, 1, 1]],
                "area": 0.5,
            },
        ],
    }


def _write(tmp_path, data, name="ann.json"):
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    for img in data.get("images", []):
        if "file_name" in img and "width" in img and "height" in img:
            Image.new("RGB", (img["width"], img["height"])).save(image_root / img["file_name"])
    json_file = tmp_path / name
    json_file.write_text(json.dumps(data), encoding="utf-8")
    return str(json_file), str(image_root)


@pytest.fixture
def dataset_name():
    name = f"coco_test_{uuid.uuid4().hex[:8]}"
    yield name
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog:
            catalog.remove(name)


def test_load_coco_json_fills_every_field(tmp_path, dataset_name):
    json_file, image_root = _write(tmp_path, _coco_dict())
    dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["area"])
    assert [d["image_id"] for d in dicts] == [1, 2, 5]  # sorted by image id
    first, second, empty = dicts
    assert first["file_name"] == os.path.join(image_root, UNICODE_NAME)
    assert os.path.exists(first["file_name"])
    assert (first["height"], first["width"]) == (8, 8)
    assert (second["height"], second["width"]) == (10, 20)
    assert empty["annotations"] == []

    crowd, rle = first["annotations"]
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 0  # COCO id 3 -> 0
    assert crowd["bbox"] == [0, 0, 4, 2] and crowd["bbox_mode"] == BoxMode.XYWH_ABS
    # uncompressed RLE became compressed RLE of the same mask
    assert isinstance(crowd["segmentation"]["counts"], (bytes, str))
    np.testing.assert_array_equal(
        mask_util.decode(crowd["segmentation"]), _square_mask(8, 8, 0, 2, 0, 4)
    )
    assert rle["category_id"] == 1  # COCO id 7 -> 1
    assert rle["segmentation"] == _compressed_rle()  # compressed counts kept as is
    assert crowd["area"] == 8 and rle["area"] == 4  # extra key copied

    poly, tri = second["annotations"]  # id 13 (ignore=1) skipped
    assert poly["segmentation"] == [[2.0, 1.0, 8.0, 1.0, 8.0, 5.0, 2.0, 5.0]]
    # +0.5 on every x and y, visibility untouched
    assert poly["keypoints"] == [3.5, 2.5, 2, 0.5, 0.5, 0]
    assert poly["category_id"] == 1
    assert tri["segmentation"] == [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]]  # short polygon dropped
    assert "keypoints" not in tri

    meta = MetadataCatalog.get(dataset_name)
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}


def test_load_coco_json_without_dataset_name_keeps_coco_ids(tmp_path):
    json_file, image_root = _write(tmp_path, _coco_dict())
    dicts = load_coco_json(json_file, image_root)
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [3, 7]


def test_load_coco_json_logs_drops_and_summary(tmp_path, caplog):
    json_file, image_root = _write(tmp_path, _coco_dict())
    with caplog.at_level(logging.INFO, logger="heron.data.datasets.coco"):
        load_coco_json(json_file, image_root)
    assert "Skipped 1 annotations with ignore=1" in caplog.text
    assert "Dropped 1 polygons with fewer than 3 points" in caplog.text
    assert "Loaded 3 images with 4 annotations" in caplog.text
    # per-category table: cat has the crowd and the triangle, dog the polygon and the RLE
    rows = {
        cells[0]: cells[1]
        for line in caplog.text.splitlines()
        if line.startswith("|")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["cat"] == "2" and rows["dog"] == "2"


def test_annotation_whose_polygons_are_all_too_short_is_dropped_and_counted(tmp_path, caplog):
    data = _coco_dict()
    data["annotations"][4]["segmentation"] = [[0, 0, 1, 1]]
    json_file, image_root = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.coco"):
        dicts = load_coco_json(json_file, image_root)
    assert len(dicts[1]["annotations"]) == 1
    assert "Filtered out 1 instances without valid segmentation" in caplog.text


def _mutate(path, value):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return apply


_DELETE = object()

_ERROR_CASES = [
    (_mutate(["categories"], _DELETE), r"top-level object is missing required key\(s\) \['cat"),
    (
        _mutate(["images", 0, "width"], _DELETE),
        r"image #0 is missing required key\(s\) \['width'\]",
    ),
    (_mutate(["images", 1, "id"], 2), "image id 2 appears more than once"),
    (_mutate(["annotations", 0, "bbox"], _DELETE), r"annotation #0 \(id 10\) is missing.*'bbox'"),
    (_mutate(["annotations", 1, "image_id"], 99), "annotation id 11 refers to image_id 99"),
    (_mutate(["annotations", 2, "id"], 10), "annotation id 10 is not unique"),
    (_mutate(["annotations", 0, "category_id"], 4), "annotation id 10 has category_id 4"),
    (_mutate(["annotations", 0, "bbox"], [2, 1, -1, 4]), "annotation id 10.*negative width"),
    (_mutate(["annotations", 0, "bbox"], [15, 1, 6, 4]), "annotation id 10.*outside the 20x10"),
    (
        _mutate(["annotations", 0, "segmentation"], [[2, 1, 8, 1, 8]]),
        "annotation id 10: polygon has an odd number of coordinates",
    ),
    (
        _mutate(["annotations", 0, "segmentation"], [2, 1, 8, 1, 8, 5]),
        "annotation id 10: segmentation must be a list of polygons",
    ),
    (
        _mutate(["annotations", 1, "segmentation"], {"counts": [0, 64]}),
        "annotation id 11: RLE segmentation needs 'counts' and 'size'",
    ),
    (
        _mutate(["annotations", 0, "segmentation"], "polygon"),
        "annotation id 10: segmentation must be a list of polygons",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), _ERROR_CASES)
def test_load_coco_json_rejects_malformed_input_naming_file_and_record(tmp_path, mutate, message):
    data = _coco_dict()
    mutate(data)
    json_file, image_root = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as info:
        load_coco_json(json_file, image_root)
    assert json_file in str(info.value)


def test_repair_clip_clips_boxes_and_logs_count(tmp_path, caplog):
    data = _coco_dict()
    data["annotations"][0]["bbox"] = [15, -2, 10, 5]  # image is 20 wide, 10 high
    json_file, image_root = _write(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.coco"):
        dicts = load_coco_json(json_file, image_root, repair="clip")
    # x: [15, 25] -> [15, 20], width 5; y: [-2, 3] -> [0, 3], height 3
    assert dicts[1]["annotations"][0]["bbox"] == [15.0, 0.0, 5.0, 3.0]
    assert "Clipped 1 boxes" in caplog.text


def test_repair_must_be_none_or_clip(tmp_path):
    json_file, image_root = _write(tmp_path, _coco_dict())
    with pytest.raises(ValueError, match="repair must be None or 'clip', got 'drop'"):
        load_coco_json(json_file, image_root, repair="drop")


def test_register_coco_instances_is_lazy(tmp_path, dataset_name):
    missing = str(tmp_path / "does_not_exist.json")
    register_coco_instances(dataset_name, {"thing_colors": [[1, 2, 3]]}, missing, str(tmp_path))
    meta = MetadataCatalog.get(dataset_name)
    assert meta.json_file == missing
    assert meta.image_root == str(tmp_path)
    assert meta.evaluator_type == "coco"
    assert meta.thing_colors == [[1, 2, 3]]
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get(dataset_name)


def test_round_trip_load_then_convert_matches_original(tmp_path, dataset_name):
    original = _coco_dict()
    json_file, image_root = _write(tmp_path, original)
    register_coco_instances(dataset_name, {}, json_file, image_root)
    coco = convert_to_coco_dict(dataset_name)

    assert sorted(coco["categories"], key=lambda c: c["id"]) == [
        {"id": 3, "name": "cat"},
        {"id": 7, "name": "dog"},
    ]
    assert [(i["id"], i["height"], i["width"]) for i in coco["images"]] == [
        (1, 8, 8),
        (2, 10, 20),
        (5, 6, 6),
    ]
    kept = {a["id"]: a for a in original["annotations"] if a["id"] != 13}
    # converted annotations are numbered 1..N in image order: 11, 12 (image 1), 10, 14 (image 2)
    source_ids = [11, 12, 10, 14]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    for ann, src_id in zip(coco["annotations"], source_ids):
        src = kept[src_id]
        assert ann["image_id"] == src["image_id"]
        assert ann["category_id"] == src["category_id"]
        assert ann["bbox"] == [float(v) for v in src["bbox"]]
        assert ann["iscrowd"] == src["iscrowd"]
        assert ann["area"] == pytest.approx(src["area"])  # 8, 4, 24, 0.5 (see _coco_dict)
    poly = coco["annotations"][2]
    assert poly["keypoints"] == [3, 2, 2, 0, 0, 0]
    assert poly["num_keypoints"] == 1
    assert coco["annotations"][1]["segmentation"] == _compressed_rle()
    json.dumps(coco)  # RLE bytes were decoded: the dict is JSON-serializable


def test_convert_without_segmentation_uses_box_area(dataset_name):
    record = {
        "file_name": "x.jpg",
        "height": 10,
        "width": 10,
        "image_id": 0,
        "annotations": [{"bbox": [1, 2, 4, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}],
    }
    DatasetCatalog.register(dataset_name, lambda: [record])
    MetadataCatalog.get(dataset_name).thing_classes = ["a"]
    coco = convert_to_coco_dict(dataset_name)
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [1.0, 2.0, 3.0, 4.0]  # XYXY (1,2,4,6) -> XYWH (1,2,3,4)
    assert ann["area"] == 12.0  # 3 * 4
    assert ann["category_id"] == 0  # no id map: identity
    assert coco["categories"] == [{"id": 0, "name": "a"}]


def test_convert_to_coco_json_writes_and_reuses_cache(tmp_path, dataset_name):
    json_file, image_root = _write(tmp_path, _coco_dict())
    register_coco_instances(dataset_name, {}, json_file, image_root)
    out = tmp_path / "out" / "converted.json"
    convert_to_coco_json(dataset_name, str(out))
    written = json.loads(out.read_text(encoding="utf-8"))
    expected = convert_to_coco_dict(dataset_name)
    written.pop("info"), expected.pop("info")  # date_created differs
    assert written == json.loads(json.dumps(expected))
    assert os.listdir(out.parent) == ["converted.json"]  # no temporary file left

    out.write_text("cached", encoding="utf-8")
    convert_to_coco_json(dataset_name, str(out), allow_cached=True)
    assert out.read_text(encoding="utf-8") == "cached"
    convert_to_coco_json(dataset_name, str(out), allow_cached=False)
    assert json.loads(out.read_text(encoding="utf-8"))["images"][0]["id"] == 1


def test_loaded_dicts_do_not_alias_input_lists(tmp_path):
    data = _coco_dict()
    json_file, image_root = _write(tmp_path, copy.deepcopy(data))
    a = load_coco_json(json_file, image_root)
    a[1]["annotations"][0]["bbox"][0] = 100
    b = load_coco_json(json_file, image_root)
    assert b[1]["annotations"][0]["bbox"][0] == 2


def test_convert_keeps_rotated_boxes_and_uses_w_times_h_area(dataset_name):
    ann = {"bbox": [5, 5, 4, 2, 30], "bbox_mode": BoxMode.XYWHA_ABS, "category_id": 0}
    record = {"file_name": "r.jpg", "height": 10, "width": 10, "image_id": 3, "annotations": [ann]}
    DatasetCatalog.register(dataset_name, lambda: [record])
    MetadataCatalog.get(dataset_name).thing_classes = ["a"]
    (out,) = convert_to_coco_dict(dataset_name)["annotations"]
    assert out["bbox"] == [5.0, 5.0, 4.0, 2.0, 30.0]
    assert out["area"] == 8.0  # 4 * 2


def test_convert_dataset_without_annotations_has_no_annotations_key(dataset_name):
    record = {"file_name": "e.jpg", "height": 4, "width": 4, "image_id": 9, "annotations": []}
    DatasetCatalog.register(dataset_name, lambda: [record])
    MetadataCatalog.get(dataset_name).thing_classes = ["a"]
    coco = convert_to_coco_dict(dataset_name)
    assert "annotations" not in coco
    assert coco["images"] == [{"id": 9, "width": 4, "height": 4, "file_name": "e.jpg"}]
    assert coco["licenses"] is None


def test_box_within_float_tolerance_of_the_border_is_accepted(tmp_path):
    data = _coco_dict()
    data["annotations"][0]["bbox"] = [14, 0, 6.005, 10]  # ends at 20.005 in a 20-wide image
    json_file, image_root = _write(tmp_path, data)
    dicts = load_coco_json(json_file, image_root)
    assert dicts[1]["annotations"][0]["bbox"] == [14, 0, 6.005, 10]  # kept unchanged
