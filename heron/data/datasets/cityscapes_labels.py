"""The Cityscapes label table (a published fact of the dataset, as in cityscapesScripts).

Heron does not depend on ``cityscapesscripts``; the loaders only need this table: the name,
the id written in ``*_labelIds.png`` / ``*_instanceIds.png``, the id used for training
(255 = ignored), the category, whether the class has instances, whether evaluation ignores
it, and its color.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CITYSCAPES_LABELS",
    "CityscapesLabel",
    "cityscapes_id_to_label",
    "cityscapes_name_to_label",
    "cityscapes_thing_labels",
]


class CityscapesLabel(NamedTuple):
    """One row of the Cityscapes label table (field names as in cityscapesScripts)."""

    name: str
    id: int
    trainId: int
    category: str
    categoryId: int
    hasInstances: bool
    ignoreInEval: bool
    color: tuple[int, int, int]


_L = CityscapesLabel
# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    #  name                   id  trainId category       catId  inst   ignore  color
    _L("unlabeled",            0, 255, "void",           0, False, True,  (0, 0, 0)),
    _L("ego vehicle",          1, 255, "void",           0, False, True,  (0, 0, 0)),
    _L("rectification border", 2, 255, "void",           0, False, True,  (0, 0, 0)),
    _L("out of roi",           3, 255, "void",           0, False, True,  (0, 0, 0)),
    _L("static",               4, 255, "void",           0, False, True,  (0, 0, 0)),
    _L("dynamic",              5, 255, "void",           0, False, True,  (111, 74, 0)),
    _L("ground",               6, 255, "void",           0, False, True,  (81, 0, 81)),
    _L("road",                 7,   0, "flat",           1, False, False, (128, 64, 128)),
    _L("sidewalk",             8,   1, "flat",           1, False, False, (244, 35, 232)),
    _L("parking",              9, 255, "flat",           1, False, True,  (250, 170, 160)),
    _L("rail track",          10, 255, "flat",           1, False, True,  (230, 150, 140)),
    _L("building",            11,   2, "construction",   2, False, False, (70, 70, 70)),
    _L("wall",                12,   3, "construction",   2, False, False, (102, 102, 156)),
    _L("fence",               13,   4, "construction",   2, False, False, (190, 153, 153)),
    _L("guard rail",          14, 255, "construction",   2, False, True,  (180, 165, 180)),
    _L("bridge",              15, 255, "construction",   2, False, True,  (150, 100, 100)),
    _L("tunnel",              16, 255, "construction",   2, False, True,  (150, 120, 90)),
    _L("pole",                17,   5, "object",         3, False, False, (153, 153, 153)),
    _L("polegroup",           18, 255, "object",         3, False, True,  (153, 153, 153)),
    _L("traffic light",       19,   6, "object",         3, False, False, (250, 170, 30)),
    _L("traffic sign",        20,   7, "object",         3, False, False, (220, 220, 0)),
    _L("vegetation",          21,   8, "nature",         4, False, False, (107, 142, 35)),
    _L("terrain",             22,   9, "nature",         4, False, False, (152, 251, 152)),
    _L("sky",                 23,  10, "sky",            5, False, False, (70, 130, 180)),
    _L("person",              24,  11, "human",          6, True,  False, (220, 20, 60)),
    _L("rider",               25,  12, "human",          6, True,  False, (255, 0, 0)),
    _L("car",                 26,  13, "vehicle",        7, True,  False, (0, 0, 142)),
    _L("truck",               27,  14, "vehicle",        7, True,  False, (0, 0, 70)),
    _L("bus",                 28,  15, "vehicle",        7, True,  False, (0, 60, 100)),
    _L("caravan",             29, 255, "vehicle",        7, True,  True,  (0, 0, 90)),
    _L("trailer",             30, 255, "vehicle",        7, True,  True,  (0, 0, 110)),
    _L("train",               31,  16, "vehicle",        7, True,  False, (0, 80, 100)),
    _L("motorcycle",          32,  17, "vehicle",        7, True,  False, (0, 0, 230)),
    _L("bicycle",             33,  18, "vehicle",        7, True,  False, (119, 11, 32)),
    _L("license plate",       -1,  -1, "vehicle",        7, False, True,  (0, 0, 142)),
)
# fmt: on


def cityscapes_name_to_label() -> dict[str, CityscapesLabel]:
    """Map each label name (e.g. "car") to its row."""
    return {label.name: label for label in CITYSCAPES_LABELS}


def cityscapes_id_to_label() -> dict[int, CityscapesLabel]:
    """Map each label id (the value in ``*_labelIds.png``) to its row."""
    return {label.id: label for label in CITYSCAPES_LABELS}


def cityscapes_thing_labels() -> list[CityscapesLabel]:
    """Return the 8 instance classes that are evaluated, in table (= trainId) order.

    Their position in this list is the contiguous ``category_id`` of instance annotations:
    person 0, rider 1, car 2, truck 3, bus 4, train 5, motorcycle 6, bicycle 7.
    """
    return [label for label in CITYSCAPES_LABELS if label.hasInstances and not label.ignoreInEval]
