from __future__ import annotations

import logging
import uuid

import pytest
import torch
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.yolo import load_yolo, register_yolo
from heron.structures.boxes import BoxMode


def _dataset(tmp_path, labels, sizes=None):
    """Write images (default 100x50, width x height), label files and classes.txt."""
    img_dir, lbl_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lbl_dir.mkdir()
    sizes = sizes or {"a.jpg": (100, 50), "b.png": (20, 40)}
    for fname, size in sizes.items():
        if size is None:  # not an image
            (img_dir / fname).write_text("")
        else:
            Image.new("RGB", size).save(img_dir / fname)
    for stem, text in labels.items():
        (lbl_dir / f"{stem}.txt").write_text(text)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    return str(img_dir), str(lbl_dir), str(classes)


def test_load_yolo_converts_to_absolute_xyxy(tmp_path):
    args = _dataset(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.2 0.4\n"})
    dicts = load_yolo(*args)
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    a, b = dicts
    assert (a["height"], a["width"]) == (50, 100)
    # (cx, cy, w, h) = (0.5, 0.5, 0.2, 0.4) on 100x50: x 40..60, y 15..35
    # (0.1, 0.2, 0.2, 0.4): x 0..20, y 0..20
    boxes = [ann["bbox"] for ann in a["annotations"]]
    torch.testing.assert_close(
        torch.tensor(boxes), torch.tensor([[40.0, 15, 60, 35], [0, 0, 20, 20]])
    )
    assert [ann["category_id"] for ann in a["annotations"]] == [1, 0]
    assert all(ann["bbox_mode"] == BoxMode.XYXY_ABS for ann in a["annotations"])
    # b.png has no label file: no objects, but it is kept
    assert (b["height"], b["width"], b["annotations"]) == (40, 20, [])


def test_empty_label_file_gives_no_annotations(tmp_path):
    dicts = load_yolo(*_dataset(tmp_path, {"a": ""}))
    assert dicts[0]["annotations"] == []


def test_image_ext_filters_files(tmp_path):
    dicts = load_yolo(*_dataset(tmp_path, {}), image_ext=(".PNG",))
    assert [d["image_id"] for d in dicts] == ["b"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.2", r"a\.txt:2: expected 5 fields"),
        ("0 0.5 x 0.2 0.2", r"a\.txt:2: fields must be numbers"),
        ("2 0.5 0.5 0.2 0.2", r"a\.txt:2: class id '2' must be an integer in \[0, 2\)"),
        ("-1 0.5 0.5 0.2 0.2", r"a\.txt:2: class id '-1'"),
        ("0.5 0.5 0.5 0.2 0.2", r"a\.txt:2: class id '0\.5'"),
        ("0 0.95 0.5 0.2 0.2", r"a\.txt:2: box .* leaves the normalized range"),
        ("0 0.5 0.5 1.1 0.2", r"a\.txt:2: box"),
    ],
)
def test_bad_lines_raise_with_file_and_line_number(tmp_path, line, message):
    args = _dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n" + line + "\n"})
    with pytest.raises(ValueError, match=message):
        load_yolo(*args)


def test_tolerance_accepts_tiny_overshoot(tmp_path):
    # x1 = 0.9 + 0.1000001 = 1.0000001, within 1e-6 of 1
    dicts = load_yolo(*_dataset(tmp_path, {"a": "0 0.9 0.5 0.2000002 0.2\n"}))
    assert dicts[0]["annotations"][0]["bbox"][2] == pytest.approx(100.0)


def test_repair_clip_clips_and_logs(tmp_path, caplog):
    args = _dataset(tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.yolo"):
        dicts = load_yolo(*args, repair="clip")
    # x: 0.85..1.05 -> clipped to 0.85..1.0 -> 85..100 px; y: 0.4..0.6 -> 20..30 px
    torch.testing.assert_close(
        torch.tensor(dicts[0]["annotations"][0]["bbox"]), torch.tensor([85.0, 20, 100, 30])
    )
    assert "Clipped 1 boxes" in caplog.text


def test_label_files_without_image_are_logged(tmp_path, caplog):
    args = _dataset(tmp_path, {"a": "", "zz": "0 0.5 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING, logger="heron.data.datasets.yolo"):
        dicts = load_yolo(*args)
    assert [d["image_id"] for d in dicts] == ["a", "b"]
    assert "Ignored 1 label files" in caplog.text and "zz.txt" in caplog.text


def test_images_sharing_a_stem_raise(tmp_path):
    args = _dataset(tmp_path, {}, sizes={"a.jpg": (4, 4), "a.png": (4, 4)})
    with pytest.raises(ValueError, match=r"several images share the stem\(s\) \['a'\]"):
        load_yolo(*args)


def test_invalid_repair_raises(tmp_path):
    with pytest.raises(ValueError, match="repair must be None or 'clip', got 'drop'"):
        load_yolo(*_dataset(tmp_path, {}), repair="drop")


def test_register_yolo(tmp_path):
    name = f"yolo_test_{uuid.uuid4().hex}"
    register_yolo(name, *_dataset(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n"}))
    try:
        assert MetadataCatalog.get(name).thing_classes == ["cat", "dog"]
        assert len(DatasetCatalog.get(name)) == 2
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_empty_image_dir_gives_empty_list(tmp_path):
    args = _dataset(tmp_path, {}, sizes={"ignored.txt": None})
    assert load_yolo(*args) == []
