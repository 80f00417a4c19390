"""Read the Cityscapes "fine" annotations into Detectron2 dataset dicts, and register them.

Expected layout (as released)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json
                                                      _gtFine_instanceIds.png
                                                      _gtFine_labelIds.png
                                                      _gtFine_labelTrainIds.png  (made by
                                                          create_cityscapes_train_ids)

No ``cityscapesscripts`` and no ``shapely`` are needed: the label table lives in
``cityscapes_labels`` and polygon overlaps are resolved by rasterizing, as cityscapesScripts
does when it renders the png annotations.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from heron.data.datasets.cityscapes_labels import (
    CITYSCAPES_LABELS,
    cityscapes_id_to_label,
    cityscapes_name_to_label,
    cityscapes_thing_labels,
)
from heron.structures.boxes import BoxMode

__all__ = [
    "create_cityscapes_train_ids",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "register_all_cityscapes",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIX = "leftImg8bit.png"
# Instance ids in *_instanceIds.png below this value are stuff classes (ids 0..23).
_FIRST_THING_ID = 24
# Polygons trace the mask upsampled by this factor, so their edges lie a quarter pixel inside
# the pixel borders and every mask pixel center is strictly inside (see _mask_to_polygons).
_CONTOUR_UPSAMPLE = 2


def _get_cityscapes_files(image_dir: str, gt_dir: str) -> list[tuple[str, str]]:
    """List (image file, annotation prefix) pairs, sorted by city and file name.

    The annotation prefix is ``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_``; append
    "polygons.json", "instanceIds.png", ... to get a file.
    """
    if not os.path.isdir(image_dir):
        raise ValueError(f"image_dir must be an existing directory, got {image_dir!r}")
    files = []
    cities = sorted(c for c in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, c)))
    for city in cities:
        city_dir = os.path.join(image_dir, city)
        for basename in sorted(os.listdir(city_dir)):
            if not basename.endswith(_IMAGE_SUFFIX):
                raise ValueError(
                    f"Cityscapes image {os.path.join(city_dir, basename)!r} does not end with "
                    f"{_IMAGE_SUFFIX!r}"
                )
            stem = basename[: -len(_IMAGE_SUFFIX)]
            prefix = os.path.join(gt_dir, city, stem + "gtFine_")
            files.append((os.path.join(city_dir, basename), prefix))
    if not files:
        raise ValueError(f"No Cityscapes images (*_{_IMAGE_SUFFIX}) found in {image_dir!r}")
    logger.info("%d cities, %d images found in %s", len(cities), len(files), image_dir)
    return files


def _require_file(path: str, image_file: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation {path!r} of image {image_file!r} does not exist")


def _mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer boundaries of a (H, W) 0/1 mask as COCO polygons in absolute pixels.

    Pixel (x, y) covers [x, x + 1) x [y, y + 1), as in pycocotools. Tracing the mask upsampled
    by 2 and mapping cell centers back puts each edge a quarter pixel inside the mask border,
    so pycocotools re-rasterizes every hole-free region exactly (a plain contour through
    pixel centers, as Detectron2 draws from png masks, loses up to half of a thin object).
    Holes are lost: COCO polygons store exteriors only, as in Detectron2.
    """
    import cv2  # checked by the caller

    ys, xs = np.nonzero(mask)
    y0, x0 = int(ys.min()), int(xs.min())
    crop = mask[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1].astype(np.uint8)
    k = _CONTOUR_UPSAMPLE
    up = np.kron(crop, np.ones((k, k), dtype=np.uint8))
    contours = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
    polygons = []
    for contour in contours:
        xy = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / k + (x0, y0)
        polygons.append(xy.reshape(-1).tolist())
    return polygons


def _make_annotation(
    mask: np.ndarray, category_id: int, iscrowd: bool, to_polygons: bool, box_end: int
) -> dict[str, Any]:
    """Annotation dict of one visible (H, W) mask; ``box_end`` is added to the max x / y."""
    ys, xs = np.nonzero(mask)
    bbox = [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + box_end),
        float(ys.max() + box_end),
    ]
    if to_polygons:
        segmentation: Any = _mask_to_polygons(mask)
    else:
        segmentation = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {
        "iscrowd": int(iscrowd),
        "category_id": category_id,
        "bbox": bbox,
        "bbox_mode": BoxMode.XYXY_ABS,
        "segmentation": segmentation,
    }


