from __future__ import annotations

import json
import os
import uuid

import pytest

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.lvis import (
    get_lvis_instances_meta,
    load_lvis_json,
    register_lvis_instances,
)
from heron.structures.boxes import BoxMode

_POLY = [[1.0, 1.0, 5.0, 1.0, 5.0, 4.0]]


def _lvis(version):
    images = [
        {
            "id": 7,
            "height": 10,
            "width": 12,
            "neg_category_ids": [2],
            "not_exhaustive_category_ids": [3],
        },
        {"id": 3, "height": 20, "width": 30},
    ]
    if version == "v0.5":
        images[0]["file_name"] = "COCO_val2014_000000000007.jpg"
        images[1]["file_name"] = "COCO_val2014_000000000003.jpg"
    else:
        images[0]["coco_url"] = "http://images.cocodataset.org/train2017/000000000007.jpg"
        images[1]["coco_url"] = "http://images.cocodataset.org/val2017/000000000003.jpg"
    cats = [
        {"id": 2, "name": "banana", "synonyms": ["banana"]},
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"]},
        {"id": 3, "name": "cat", "synonyms": ["cat"]},
    ]
    anns = [
        {
            "id": 1,
            "image_id": 7,
            "bbox": [1, 1, 4, 3],
            "category_id": 3,
            "segmentation": _POLY,
            "area": 6.0,
        },
        {
            "id": 2,
            "image_id": 7,
            "bbox": [0, 0, 2, 2],
            "category_id": 1,
            "segmentation": _POLY,
            "area": 4.0,
        },
    ]
    return {"images": images, "annotations": anns, "categories": cats}


def _write(tmp_path, data):
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("version", ["v0.5", "v1"])
def test_load_lvis_json_both_versions(tmp_path, version):
    root = str(tmp_path / "coco")
    dicts = load_lvis_json(_write(tmp_path, _lvis(version)), root)
    assert [d["image_id"] for d in dicts] == [3, 7]  # sorted by id
    if version == "v0.5":
        names = ["COCO_val2014_000000000003.jpg", "COCO_val2014_000000000007.jpg"]
    else:  # last two components of coco_url
        names = ["val2017/000000000003.jpg", "train2017/000000000007.jpg"]
    assert [d["file_name"] for d in dicts] == [os.path.join(root, n) for n in names]
    assert dicts[0]["annotations"] == []
    assert dicts[0]["neg_category_ids"] == [] and dicts[0]["not_exhaustive_category_ids"] == []
    d = dicts[1]
    assert (d["height"], d["width"]) == (10, 12)
    assert d["neg_category_ids"] == [2] and d["not_exhaustive_category_ids"] == [3]
    # LVIS ids 3 and 1 -> contiguous 2 and 0
    assert [a["category_id"] for a in d["annotations"]] == [2, 0]
    assert d["annotations"][0]["bbox"] == [1, 1, 4, 3]
    assert d["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert d["annotations"][0]["segmentation"] == _POLY
    assert "area" not in d["annotations"][0]


def test_coco_url_wins_over_file_name(tmp_path):
    data = _lvis("v0.5")
    data["images"][1]["coco_url"] = "http://images.cocodataset.org/val2017/000000000003.jpg"
    dicts = load_lvis_json(_write(tmp_path, data), "root")
    assert dicts[0]["file_name"] == os.path.join("root", "val2017", "000000000003.jpg")
    assert dicts[1]["file_name"] == os.path.join("root", "COCO_val2014_000000000007.jpg")


def test_extra_annotation_keys_are_copied(tmp_path):
    dicts = load_lvis_json(_write(tmp_path, _lvis("v1")), "r", extra_annotation_keys=["area"])
    assert [a["area"] for a in dicts[1]["annotations"]] == [6.0, 4.0]


def test_dataset_name_sets_thing_classes_from_json(tmp_path):
    name = f"lvis_test_{uuid.uuid4().hex}"
    try:
        load_lvis_json(_write(tmp_path, _lvis("v1")), "r", dataset_name=name)
        # sorted by id, first synonym
        assert MetadataCatalog.get(name).thing_classes == ["aerosol_can", "banana", "cat"]
    finally:
        MetadataCatalog.remove(name)


def test_get_lvis_instances_meta():
    cats = [{"id": 2, "name": "b"}, {"id": 1, "name": "a", "synonyms": ["a1", "a2"]}]
    assert get_lvis_instances_meta("x", cats) == {"thing_classes": ["a1", "b"]}
    with pytest.raises(ValueError, match=r"ids must be 1\.\.2 without gaps, got \[1, 3\]"):
        get_lvis_instances_meta("x", [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}])
    with pytest.raises(ValueError, match="No LVIS metadata for dataset 'lvis_unknown_"):
        get_lvis_instances_meta(f"lvis_unknown_{uuid.uuid4().hex}")


def test_short_polygon_raises_naming_annotation(tmp_path):
    data = _lvis("v1")
    data["annotations"][1]["segmentation"] = [[0, 0, 1, 1]]
    with pytest.raises(ValueError, match=r"lvis\.json: annotation id 2: polygon with 4 coord"):
        load_lvis_json(_write(tmp_path, data), "r")


def test_unknown_image_and_missing_url_raise(tmp_path):
    data = _lvis("v1")
    data["annotations"][0]["image_id"] = 99
    with pytest.raises(ValueError, match=r"annotation #0 \(id 1\) refers to image_id 99"):
        load_lvis_json(_write(tmp_path, data), "r")
    data = _lvis("v1")
    del data["images"][1]["coco_url"]
    with pytest.raises(ValueError, match=r"image id 3 has neither 'file_name' nor 'coco_url'"):
        load_lvis_json(_write(tmp_path, data), "r")


def test_duplicate_annotation_id_raises(tmp_path):
    data = _lvis("v1")
    data["annotations"][1]["id"] = 1
    with pytest.raises(ValueError, match="annotation id 1 is not unique"):
        load_lvis_json(_write(tmp_path, data), "r")


def test_register_lvis_instances_is_lazy(tmp_path):
    name = f"lvis_test_{uuid.uuid4().hex}"
    json_file = str(tmp_path / "later.json")
    register_lvis_instances(name, {"extra": 1}, json_file, "r")
    try:
        meta = MetadataCatalog.get(name)
        assert (meta.evaluator_type, meta.json_file, meta.extra) == ("lvis", json_file, 1)
        with open(json_file, "w") as f:
            json.dump(_lvis("v0.5"), f)
        assert len(DatasetCatalog.get(name)) == 2
        assert meta.thing_classes == ["aerosol_can", "banana", "cat"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
