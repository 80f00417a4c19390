from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.ade20k import (
    ADE20K_SEM_SEG_CATEGORIES,
    prepare_ade20k_sem_seg,
    register_all_ade20k,
)

_NAMES = ["ade20k_sem_seg_train", "ade20k_sem_seg_val"]


def _write_tree(root, labels_by_split):
    """Write ADEChallengeData2016 with one jpg and one label png per entry; return its path."""
    base = root / "ADEChallengeData2016"
    for dirname, labels in labels_by_split.items():
        (base / "images" / dirname).mkdir(parents=True)
        (base / "annotations" / dirname).mkdir(parents=True)
        for stem, label in labels.items():
            h, w = label.shape
            Image.new("RGB", (w, h)).save(base / "images" / dirname / f"{stem}.jpg")
            Image.fromarray(label).save(base / "annotations" / dirname / f"{stem}.png")
    return base


def _tiny_tree(root):
    train_label = np.array([[0, 1, 2], [150, 149, 0]], dtype=np.uint8)
    val_label = np.array([[3, 0]], dtype=np.uint8)
    return _write_tree(
        root,
        {
            "training": {"ADE_train_00000001": train_label, "ADE_train_00000002": val_label},
            "validation": {"ADE_val_00000001": val_label},
        },
    )


def test_categories_are_the_150_scene_parsing_classes_in_order():
    assert len(ADE20K_SEM_SEG_CATEGORIES) == 150
    assert len(set(ADE20K_SEM_SEG_CATEGORIES)) == 150
    assert ADE20K_SEM_SEG_CATEGORIES[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ADE20K_SEM_SEG_CATEGORIES[12] == "person"  # label 13
    assert ADE20K_SEM_SEG_CATEGORIES[-1] == "flag"  # label 150


def test_prepare_shifts_labels_down_and_maps_other_to_255(tmp_path):
    base = _tiny_tree(tmp_path)
    assert prepare_ade20k_sem_seg(str(tmp_path)) == {"training": 2, "validation": 1}
    out = base / "annotations_detectron2" / "training" / "ADE_train_00000001.png"
    got = np.asarray(Image.open(out))
    # [[0, 1, 2], [150, 149, 0]] - 1, with 0 ("other") -> 255
    np.testing.assert_array_equal(got, np.array([[255, 0, 1], [149, 148, 255]], dtype=np.uint8))
    val = np.asarray(Image.open(base / "annotations_detectron2/validation/ADE_val_00000001.png"))
    np.testing.assert_array_equal(val, np.array([[2, 255]], dtype=np.uint8))
    # atomic writes leave only the converted files behind, and a rerun overwrites them
    assert sorted(os.listdir(out.parent)) == ["ADE_train_00000001.png", "ADE_train_00000002.png"]
    assert prepare_ade20k_sem_seg(str(tmp_path)) == {"training": 2, "validation": 1}
    np.testing.assert_array_equal(np.asarray(Image.open(out))[0], [255, 0, 1])


def test_prepare_errors_name_the_folder_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"annotations[/\\]training'? does not exist"):
        prepare_ade20k_sem_seg(str(tmp_path))
    base = _write_tree(tmp_path, {"training": {}, "validation": {}})
    Image.new("RGB", (2, 2)).save(base / "annotations" / "training" / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: expected a single-channel 8-bit"):
        prepare_ade20k_sem_seg(str(tmp_path))


@pytest.fixture
def free_ade20k_names():
    """Take the built-in ADE20K names out of the catalogs for one test, then restore them."""
    saved = {n: DatasetCatalog.pop(n) for n in _NAMES if n in DatasetCatalog}
    saved_meta = {n: MetadataCatalog.pop(n) for n in _NAMES if n in MetadataCatalog}
    yield
    for n in _NAMES:
        DatasetCatalog.pop(n, None)
        MetadataCatalog.pop(n, None)
    DatasetCatalog.update(saved)
    MetadataCatalog.update(saved_meta)


def test_register_all_ade20k_is_lazy_and_reads_converted_labels(tmp_path, free_ade20k_names):
    register_all_ade20k(str(tmp_path))  # the tree does not exist yet: nothing is read
    base = os.path.join(str(tmp_path), "ADEChallengeData2016")
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert meta.stuff_classes == ADE20K_SEM_SEG_CATEGORIES
    assert meta.image_root == os.path.join(base, "images", "validation")
    assert meta.sem_seg_root == os.path.join(base, "annotations_detectron2", "validation")
    assert meta.evaluator_type == "sem_seg"
    assert meta.ignore_label == 255

    _tiny_tree(tmp_path)
    with pytest.raises(ValueError, match="prepare_ade20k_sem_seg"):
        DatasetCatalog.get("ade20k_sem_seg_train")
    prepare_ade20k_sem_seg(str(tmp_path))
    dicts = DatasetCatalog.get("ade20k_sem_seg_train")
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        "ADE_train_00000001.jpg",
        "ADE_train_00000002.jpg",
    ]
    assert dicts[0]["sem_seg_file_name"] == os.path.join(
        base, "annotations_detectron2", "training", "ADE_train_00000001.png"
    )
    assert len(DatasetCatalog.get("ade20k_sem_seg_val")) == 1