def _resolve_label(name: str, json_file: str, index: int) -> tuple[Any, bool]:
    """Return (label row, is group) for a polygon label such as "car" or "cargroup"."""
    name2label = cityscapes_name_to_label()
    if name in name2label:
        return name2label[name], False
    if name.endswith("group") and name[: -len("group")] in name2label:
        return name2label[name[: -len("group")]], True
    raise KeyError(f"{json_file}: object {index} has unknown Cityscapes label {name!r}")


def _json_to_dict(image_file: str, json_file: str, to_polygons: bool) -> tuple[dict, int]:
    """Dataset dict of one image from its polygons json; also the count of hidden instances.

    cityscapesScripts renders objects in file order with PIL, each one overwriting the pixels
    of earlier ones; we do the same and keep, for each instance, the pixels it still owns.
    Objects marked "deleted" and labels with a negative id (license plate) are not drawn.
    """
    with open(json_file) as f:
        obj = json.load(f)
    for key in ("imgHeight", "imgWidth", "objects"):
        if key not in obj:
            raise ValueError(f"{json_file}: missing required key {key!r}")
    height, width = int(obj["imgHeight"]), int(obj["imgWidth"])
    contiguous = {label.id: i for i, label in enumerate(cityscapes_thing_labels())}
    canvas = Image.new("I", (width, height), -1)  # int32 index of the object owning a pixel
    drawer = ImageDraw.Draw(canvas)
    things = []  # (object index, contiguous id, is group)
    for index, item in enumerate(obj["objects"]):
        if item.get("deleted"):  # cityscapesScripts skips objects marked deleted
            continue
        label, is_group = _resolve_label(item.get("label", ""), json_file, index)
        if label.id < 0:
            continue
        points = item.get("polygon")
        if not isinstance(points, list) or not all(len(p) == 2 for p in points):
            raise ValueError(
                f"{json_file}: object {index} ({label.name}) must have a 'polygon' list of "
                f"[x, y] points, got {points!r:.80}"
            )
        drawer.polygon([(x, y) for x, y in points], fill=index)
        if label.hasInstances and not label.ignoreInEval:
            things.append((index, contiguous[label.id], is_group))
    owner = np.asarray(canvas)
    annotations, hidden = [], 0
    # Detectron2 walks the objects last to first, so its annotations come in reverse order.
    for index, category_id, is_group in reversed(things):
        mask = (owner == index).astype(np.uint8)
        if not mask.any():
            hidden += 1
            continue
        # box_end=1: the box spans the pixel borders, like the polygon bounds Detectron2 reports
        annotations.append(_make_annotation(mask, category_id, is_group, to_polygons, box_end=1))
    record = {
        "file_name": image_file,
        "image_id": os.path.basename(image_file),
        "height": height,
        "width": width,
        "annotations": annotations,
    }
    return record, hidden


def _png_to_dict(image_file: str, instance_file: str, to_polygons: bool) -> tuple[dict, int]:
    """Dataset dict of one image from its instanceIds png; also the count of dropped instances.

    A pixel value v >= 1000 is instance v % 1000 of label v // 1000; a value below 1000 that
    is an instance class marks a crowd region of that class. As in Detectron2, the box is
    (min x, min y, max x, max y) of the pixel indices, and an instance one pixel thin (max ==
    min) is dropped.
    """
    with Image.open(instance_file) as img:
        inst_image = np.asarray(img)
    id2label = cityscapes_id_to_label()
    contiguous = {label.id: i for i, label in enumerate(cityscapes_thing_labels())}
    annotations, dropped = [], 0
    for instance_id in np.unique(inst_image[inst_image >= _FIRST_THING_ID]).tolist():
        label_id = instance_id // 1000 if instance_id >= 1000 else instance_id
        if label_id not in contiguous:
            if label_id not in id2label:
                raise ValueError(
                    f"{instance_file}: pixel value {instance_id} is not a Cityscapes label id "
                    f"(or label id * 1000 + instance)"
                )
            continue  # stuff, or an instance class ignored in evaluation (caravan, trailer)
        mask = (inst_image == instance_id).astype(np.uint8)
        ys, xs = np.nonzero(mask)
        if xs.max() <= xs.min() or ys.max() <= ys.min():
            dropped += 1
            continue
        annotations.append(
            _make_annotation(mask, contiguous[label_id], instance_id < 1000, to_polygons, box_end=0)
        )
    record = {
        "file_name": image_file,
        "image_id": os.path.basename(image_file),
        "height": int(inst_image.shape[0]),
        "width": int(inst_image.shape[1]),
        "annotations": annotations,
    }
    return record, dropped


