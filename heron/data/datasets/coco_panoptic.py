"""Read COCO panoptic annotations into dataset dicts, in Detectron2's two forms.

*Standard* form (Panoptic-DeepLab and friends): one dict per image with ``file_name``,
``image_id``, ``pan_seg_file_name`` (the RGB panoptic PNG) and ``segments_info`` (one dict per
segment: ``id``, contiguous ``category_id``, ``isthing``, plus the json's other keys).

*Separated* form (Panoptic FPN): the COCO instances json for things plus a semantic PNG per
image in which every thing pixel is 0, the stuff classes are 1..N and unlabeled pixels are 255.
:func:`separate_coco_semantic_from_panoptic` writes those PNGs from the panoptic ones.

A panoptic PNG stores each pixel's segment id as ``R + 256 * G + 256**2 * B``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from heron.data.catalog import DatasetCatalog, MetadataCatalog
from heron.data.datasets.builtin_meta import _get_builtin_metadata
from heron.data.datasets.coco import load_coco_json
from heron.data.datasets.sem_seg import load_sem_seg
from heron.utils.file_io import PathManager

__all__ = [
    "load_coco_panoptic_json",
    "merge_to_panoptic",
    "register_all_coco_panoptic",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "separate_coco_semantic_from_panoptic",
]

logger = logging.getLogger(__name__)

_IGNORE_LABEL = 255
_LABEL_DIVISOR = 1000
_REQUIRED_ANN_KEYS = ("image_id", "file_name", "segments_info")
_REQUIRED_SEGMENT_KEYS = ("id", "category_id")
_NUM_SHOWN = 5  # how many offending names an error message lists


def _shown(items: Sequence[Any]) -> str:
    more = f" and {len(items) - _NUM_SHOWN} more" if len(items) > _NUM_SHOWN else ""
    return f"{list(items[:_NUM_SHOWN])}{more}"


def _read_panoptic_annotations(json_file: str) -> list[dict]:
    """Return the "annotations" list of a COCO panoptic json, checked for required keys."""
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "annotations" not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{json_file}: expected a JSON object with an 'annotations' list, got {found}"
        )
    anns = data["annotations"]
    if not anns:
        raise ValueError(f"{json_file}: 'annotations' is empty; no images to load")
    for i, ann in enumerate(anns):
        missing = [k for k in _REQUIRED_ANN_KEYS if k not in ann]
        if missing:
            raise ValueError(
                f"{json_file}: annotation #{i} (image_id {ann.get('image_id')!r}) is missing "
                f"required key(s) {missing}"
            )
        for j, seg in enumerate(ann["segments_info"]):
            missing = [k for k in _REQUIRED_SEGMENT_KEYS if k not in seg]
            if missing:
                raise ValueError(
                    f"{json_file}: segment #{j} of image_id {ann['image_id']!r} is missing "
                    f"required key(s) {missing}"
                )
    return anns


def _image_id(ann: dict, json_file: str) -> int:
    # Detectron2 converts panoptic image ids with int(); a non-integer id is a user error.
    try:
        return int(ann["image_id"])
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{json_file}: image_id must be an integer, got {ann['image_id']!r} "
            f"(file_name {ann['file_name']!r})"
        ) from e


def _convert_segments(
    segments: list[dict], thing_map: Mapping, stuff_map: Mapping, image_id: int, json_file: str
) -> list[dict]:
    """Map each segment's dataset category id to its contiguous id and set ``isthing``."""
    out = []
    for seg in segments:
        seg = dict(seg)
        cat_id = seg["category_id"]
        # thing map first, as Detectron2's load_coco_panoptic_json does
        if cat_id in thing_map:
            seg["category_id"], seg["isthing"] = thing_map[cat_id], True
        elif cat_id in stuff_map:
            seg["category_id"], seg["isthing"] = stuff_map[cat_id], False
        else:
            raise ValueError(
                f"{json_file}: segment id {seg['id']!r} of image_id {image_id} has category_id "
                f"{cat_id!r}, which is in neither thing_dataset_id_to_contiguous_id "
                f"{sorted(thing_map)} nor stuff_dataset_id_to_contiguous_id {sorted(stuff_map)}"
            )
        out.append(seg)
    return out


