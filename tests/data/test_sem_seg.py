from __future__ import annotations

import os

import pytest

from heron.data.datasets.sem_seg import load_sem_seg


def _touch(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def test_pairs_images_and_labels_by_relative_path(tmp_path):
    img, gt = tmp_path / "img", tmp_path / "gt"
    for rel in ["b", "a", "city/c"]:
        _touch(img, rel + ".jpg")
        _touch(gt, rel + ".png")
    _touch(img, "notes.txt")  # other extensions are ignored
    dicts = load_sem_seg(str(gt), str(img))
    assert [os.path.relpath(d["file_name"], img) for d in dicts] == ["a.jpg", "b.jpg", "city/c.jpg"]
    for d in dicts:
        stem_img = os.path.splitext(os.path.relpath(d["file_name"], img))[0]
        stem_gt = os.path.splitext(os.path.relpath(d["sem_seg_file_name"], gt))[0]
        assert stem_img == stem_gt
        assert set(d) == {"file_name", "sem_seg_file_name"}  # no height/width, as Detectron2


def test_extensions_with_or_without_dot_and_custom(tmp_path):
    img, gt = tmp_path / "img", tmp_path / "gt"
    _touch(img, "x.png")
    _touch(gt, "x_label.tif")
    _touch(gt, "x.tif")
    with pytest.raises(ValueError, match="labels without an image: \\['x_label'\\]"):
        load_sem_seg(str(gt), str(img), gt_ext=".tif", image_ext="png")
    os.remove(gt / "x_label.tif")
    dicts = load_sem_seg(str(gt), str(img), gt_ext=".tif", image_ext="png")
    assert dicts == [{"file_name": str(img / "x.png"), "sem_seg_file_name": str(gt / "x.tif")}]


def test_empty_directories_give_empty_list(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    assert load_sem_seg(str(tmp_path / "gt"), str(tmp_path / "img")) == []


def test_unmatched_files_raise_listing_examples(tmp_path):
    img, gt = tmp_path / "img", tmp_path / "gt"
    for rel in ["a", "b", "c"]:
        _touch(img, rel + ".jpg")
    _touch(gt, "a.png")
    _touch(gt, "z.png")
    with pytest.raises(ValueError, match=r"has 3 \*jpg files .* has 2 \*png files") as e:
        load_sem_seg(str(gt), str(img))
    assert "images without a label: ['b', 'c']" in str(e.value)
    assert "labels without an image: ['z']" in str(e.value)


def test_many_unmatched_files_are_summarized(tmp_path):
    img, gt = tmp_path / "img", tmp_path / "gt"
    gt.mkdir()
    for i in range(8):
        _touch(img, f"{i}.jpg")
    with pytest.raises(ValueError, match=r"\['0', '1', '2', '3', '4'\] and 3 more"):
        load_sem_seg(str(gt), str(img))


def test_missing_directory_raises(tmp_path):
    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match="gt_root must be an existing directory"):
        load_sem_seg(str(tmp_path / "nope"), str(tmp_path / "img"))


def test_allow_unlabeled_images_keeps_the_labeled_subset_and_logs_the_rest(tmp_path, caplog):
    img, gt = tmp_path / "img", tmp_path / "gt"
    for rel in ["a", "b", "c"]:
        _touch(img, rel + ".jpg")
    _touch(gt, "b.png")
    with caplog.at_level("WARNING", logger="heron.data.datasets.sem_seg"):
        dicts = load_sem_seg(str(gt), str(img), allow_unlabeled_images=True)
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["b.jpg"]
    assert "2 of 3 images" in caplog.text and "['a', 'c']" in caplog.text
    _touch(gt, "z.png")  # a label without an image is still an error
    with pytest.raises(ValueError, match=r"labels without an image: \['z'\]"):
        load_sem_seg(str(gt), str(img), allow_unlabeled_images=True)