def load_cityscapes_instances(
    image_dir: str, gt_dir: str, from_json: bool = True, to_polygons: bool = True
) -> list[dict]:
    """Load the instance annotations of one Cityscapes split.

    Args:
        image_dir: e.g. "~/cityscapes/leftImg8bit/train", holding one folder per city.
        gt_dir: e.g. "~/cityscapes/gtFine/train", with the same city folders.
        from_json: read the ``*_gtFine_polygons.json`` files (True) or the
            ``*_gtFine_instanceIds.png`` files (False).
        to_polygons: store each "segmentation" as a list of polygons (COCO's polygon format,
            needs opencv-python-headless) or, if False, as a COCO RLE dict.

    Returns:
        One dict per image, sorted by city and file name, with "file_name", "image_id" (the
        image's base name), "height", "width" and "annotations". Each annotation has "bbox"
        in ``BoxMode.XYXY_ABS``, "bbox_mode", "category_id" (0..7: person, rider, car,
        truck, bus, train, motorcycle, bicycle), "iscrowd" (1 for "<class>group" polygons
        and for crowd regions of the png) and "segmentation": the pixels the instance still
        shows after later objects are drawn over it. Instances left with no visible pixel
        are dropped and counted in a log line.

    Raises:
        ImportError: ``to_polygons`` is True and OpenCV is not installed.
        ValueError: ``image_dir`` holds no Cityscapes images or a json file is malformed.
        KeyError: a json object has an unknown label.
        FileNotFoundError: an image's annotation file is missing.
    """
    if to_polygons:
        try:
            import cv2  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "load_cityscapes_instances(to_polygons=True) needs OpenCV to trace polygons: "
                "install opencv-python-headless, or pass to_polygons=False for RLE masks"
            ) from e
    image_dir, gt_dir = os.fspath(image_dir), os.fspath(gt_dir)
    # A plain loop: per-image work is small, and a process pool adds start-up cost and
    # pickling for no gain on the small machines Heron targets.
    records, skipped = [], 0
    for image_file, prefix in _get_cityscapes_files(image_dir, gt_dir):
        if from_json:
            ann_file = prefix + "polygons.json"
            _require_file(ann_file, image_file)
            record, n = _json_to_dict(image_file, ann_file, to_polygons)
        else:
            ann_file = prefix + "instanceIds.png"
            _require_file(ann_file, image_file)
            record, n = _png_to_dict(image_file, ann_file, to_polygons)
        records.append(record)
        skipped += n
    if skipped:
        why = "no visible pixel" if from_json else "a box one pixel thin"
        logger.info("Dropped %d Cityscapes instances with %s in %s", skipped, why, gt_dir)
    logger.info("Loaded %d images from %s", len(records), image_dir)
    return records


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> list[dict]:
    """Pair each Cityscapes image with its ``*_gtFine_labelTrainIds.png``.

    Args:
        image_dir: e.g. "~/cityscapes/leftImg8bit/train".
        gt_dir: e.g. "~/cityscapes/gtFine/train".

    Returns:
        One dict per image with "file_name", "sem_seg_file_name" (pixel values are train ids
        0..18, 255 = ignore), "height" and "width" (from the polygons json when present,
        otherwise from the image header).

    Raises:
        ValueError: no images, or some labelTrainIds files are missing (make them with
            :func:`create_cityscapes_train_ids`).
    """
    image_dir, gt_dir = os.fspath(image_dir), os.fspath(gt_dir)
    records, missing = [], []
    for image_file, prefix in _get_cityscapes_files(image_dir, gt_dir):
        label_file = prefix + "labelTrainIds.png"
        if not os.path.isfile(label_file):
            missing.append(label_file)
            continue
        json_file = prefix + "polygons.json"
        if os.path.isfile(json_file):
            with open(json_file) as f:
                obj = json.load(f)
            height, width = int(obj["imgHeight"]), int(obj["imgWidth"])
        else:
            with Image.open(image_file) as img:
                width, height = img.size
        records.append(
            {
                "file_name": image_file,
                "sem_seg_file_name": label_file,
                "height": height,
                "width": width,
            }
        )
    if missing:
        raise ValueError(
            f"{len(missing)} *_gtFine_labelTrainIds.png files are missing in {gt_dir!r}, e.g. "
            f"{missing[:3]}; create them with "
            f"heron.data.datasets.cityscapes.create_cityscapes_train_ids({gt_dir!r})"
        )
    return records


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