def _check_files_exist(records: list[dict], keys: Sequence[str], json_file: str) -> None:
    """Raise listing the records whose files (under ``keys``) do not exist."""
    for key in keys:
        missing = [r[key] for r in records if not os.path.isfile(r[key])]
        if missing:
            raise ValueError(
                f"{json_file}: {len(missing)} of {len(records)} records have no {key} on disk, "
                f"e.g. {_shown(missing)}"
            )


def load_coco_panoptic_json(
    json_file: str, image_dir: str, gt_dir: str, meta: Mapping[str, Any]
) -> list[dict]:
    """Load a COCO panoptic json into standard-form panoptic dataset dicts.

    Args:
        json_file: path to the panoptic json, e.g. "coco/annotations/panoptic_val2017.json".
        image_dir: directory of the input images (JPEGs).
        gt_dir: directory of the panoptic PNGs, e.g. "coco/panoptic_val2017".
        meta: metadata (dict or ``Metadata``) holding ``thing_dataset_id_to_contiguous_id``
            and ``stuff_dataset_id_to_contiguous_id``; a missing map counts as empty.

    Returns:
        One dict per annotation, in the json's order: ``file_name`` (image_dir joined with the
        annotation's file_name, extension replaced by ".jpg", as Detectron2 does), ``image_id``
        (int), ``pan_seg_file_name`` (gt_dir joined with file_name) and ``segments_info``
        (copies of the json's segments with contiguous ``category_id`` and bool ``isthing``).

    Raises:
        ValueError: missing keys, no annotations, a non-integer or repeated image id, a
            category id in neither map, or image/label files that do not exist; the message
            names the json file and the record.
    """
    json_file, image_dir, gt_dir = (os.fspath(p) for p in (json_file, image_dir, gt_dir))
    thing_map = meta.get("thing_dataset_id_to_contiguous_id") or {}
    stuff_map = meta.get("stuff_dataset_id_to_contiguous_id") or {}
    records, seen_ids = [], set()
    for ann in _read_panoptic_annotations(json_file):
        image_id = _image_id(ann, json_file)
        if image_id in seen_ids:
            raise ValueError(f"{json_file}: image_id {image_id} appears more than once")
        seen_ids.add(image_id)
        stem = os.path.splitext(ann["file_name"])[0]
        records.append(
            {
                "file_name": os.path.join(image_dir, stem + ".jpg"),
                "image_id": image_id,
                "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
                "segments_info": _convert_segments(
                    ann["segments_info"], thing_map, stuff_map, image_id, json_file
                ),
            }
        )
    # Detectron2 checks only the first record's files; checking all is cheap and catches
    # partial downloads before training starts.
    _check_files_exist(records, ("file_name", "pan_seg_file_name"), json_file)
    logger.info("Loaded %d images in COCO panoptic format from %s", len(records), json_file)
    return records


