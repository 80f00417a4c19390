"""ADE20K scene parsing (ADEChallengeData2016, 150 classes): preparation and registration.

Expected layout (as released, plus the folder :func:`prepare_ade20k_sem_seg` writes)::

    <root>/ADEChallengeData2016/images/{training,validation}/*.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/*.png        0 = other, 1..150
    <root>/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png
                                                              0..149, 255 = ignore
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
from PIL import Image

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.sem_seg import load_sem_seg

__all__ = ["ADE20K_SEM_SEG_CATEGORIES", "prepare_ade20k_sem_seg", "register_all_ade20k"]

logger = logging.getLogger(__name__)

# The 150 classes of the SceneParsing benchmark, in label order (label 1 is "wall"). Names are
# Detectron2's, including the trailing space in "window ".
# fmt: off
ADE20K_SEM_SEG_CATEGORIES: list[str] = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road, route", "bed", "window ",
    "grass", "cabinet", "sidewalk, pavement", "person", "earth, ground", "door", "table",
    "mountain, mount", "plant", "curtain", "chair", "car", "water", "painting, picture", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock, stone", "wardrobe, closet, press", "lamp", "tub", "rail", "cushion",
    "base, pedestal, stand", "box", "column, pillar", "signboard, sign",
    "chest of drawers, chest, bureau, dresser", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator, icebox", "grandstand, covered stand", "path", "stairs", "runway",
    "case, display case, showcase, vitrine", "pool table, billiard table, snooker table",
    "pillow", "screen door, screen", "stairway, staircase", "river", "bridge, span", "bookcase",
    "blind, screen", "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm, palm tree", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel, hut, hutch, shack, shanty", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning, sunshade, sunblind",
    "street lamp", "booth", "tv", "plane", "dirt track", "clothes", "pole",
    "land, ground, soil", "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock",
    "bottle", "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card",
    "stage", "van", "ship", "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter", "canopy",
    "washer, automatic washer, washing machine", "plaything, toy", "pool", "stool",
    "barrel, cask", "basket, handbasket", "falls", "tent", "bag", "minibike, motorbike",
    "cradle", "oven", "ball", "food, solid food", "step, stair", "tank, storage tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket, cover", "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light",
    "tray", "trash can", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass, drinking glass", "clock", "flag",
]
# fmt: on

_SPLITS = (("train", "training"), ("val", "validation"))
_CONVERTED = "annotations_detectron2"


def _write_png_atomic(array: np.ndarray, path: str) -> None:
    """Write a uint8 array as png through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def prepare_ade20k_sem_seg(root: str) -> dict[str, int]:
    """Convert ADE20K label pngs to the 0-based labels Heron trains on.

    Reads ``<root>/ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other,
    1..150 = classes) and writes the same names under ``annotations_detectron2/`` with each
    value minus 1 and 0 ("other") mapped to 255, the ignore label. This is what Detectron2's
    ``datasets/prepare_ade20k_sem_seg.py`` does. Files are written atomically, so an
    interrupted run leaves no half-written png; running it again overwrites.

    Args:
        root: the datasets folder holding "ADEChallengeData2016".

    Returns:
        Number of files written per split folder, e.g. {"training": 20210, "validation": 2000}.

    Raises:
        ValueError: an annotations folder is missing, or a png is not single-channel uint8.
    """
    base = os.path.join(os.fspath(root), "ADEChallengeData2016")
    counts = {}
    for _, dirname in _SPLITS:
        src_dir = os.path.join(base, "annotations", dirname)
        dst_dir = os.path.join(base, _CONVERTED, dirname)
        if not os.path.isdir(src_dir):
            raise ValueError(f"ADE20K annotations folder {src_dir!r} does not exist")
        os.makedirs(dst_dir, exist_ok=True)
        count = 0
        for fname in sorted(os.listdir(src_dir)):
            if not fname.endswith(".png"):
                continue
            src = os.path.join(src_dir, fname)
            with Image.open(src) as img:
                labels = np.asarray(img)
            if labels.ndim != 2 or labels.dtype != np.uint8:
                raise ValueError(
                    f"{src}: expected a single-channel 8-bit label png, got shape "
                    f"{labels.shape} and dtype {labels.dtype}"
                )
            # uint8 arithmetic wraps 0 - 1 to 255: "other" becomes the ignore label
            converted = labels - np.uint8(1)
            _write_png_atomic(converted, os.path.join(dst_dir, fname))
            count += 1
        counts[dirname] = count
        logger.info("Converted %d ADE20K label files into %s", count, dst_dir)
    return counts


def _load_ade20k_split(gt_dir: str, image_dir: str) -> list[dict]:
    if not os.path.isdir(gt_dir):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(gt_dir))))
        raise ValueError(
            f"ADE20K label folder {gt_dir!r} does not exist; create it with "
            f"heron.data.datasets.ade20k.prepare_ade20k_sem_seg({root!r})"
        )
    return load_sem_seg(gt_dir, image_dir, gt_ext="png", image_ext="jpg")


def register_all_ade20k(root: str) -> None:
    """Register ``ade20k_sem_seg_train`` and ``ade20k_sem_seg_val`` found under root.

    Labels are read from ``ADEChallengeData2016/annotations_detectron2`` (made by
    :func:`prepare_ade20k_sem_seg`); nothing is read until ``DatasetCatalog.get``.

    Args:
        root: the datasets folder holding "ADEChallengeData2016".
    """
    base = os.path.join(os.fspath(root), "ADEChallengeData2016")
    for name, dirname in _SPLITS:
        image_dir = os.path.join(base, "images", dirname)
        gt_dir = os.path.join(base, _CONVERTED, dirname)
        name = f"ade20k_sem_seg_{name}"
        DatasetCatalog.register(name, lambda x=image_dir, y=gt_dir: _load_ade20k_split(y, x))
        MetadataCatalog.get(name).set(
            stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
            image_root=image_dir,
            sem_seg_root=gt_dir,
            evaluator_type="sem_seg",
            ignore_label=255,
        )