def create_cityscapes_train_ids(gt_dir: str) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under gt_dir.

    Each pixel's label id becomes its train id (0..18); labels ignored in training and values
    outside the label table become 255. This gives the files cityscapesScripts'
    createTrainIdLabelImgs renders from the polygons, since both draw the same polygons in
    the same order.

    Args:
        gt_dir: a folder searched recursively, e.g. "~/cityscapes/gtFine" or one split of it.

    Returns:
        The number of files written.

    Raises:
        ValueError: ``gt_dir`` is not a directory.
    """
    gt_dir = os.fspath(gt_dir)
    if not os.path.isdir(gt_dir):
        raise ValueError(f"gt_dir must be an existing directory, got {gt_dir!r}")
    lut = np.full(256, 255, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    count = 0
    for dirpath, dirnames, filenames in os.walk(gt_dir):
        dirnames.sort()
        for fname in sorted(filenames):
            if not fname.endswith("_gtFine_labelIds.png"):
                continue
            src = os.path.join(dirpath, fname)
            with Image.open(src) as img:
                label_ids = np.asarray(img)
            if label_ids.ndim != 2:
                raise ValueError(f"{src}: expected a single-channel label image, got {img.mode}")
            train_ids = lut[np.clip(label_ids, 0, 255).astype(np.uint8)]
            dst = src[: -len("labelIds.png")] + "labelTrainIds.png"
            _write_png_atomic(train_ids, dst)
            count += 1
    logger.info("Wrote %d labelTrainIds files under %s", count, gt_dir)
    return count


_RAW_CITYSCAPES_SPLITS = {
    "cityscapes_fine_{task}_train": ("cityscapes/leftImg8bit/train/", "cityscapes/gtFine/train/"),
    "cityscapes_fine_{task}_val": ("cityscapes/leftImg8bit/val/", "cityscapes/gtFine/val/"),
    "cityscapes_fine_{task}_test": ("cityscapes/leftImg8bit/test/", "cityscapes/gtFine/test/"),
}


def register_all_cityscapes(root: str) -> None:
    """Register the fine instance and semantic splits of Cityscapes found under root/cityscapes.

    Registers ``cityscapes_fine_instance_seg_{train,val,test}`` (json polygons, evaluator
    "cityscapes_instance") and ``cityscapes_fine_sem_seg_{train,val,test}`` (train-id pngs,
    evaluator "cityscapes_sem_seg", ignore_label 255). Nothing is read until a dataset is
    fetched with ``DatasetCatalog.get``.

    Args:
        root: the datasets folder, e.g. "datasets"; it holds "cityscapes/leftImg8bit" and
            "cityscapes/gtFine".
    """
    root = os.fspath(root)
    stuff_colors = [tuple(c["color"]) for c in CITYSCAPES_CATEGORIES]
    for key, (image_dir, gt_dir) in _RAW_CITYSCAPES_SPLITS.items():
        meta = _get_builtin_metadata("cityscapes")
        image_dir = os.path.join(root, image_dir)
        gt_dir = os.path.join(root, gt_dir)

        inst_key = key.format(task="instance_seg")
        DatasetCatalog.register(
            inst_key,
            lambda x=image_dir, y=gt_dir: load_cityscapes_instances(
                x, y, from_json=True, to_polygons=True
            ),
        )
        MetadataCatalog.get(inst_key).set(
            image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_instance", **meta
        )

        sem_key = key.format(task="sem_seg")
        DatasetCatalog.register(
            sem_key, lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y)
        )
        MetadataCatalog.get(sem_key).set(
            image_dir=image_dir,
            gt_dir=gt_dir,
            evaluator_type="cityscapes_sem_seg",
            ignore_label=255,
            stuff_colors=stuff_colors,
            **meta,
        )
