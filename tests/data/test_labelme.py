from __future__ import annotations

import json
import logging
import math
import os
import uuid

import pytest
import torch

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.labelme import CIRCLE_VERTICES, load_labelme, register_labelme
from heron.structures.boxes import BoxMode


def _write(json_dir, stem, shapes, image_path=None):
    json_dir.mkdir(exist_ok=True)
    data = {
        "imagePath": image_path or f"../images/{stem}.jpg",
        "imageHeight": 40,
        "imageWidth": 60,
        "shapes": shapes,
    }
    (json_dir / f"{stem}.json").write_text(json.dumps(data))


def _poly(label, pts):
    return {"label": label, "points": pts, "shape_type": "polygon"}


def test_polygon_rectangle_and_circle(tmp_path):
    d = tmp_path / "ann"
    shapes = [
        _poly("dog", [[1, 2], [10, 2], [5, 9]]),
        {"label": "cat", "points": [[8, 7], [2, 3]], "shape_type": "rectangle"},
        {"label": "cat", "points": [[20, 20], [23, 24]], "shape_type": "circle"},
    ]
    _write(d, "img1", shapes)
    _write(d, "img0", [])
    dicts = load_labelme(str(d))
    assert [r["image_id"] for r in dicts] == ["img0", "img1"]
    r = dicts[1]
    assert r["file_name"] == os.path.normpath(str(tmp_path / "images" / "img1.jpg"))
    assert (r["height"], r["width"]) == (40, 60)
    poly, rect, circle = r["annotations"]
    # class names collected sorted: cat=0, dog=1
    assert [a["category_id"] for a in r["annotations"]] == [1, 0, 0]
    assert poly["bbox"] == [1, 2, 10, 9] and poly["segmentation"] == [[1, 2, 10, 2, 5, 9]]
    # rectangle corners in any order -> (2, 3)-(8, 7), polygon clockwise from top-left
    assert rect["bbox"] == [2, 3, 8, 7]
    assert rect["segmentation"] == [[2, 3, 8, 3, 8, 7, 2, 7]]
    # circle: radius hypot(3, 4) = 5 around (20, 20): box (15, 15)-(25, 25)
    torch.testing.assert_close(torch.tensor(circle["bbox"]), torch.tensor([15.0, 15, 25, 25]))
    xy = torch.tensor(circle["segmentation"][0], dtype=torch.float64).view(-1, 2)
    assert xy.shape == (CIRCLE_VERTICES, 2)
    radii = (xy - torch.tensor([20.0, 20.0], dtype=torch.float64)).norm(dim=1)
    torch.testing.assert_close(radii, torch.full((CIRCLE_VERTICES,), 5.0, dtype=torch.float64))
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in r["annotations"])
    assert math.isclose(xy[0, 0].item(), 25.0)


def test_given_class_names_set_ids_and_unknown_label_raises(tmp_path):
    d = tmp_path / "ann"
    _write(d, "a", [_poly("dog", [[0, 0], [1, 0], [1, 1]])])
    dicts = load_labelme(str(d), class_names=["bird", "dog"])
    assert dicts[0]["annotations"][0]["category_id"] == 1
    with pytest.raises(ValueError, match=r"a\.json: shape #0 has label 'dog', which is not in"):
        load_labelme(str(d), class_names=["cat"])


def test_unsupported_shape_raises_or_is_skipped(tmp_path, caplog):
    d = tmp_path / "ann"
    line = {"label": "dog", "points": [[0, 0], [1, 1]], "shape_type": "line"}
    _write(d, "a", [_poly("dog", [[0, 0], [1, 0], [1, 1]]), line])
    with pytest.raises(ValueError, match=r"a\.json: shape #1 has shape_type 'line'"):
        load_labelme(str(d))
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.labelme"):
        dicts = load_labelme(str(d), skip_unsupported=True)
    assert len(dicts[0]["annotations"]) == 1
    assert "Skipped 1 shapes" in caplog.text


def test_malformed_inputs_raise_naming_file(tmp_path):
    d = tmp_path / "ann"
    _write(d, "a", [_poly("dog", [[0, 0], [1, 0]])])
    with pytest.raises(ValueError, match=r"a\.json: shape #0: a polygon needs at least 3"):
        load_labelme(str(d))
    _write(d, "a", [{"label": "x", "points": [[0, 0]], "shape_type": "rectangle"}])
    with pytest.raises(ValueError, match=r"a\.json: shape #0: expected 2 points, got 1"):
        load_labelme(str(d))
    (d / "a.json").write_text("{")
    with pytest.raises(ValueError, match=r"a\.json: malformed JSON"):
        load_labelme(str(d))
    (d / "a.json").write_text(json.dumps({"shapes": []}))
    with pytest.raises(ValueError, match=r"a\.json: missing required key\(s\) \['imagePath'"):
        load_labelme(str(d))


def test_empty_directory(tmp_path):
    assert load_labelme(str(tmp_path)) == []


def test_register_labelme_fills_classes_on_load(tmp_path):
    d = tmp_path / "ann"
    name = f"labelme_test_{uuid.uuid4().hex}"
    register_labelme(name, str(d))
    try:
        _write(
            d,
            "a",
            [_poly("zebra", [[0, 0], [1, 0], [1, 1]]), _poly("ant", [[0, 0], [1, 0], [1, 1]])],
        )
        assert len(DatasetCatalog.get(name)) == 1
        assert MetadataCatalog.get(name).thing_classes == ["ant", "zebra"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
