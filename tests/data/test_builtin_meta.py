from __future__ import annotations

import pytest

from heron.data.datasets.builtin_meta import (
    CITYSCAPES_CATEGORIES,
    COCO_CATEGORIES,
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
    _get_builtin_metadata,
)


def test_coco_categories_are_80_things_then_53_stuff_with_unique_increasing_ids():
    assert len(COCO_CATEGORIES) == 133
    assert sum(c["isthing"] for c in COCO_CATEGORIES) == 80
    isthing = [c["isthing"] for c in COCO_CATEGORIES]
    assert isthing == [1] * 80 + [0] * 53
    ids = [c["id"] for c in COCO_CATEGORIES]
    assert ids == sorted(set(ids))
    assert all(
        len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"]) for c in COCO_CATEGORIES
    )


def test_coco_metadata_has_80_classes_in_coco_order():
    meta = _get_builtin_metadata("coco")
    classes = meta["thing_classes"]
    assert len(classes) == 80 and len(meta["thing_colors"]) == 80
    assert classes[0] == "person" and classes[-1] == "toothbrush"
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    # COCO skips ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83: 90 ids - 10 gaps = 80 classes
    assert id_map[1] == 0 and id_map[90] == 79
    assert id_map[13] == 11  # stop sign follows fire hydrant (11) across the gap at 12
    assert sorted(id_map.values()) == list(range(80))
    assert set(range(1, 91)) - set(id_map) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_coco_person_keypoints_and_symmetric_flip_map():
    meta = _get_builtin_metadata("coco_person")
    assert meta["thing_classes"] == ["person"]
    names = meta["keypoint_names"]
    assert len(names) == 17 and names[0] == "nose" and names[-1] == "right_ankle"
    flip = dict(COCO_PERSON_KEYPOINT_FLIP_MAP)
    flip.update({b: a for a, b in COCO_PERSON_KEYPOINT_FLIP_MAP})
    assert len(flip) == 16  # every keypoint but the nose has a partner
    for a, b in flip.items():
        assert flip[b] == a and a in names and b in names
        assert a.replace("left_", "right_") == b or a.replace("right_", "left_") == b
    for a, b, color in meta["keypoint_connection_rules"]:
        assert a in COCO_PERSON_KEYPOINT_NAMES and b in COCO_PERSON_KEYPOINT_NAMES
        assert len(color) == 3
    assert len(KEYPOINT_CONNECTION_RULES) == 14


def test_coco_panoptic_standard_indexes_all_133_categories():
    meta = _get_builtin_metadata("coco_panoptic_standard")
    assert len(meta["thing_classes"]) == 133 and meta["stuff_classes"] == meta["thing_classes"]
    things, stuff = (
        meta["thing_dataset_id_to_contiguous_id"],
        meta["stuff_dataset_id_to_contiguous_id"],
    )
    assert len(things) == 80 and len(stuff) == 53
    assert sorted([*things.values(), *stuff.values()]) == list(range(133))
    assert things[90] == 79 and stuff[92] == 80 and stuff[200] == 132
    assert meta["stuff_classes"][stuff[92]] == "banner"


def test_coco_panoptic_separated_has_things_class_at_zero():
    meta = _get_builtin_metadata("coco_panoptic_separated")
    assert meta["stuff_classes"][0] == "things" and len(meta["stuff_classes"]) == 54
    assert meta["stuff_dataset_id_to_contiguous_id"][0] == 0
    assert meta["stuff_dataset_id_to_contiguous_id"][92] == 1
    assert meta["stuff_classes"][-1] == "rug"  # "rug-merged" with the suffix removed
    assert len(meta["thing_classes"]) == 80


def test_cityscapes_metadata():
    meta = _get_builtin_metadata("cityscapes")
    assert meta["thing_classes"] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip
    assert len(meta["stuff_classes"]) == 19 and meta["stuff_classes"][0] == "road"
    assert [c["trainId"] for c in CITYSCAPES_CATEGORIES] == list(range(19))


def test_unknown_builtin_metadata_lists_known_names():
    with pytest.raises(KeyError, match=r"'coco_2014'.*'cityscapes', 'coco'"):
        _get_builtin_metadata("coco_2014")