def _check_path(value: Any, what: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, got {type(value).__name__}")


def register_coco_panoptic(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: str | None = None,
) -> None:
    """Register the standard-form COCO panoptic dataset ``name``; nothing is read here.

    Args:
        name: dataset name, e.g. "coco_2017_train_panoptic".
        metadata: extra metadata; it must hold the thing/stuff id maps used to load.
        image_root: directory of the images.
        panoptic_root: directory of the panoptic PNGs.
        panoptic_json: path to the panoptic json.
        instances_json: the matching COCO instances json (used by evaluators), or None.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    for value, what in ((image_root, "image_root"), (panoptic_root, "panoptic_root")):
        _check_path(value, what)
    _check_path(panoptic_json, "panoptic_json")
    _check_path(instances_json, "instances_json", optional=True)
    DatasetCatalog.register(
        name,
        lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata),
    )
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=_IGNORE_LABEL,
        label_divisor=_LABEL_DIVISOR,
        **metadata,
    )


def register_coco_panoptic_separated(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """Register ``name + "_separated"`` and ``name + "_stuffonly"``; nothing is read here.

    ``<name>_separated`` loads the instances json and pairs every image with its semantic PNG
    (:func:`merge_to_panoptic`); ``<name>_stuffonly`` is the semantic PNGs alone.

    Args:
        name: prefix of the two dataset names, e.g. "coco_2017_train_panoptic".
        metadata: extra metadata for both datasets.
        image_root: directory of the images.
        panoptic_root: directory of the panoptic PNGs (kept in metadata for evaluation).
        panoptic_json: path to the panoptic json (kept in metadata for evaluation).
        sem_seg_root: directory of the semantic PNGs written by
            :func:`separate_coco_semantic_from_panoptic`.
        instances_json: path to the COCO instances json.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    for value, what in (
        (image_root, "image_root"),
        (panoptic_root, "panoptic_root"),
        (panoptic_json, "panoptic_json"),
        (sem_seg_root, "sem_seg_root"),
        (instances_json, "instances_json"),
    ):
        _check_path(value, what)
    panoptic_name = name + "_separated"
    DatasetCatalog.register(
        panoptic_name,
        lambda: merge_to_panoptic(
            load_coco_json(instances_json, image_root, panoptic_name),
            load_sem_seg(sem_seg_root, image_root, allow_unlabeled_images=True),
        ),
    )
    MetadataCatalog.get(panoptic_name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=_IGNORE_LABEL,
        **metadata,
    )
    semantic_name = name + "_stuffonly"
    DatasetCatalog.register(
        semantic_name, lambda: load_sem_seg(sem_seg_root, image_root, allow_unlabeled_images=True)
    )
    MetadataCatalog.get(semantic_name).set(
        sem_seg_root=sem_seg_root,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=_IGNORE_LABEL,
        **metadata,
    )


def merge_to_panoptic(detection_dicts: list[dict], sem_seg_dicts: list[dict]) -> list[dict]:
    """Give every detection dict the semantic-segmentation entry of the same image.

    Images are matched by ``file_name`` (compared after ``os.path.normpath``). Each output
    dict is a shallow copy of a detection dict updated with its sem-seg dict's keys (so it
    gains ``sem_seg_file_name``), in the order of ``detection_dicts``.

    Raises:
        ValueError: a detection dict has no sem-seg partner, or two sem-seg dicts share a
            file_name. Sem-seg dicts with no detection partner are left out, as in
            Detectron2, and their number is logged.
    """
    by_file: dict[str, dict] = {}
    for entry in sem_seg_dicts:
        key = os.path.normpath(entry["file_name"])
        if key in by_file:
            raise ValueError(f"sem_seg_dicts holds file_name {entry['file_name']!r} more than once")
        by_file[key] = entry
    merged, used = [], set()
    missing = []
    for det in detection_dicts:
        key = os.path.normpath(det["file_name"])
        if key not in by_file:
            missing.append(det["file_name"])
            continue
        used.add(key)
        out = copy.copy(det)
        out.update(by_file[key])
        merged.append(out)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(detection_dicts)} detection dicts have no semantic "
            f"segmentation entry with the same file_name, e.g. {_shown(missing)}"
        )
    if len(used) < len(by_file):
        logger.warning(
            "merge_to_panoptic: %d semantic segmentation entries have no detection dict and "
            "were left out",
            len(by_file) - len(used),
        )
    return merged


def _rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) uint32 segment ids, R + 256 G + 256**2 B."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _separated_id_map(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Category id -> semantic label: things 0, stuff 1..N in the given order, id 0 -> 255."""
    id_map: dict[int, int] = {}
    num_stuff = 0
    for i, cat in enumerate(categories):
        if "id" not in cat or "isthing" not in cat:
            raise ValueError(f"categories[{i}] needs keys 'id' and 'isthing', got {dict(cat)}")
        if cat["isthing"]:
            id_map[cat["id"]] = 0
        else:
            num_stuff += 1
            id_map[cat["id"]] = num_stuff
    if num_stuff > 254:  # 0 is "things" and 255 is ignore
        raise ValueError(f"categories hold {num_stuff} stuff classes; at most 254 fit in uint8")
    id_map[0] = _IGNORE_LABEL  # Detectron2's prepare_panoptic_fpn.py maps category 0 to ignore
    return id_map


def _write_png_atomic(path: str, array: np.ndarray) -> None:
    """Save ``array`` as a PNG through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".png")
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


def _panoptic_to_semantic(
    png_file: str, segments: list[dict], id_map: Mapping[int, int], image_id: Any, json_file: str
) -> np.ndarray:
    """Return the (H, W) uint8 separated semantic labels of one panoptic PNG."""
    with Image.open(png_file) as img:
        if img.mode != "RGB":
            raise ValueError(f"{png_file}: panoptic PNG must be RGB, got mode {img.mode!r}")
        seg_ids = _rgb_to_id(np.asarray(img))
    labels = np.full(seg_ids.shape, _IGNORE_LABEL, dtype=np.uint8)
    for seg in segments:
        if seg.get("category_id") not in id_map:
            raise ValueError(
                f"{json_file}: segment id {seg.get('id')!r} of image_id {image_id!r} has "
                f"category_id {seg.get('category_id')!r}, which is not in categories"
            )
        labels[seg_ids == seg["id"]] = id_map[seg["category_id"]]
    return labels


def separate_coco_semantic_from_panoptic(
    panoptic_json: str,
    panoptic_root: str,
    sem_seg_root: str,
    categories: Sequence[Mapping[str, Any]],
) -> int:
    """Write the "separated" semantic PNGs Panoptic FPN trains on, one per panoptic PNG.

    Label of a pixel: 0 if its segment is a thing, 1..N if a stuff category (N stuff
    categories, numbered in their order in ``categories``), 255 if no segment of
    ``segments_info`` covers it (or its category id is 0). Same semantics as Detectron2's
    ``datasets/prepare_panoptic_fpn.py``. Each PNG goes to ``sem_seg_root/<file_name>`` via a
    temporary file and a rename, so an interrupted run leaves no partial file.

    Args:
        panoptic_json: path to the COCO panoptic json.
        panoptic_root: directory of the RGB panoptic PNGs.
        sem_seg_root: output directory (created if needed).
        categories: dicts with "id" and "isthing", e.g. ``COCO_CATEGORIES``.

    Returns:
        The number of PNGs written.

    Raises:
        ValueError: malformed json or categories, missing panoptic PNGs, a PNG that is not
            RGB, or a segment whose category is not in ``categories``.
    """
    panoptic_json, panoptic_root, sem_seg_root = (
        os.fspath(p) for p in (panoptic_json, panoptic_root, sem_seg_root)
    )
    id_map = _separated_id_map(categories)
    anns = _read_panoptic_annotations(panoptic_json)
    missing = [
        a["file_name"]
        for a in anns
        if not os.path.isfile(os.path.join(panoptic_root, a["file_name"]))
    ]
    if missing:
        raise ValueError(
            f"{panoptic_json}: {len(missing)} of {len(anns)} panoptic PNGs are missing under "
            f"{panoptic_root!r}, e.g. {_shown(missing)}"
        )
    os.makedirs(sem_seg_root, exist_ok=True)
    logger.info("Writing %d semantic PNGs to %s", len(anns), sem_seg_root)
    for ann in tqdm(anns, desc="panoptic -> semantic", disable=None, leave=False):
        labels = _panoptic_to_semantic(
            os.path.join(panoptic_root, ann["file_name"]),
            ann["segments_info"],
            id_map,
            ann["image_id"],
            panoptic_json,
        )
        _write_png_atomic(os.path.join(sem_seg_root, ann["file_name"]), labels)
    return len(anns)


# prefix: (image root, panoptic root, panoptic json, instances json, semantic root)
_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/annotations/instances_train2017.json",
        "coco/panoptic_stuff_train2017",
    ),
    "coco_2017_val_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/annotations/instances_val2017.json",
        "coco/panoptic_stuff_val2017",
    ),
    "coco_2017_val_100_panoptic": (
        "coco/val2017",
        "coco/panoptic_val2017_100",
        "coco/annotations/panoptic_val2017_100.json",
        "coco/annotations/instances_val2017_100.json",
        "coco/panoptic_stuff_val2017_100",
    ),
}


def register_all_coco_panoptic(root: str) -> None:
    """Register Detectron2's COCO panoptic names under ``root``, touching no file.

    For each prefix ("coco_2017_train_panoptic", "coco_2017_val_panoptic",
    "coco_2017_val_100_panoptic"): ``<prefix>_separated`` and ``<prefix>_stuffonly``
    (separated metadata) and ``<prefix>`` (standard metadata).
    """
    root = os.fspath(root)
    for prefix, paths in _PREDEFINED_SPLITS_COCO_PANOPTIC.items():
        image_root, panoptic_root, panoptic_json, instances_json, semantic_root = (
            os.path.join(root, p) for p in paths
        )
        register_coco_panoptic_separated(
            prefix,
            _get_builtin_metadata("coco_panoptic_separated"),
            image_root,
            panoptic_root,
            panoptic_json,
            semantic_root,
            instances_json,
        )
        register_coco_panoptic(
            prefix,
            _get_builtin_metadata("coco_panoptic_standard"),
            image_root,
            panoptic_root,
            panoptic_json,
            instances_json,
        )
