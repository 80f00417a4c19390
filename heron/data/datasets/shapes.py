"""A small synthetic COCO-format dataset of colored shapes, generated deterministically.

Every image holds one to `max_shapes` flat-colored shapes (circle, square, triangle, 5-point
star, ellipse) on a textured background. Each shape is a polygon in absolute pixels
(circles and ellipses with 32 vertices); its mask is that polygon rasterized by pycocotools,
the same rasterizer the loaders use, and the shape's pixels are painted exactly where the
mask is set. So masks, boxes and polygons agree with the pixels (up to JPEG noise).

Occlusion: shapes never overlap. A placement whose mask, grown by a one-pixel margin,
touches an earlier shape is rejected and redrawn, so every annotation is fully visible and
its polygon is the whole visible region. Shapes stay at least one pixel inside the image.

Annotations (`<split>/annotations.json`, COCO instances format):
    bbox: XYWH float, the polygon's vertex bounds; area: the polygon's (shoelace) area;
    iscrowd 0; `color`: the [r, g, b] the shape was painted with (an extra field).
    Every annotation has `keypoints` (K = 3) and `num_keypoints`, so datasets mix no
    instances with and without keypoints: for triangles they are its corners "top", "left",
    "right" with v = 2; for other shapes all zeros. Keypoints are stored 0.5 pixel less
    than the corner, because COCO keypoints are pixel indices and the COCO loader adds 0.5.

Panoptic variant (`panoptic=True`): the background is split into 2 or 3 horizontal "stuff"
bands with wavy borders ("sky" on top, optionally "water", "ground" at the bottom), each with
its own texture. Also written per image:
    `<split>/semantic/<id>.png`: uint8, value = category_id - 1, i.e. an index into
    `get_shapes_metadata()["stuff_classes"]`, which lists the 5 thing classes then the 3 stuff
    classes (every pixel is labeled; 255 would be ignore but is never used).
    `<split>/panoptic/<id>.png`: RGB, segment id = R + 256 * G + 256**2 * B; stuff segments
    have id = 1000 * category_id, the k-th shape (1-based) id = 1000 * category_id + k.
    `<split>/panoptic.json`: COCO panoptic format; segment bbox/area from its pixels.

Category ids: things 1-5, stuff 6-8 (`SHAPES_CATEGORIES`). Image ids run from 1 per split.
Random draws come from a numpy generator seeded with (seed, crc32(split), image index), so
the same arguments give the same bytes, and "train" and "val" differ for one seed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_KEYPOINT_NAMES",
    "generate_shapes_dataset",
    "get_shapes_metadata",
    "get_shapes_panoptic_metadata",
    "register_shapes",
]

_VERSION = 1
_NUM_CIRCLE_VERTICES = 32

SHAPES_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 130, 200]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [60, 180, 75]},
    {"id": 4, "name": "star", "isthing": 1, "color": [255, 225, 25]},
    {"id": 5, "name": "ellipse", "isthing": 1, "color": [145, 30, 180]},
    {"id": 6, "name": "sky", "isthing": 0, "color": [135, 206, 235]},
    {"id": 7, "name": "ground", "isthing": 0, "color": [139, 101, 60]},
    {"id": 8, "name": "water", "isthing": 0, "color": [30, 90, 140]},
]
SHAPES_KEYPOINT_NAMES: tuple[str, ...] = ("top", "left", "right")
_TRIANGLE_ID = 3
_THINGS = [c for c in SHAPES_CATEGORIES if c["isthing"]]
_STUFF = {c["name"]: c for c in SHAPES_CATEGORIES if not c["isthing"]}


def get_shapes_metadata() -> dict[str, Any]:
    """Return the metadata of the shapes dataset (class names, colors, keypoint rules)."""
    return {
        "thing_classes": [c["name"] for c in _THINGS],
        "thing_colors": [list(c["color"]) for c in _THINGS],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(_THINGS)},
        "keypoint_names": list(SHAPES_KEYPOINT_NAMES),
        "keypoint_flip_map": [("left", "right")],
        "keypoint_connection_rules": [
            ("top", "left", (255, 0, 0)),
            ("left", "right", (0, 255, 0)),
            ("right", "top", (0, 0, 255)),
        ],
        # Semantic labels index this list: things then stuff (label = category_id - 1).
        "stuff_classes": [c["name"] for c in SHAPES_CATEGORIES],
        "stuff_colors": [list(c["color"]) for c in SHAPES_CATEGORIES],
    }


# ---------------------------------------------------------------- geometry


def _unit_polygon(name: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Return a shape's vertices (V, 2) around the origin with unit outer radius, and the
    rotation range in radians allowed for it."""
    if name in ("circle", "ellipse"):
        t = np.arange(_NUM_CIRCLE_VERTICES) * (2 * np.pi / _NUM_CIRCLE_VERTICES)
        ry = 1.0 if name == "circle" else rng.uniform(0.45, 0.75)
        return np.stack([np.cos(t), ry * np.sin(t)], axis=1), np.pi
    if name == "square":
        s = 1 / np.sqrt(2)
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]]), np.pi / 2
    if name == "triangle":
        # Apex up (image y grows downward), then bottom-left, bottom-right: the keypoint order.
        t = np.deg2rad([-90.0, 150.0, 30.0])
        # Small rotations only, so "left"/"right" stay meaningful for the flip map.
        return np.stack([np.cos(t), np.sin(t)], axis=1), np.deg2rad(15.0)
    if name == "star":
        t = -np.pi / 2 + np.arange(10) * (np.pi / 5)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1), np.pi
    raise ValueError(f"unknown shape name {name!r}")


def _polygon_area(xy: np.ndarray) -> float:
    """Shoelace area of a simple polygon given as (V, 2) vertices."""
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _rasterize(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterize one polygon (V, 2) with pycocotools into a (height, width) bool mask."""
    rles = mask_util.frPyObjects([xy.reshape(-1).tolist()], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _grow(mask: np.ndarray) -> np.ndarray:
    """Dilate a bool mask by one pixel (8-neighborhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _random_color(rng: np.random.Generator) -> list[int]:
    """Draw a saturated, bright RGB color, so shapes stand out from the duller background."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), int(sat * 255), int(val * 255)))
    return [int(v) for v in rgb.convert("RGB").getpixel((0, 0))]


def _place_shapes(
    rng: np.random.Generator, height: int, width: int, max_shapes: int
) -> list[dict[str, Any]]:
    """Draw non-overlapping shapes; return dicts with category_id, polygon (V, 2), mask, color."""
    occupied = np.zeros((height, width), dtype=bool)
    shapes: list[dict[str, Any]] = []
    target = int(rng.integers(1, max_shapes + 1))
    side = min(height, width)
    for _ in range(target * 20):
        if len(shapes) == target:
            break
        cat = _THINGS[int(rng.integers(len(_THINGS)))]
        unit, max_rot = _unit_polygon(cat["name"], rng)
        angle = rng.uniform(-max_rot, max_rot)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        xy = unit @ rot.T * rng.uniform(0.1, 0.25) * side
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        # Keep every vertex at least one pixel inside the image.
        cx_range = (1 - lo[0], width - 1 - hi[0])
        cy_range = (1 - lo[1], height - 1 - hi[1])
        if cx_range[0] >= cx_range[1] or cy_range[0] >= cy_range[1]:
            continue
        xy = xy + [rng.uniform(*cx_range), rng.uniform(*cy_range)]
        mask = _rasterize(xy, height, width)
        if not mask.any() or (_grow(mask) & occupied).any():
            continue
        occupied |= mask
        shapes.append(
            {"category_id": cat["id"], "polygon": xy, "mask": mask, "color": _random_color(rng)}
        )
    return shapes


# ---------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Return (H, W, 3) float smooth noise in [-1, 1]: a coarse random grid upsampled."""
    grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    big = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1.0


def _gradient_background(
    rng: np.random.Generator, height: int, width: int, tint: np.ndarray | None = None
) -> np.ndarray:
    """Return an (H, W, 3) float image: a random linear gradient, smooth noise, fine noise."""
    if tint is None:
        tint = rng.uniform(70, 170, size=3)
    c0 = (tint + rng.uniform(-30, 30, size=3)).astype(np.float32)
    c1 = (tint + rng.uniform(-30, 30, size=3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (np.cos(angle) * xx / max(width, 1) + np.sin(angle) * yy / max(height, 1) + 1) / 2
    img = c0 + (c1 - c0) * t[..., None]
    img = img + 15 * _smooth_noise(rng, height, width, cells=int(rng.integers(3, 7)))
    return img + 6 * rng.standard_normal(img.shape, dtype=np.float32)


def _stuff_background(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the image into wavy horizontal stuff bands.

    Returns:
        image: (H, W, 3) float, a texture per band.
        label: (H, W) int64 stuff category id per pixel.
    """
    names = ["sky", "water", "ground"] if rng.uniform() < 0.5 else ["sky", "ground"]
    cuts = np.sort(rng.uniform(0.3, 0.7, size=len(names) - 1)) * height
    if len(cuts) == 2:  # keep the middle band at least a fifth of the image tall
        cuts[1] = max(cuts[1], cuts[0] + 0.2 * height)
    xx = np.arange(width, dtype=np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]
    label = np.full((height, width), _STUFF[names[0]]["id"], dtype=np.int64)
    for cut, name in zip(cuts, names[1:]):
        wave = cut + 0.04 * height * np.sin(
            rng.uniform(1, 4) * 2 * np.pi * xx / width + rng.uniform(0, 6.3)
        )
        label[yy >= wave[None, :]] = _STUFF[name]["id"]
    image = np.zeros((height, width, 3), dtype=np.float32)
    for name in names:
        tint = np.array(_STUFF[name]["color"], dtype=np.float64) * rng.uniform(0.8, 1.1)
        texture = _gradient_background(rng, height, width, tint=tint)
        if name == "water":  # horizontal ripples
            texture = texture + 12 * np.sin(yy * rng.uniform(0.8, 1.6))[..., None]
        elif name == "ground":  # grainier
            texture = texture + 12 * rng.standard_normal(texture.shape, dtype=np.float32)
        where = label == _STUFF[name]["id"]
        image[where] = texture[where]
    return image, label


# ---------------------------------------------------------------- one image


def _render_image(
    rng: np.random.Generator, height: int, width: int, panoptic: bool, max_shapes: int
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray | None]:
    """Draw one image: (H, W, 3) uint8 RGB, its shapes, and (H, W) stuff ids if panoptic."""
    if panoptic:
        background, stuff = _stuff_background(rng, height, width)
    else:
        background, stuff = _gradient_background(rng, height, width), None
    image = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    shapes = _place_shapes(rng, height, width, max_shapes)
    for shape in shapes:
        image[shape["mask"]] = shape["color"]
    return image, shapes, stuff


def _instance_annotation(shape: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """Build the COCO instance annotation of one shape."""
    xy = shape["polygon"]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    keypoints = [0.0] * (3 * len(SHAPES_KEYPOINT_NAMES))
    if shape["category_id"] == _TRIANGLE_ID:
        # COCO keypoints are pixel indices; the loader adds 0.5, landing on the corner.
        keypoints = [v for x, y in xy for v in (float(x) - 0.5, float(y) - 0.5, 2.0)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": shape["category_id"],
        "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
        "area": _polygon_area(xy),
        "iscrowd": 0,
        "segmentation": [[float(v) for v in xy.reshape(-1)]],
        "keypoints": keypoints,
        "num_keypoints": int(sum(v > 0 for v in keypoints[2::3])),
        "color": list(shape["color"]),
    }


def _panoptic_maps(
    shapes: list[dict[str, Any]], stuff: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Return the (H, W, 3) uint8 panoptic PNG, (H, W) uint8 semantic labels, segments_info."""
    category = stuff.copy()
    seg_ids = stuff * 1000
    for k, shape in enumerate(shapes, start=1):
        category[shape["mask"]] = shape["category_id"]
        seg_ids[shape["mask"]] = 1000 * shape["category_id"] + k
    segments = []
    for seg_id in np.unique(seg_ids):
        ys, xs = np.nonzero(seg_ids == seg_id)
        x0, y0 = int(xs.min()), int(ys.min())
        cat_id = int(seg_id) // 1000
        bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        segments.append(
            {"id": int(seg_id), "category_id": cat_id, "iscrowd": 0, "bbox": bbox, "area": len(xs)}
        )
    rgb = np.stack([seg_ids % 256, seg_ids // 256 % 256, seg_ids // 65536], axis=-1)
    return rgb.astype(np.uint8), (category - 1).astype(np.uint8), segments


# ---------------------------------------------------------------- writing


def _atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, sort_keys=True).encode()))


def _write_image(path: str, array: np.ndarray, fmt: str) -> None:
    options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
    _atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt, **options))


def _summary(split_dir: str, manifest: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    out = {
        "split_dir": split_dir,
        "image_root": os.path.join(split_dir, "images"),
        "json_file": os.path.join(split_dir, "annotations.json"),
        **counts,
    }
    if manifest["panoptic"]:
        out["panoptic_root"] = os.path.join(split_dir, "panoptic")
        out["panoptic_json"] = os.path.join(split_dir, "panoptic.json")
        out["sem_seg_root"] = os.path.join(split_dir, "semantic")
    return out


def _check_args(num_images: int, image_size: tuple[int, int], split: str, max_shapes: int) -> None:
    if not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ValueError(f"image_size must be (height, width), both >= 16, got {image_size!r}")
    if not split or os.sep in split or split.startswith("."):
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    if not isinstance(max_shapes, int) or max_shapes < 1:
        raise ValueError(f"max_shapes must be a positive int, got {max_shapes!r}")


def generate_shapes_dataset(
    output_dir: str,
    *,
    num_images: int = 100,
    image_size: tuple[int, int] = (256, 256),
    seed: int = 0,
    split: str = "train",
    panoptic: bool = False,
    max_shapes: int = 4,
) -> dict[str, Any]:
    """Generate (or reuse) the shapes dataset split under `output_dir/<split>/`.

    Writes `images/<id>.jpg` (quality 95), `annotations.json` (COCO instances) and, if
    `panoptic`, `panoptic/<id>.png`, `semantic/<id>.png` and `panoptic.json`; see the
    module docstring for the formats. A `manifest.json` records the arguments and format
    version: a later call with the same ones, and all files present, writes nothing.

    Args:
        output_dir: root folder; the split gets its own subfolder.
        num_images: number of images.
        image_size: (height, width) of every image.
        seed: random seed; the same arguments give byte-identical annotations and images.
        split: subfolder name, also mixed into the seed.
        panoptic: also draw stuff regions and write semantic and panoptic labels.
        max_shapes: most shapes per image (each image has 1 to max_shapes).

    Returns:
        dict with split_dir, image_root, json_file (and panoptic_root, panoptic_json,
        sem_seg_root if panoptic), num_images, num_annotations, and reused (bool).
    """
    height, width = (int(v) for v in image_size)
    _check_args(num_images, (height, width), split, max_shapes)
    split_dir = os.path.join(os.fspath(output_dir), split)
    manifest = {
        "version": _VERSION,
        "num_images": num_images,
        "image_size": [height, width],
        "seed": int(seed),
        "split": split,
        "panoptic": bool(panoptic),
        "max_shapes": max_shapes,
    }
    reused = _load_manifest(split_dir, manifest)
    if reused is not None:
        return _summary(split_dir, manifest, {**reused, "reused": True})
    counts = _generate(split_dir, manifest)
    _write_json(os.path.join(split_dir, "manifest.json"), {**manifest, "counts": counts})
    return _summary(split_dir, manifest, {**counts, "reused": False})


def _load_manifest(split_dir: str, manifest: dict[str, Any]) -> dict[str, int] | None:
    """Return the stored counts if `split_dir` already holds this exact dataset, else None."""
    path = os.path.join(split_dir, "manifest.json")
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    counts = stored.pop("counts", None)
    if stored != manifest or not isinstance(counts, dict):
        return None
    names = ["annotations.json"] + [
        os.path.join("images", f"{i:06d}.jpg") for i in range(1, manifest["num_images"] + 1)
    ]
    if manifest["panoptic"]:
        names.append("panoptic.json")
        for i in range(1, manifest["num_images"] + 1):
            names += [os.path.join(d, f"{i:06d}.png") for d in ("panoptic", "semantic")]
    if not all(os.path.isfile(os.path.join(split_dir, n)) for n in names):
        return None
    return counts


def _generate(split_dir: str, manifest: dict[str, Any]) -> dict[str, int]:
    """Draw and write every image and the annotation files; return the counts."""
    height, width = manifest["image_size"]
    split_key = zlib.crc32(manifest["split"].encode())
    images, annotations, pan_annotations = [], [], []
    for image_id in range(1, manifest["num_images"] + 1):
        rng = np.random.default_rng([manifest["seed"], split_key, image_id])
        image, shapes, stuff = _render_image(
            rng, height, width, manifest["panoptic"], manifest["max_shapes"]
        )
        name = f"{image_id:06d}"
        _write_image(os.path.join(split_dir, "images", name + ".jpg"), image, "JPEG")
        images.append(
            {"id": image_id, "file_name": name + ".jpg", "height": height, "width": width}
        )
        for shape in shapes:
            annotations.append(_instance_annotation(shape, len(annotations) + 1, image_id))
        if stuff is not None:
            rgb, semantic, segments = _panoptic_maps(shapes, stuff)
            _write_image(os.path.join(split_dir, "panoptic", name + ".png"), rgb, "PNG")
            _write_image(os.path.join(split_dir, "semantic", name + ".png"), semantic, "PNG")
            pan_annotations.append(
                {"image_id": image_id, "file_name": name + ".png", "segments_info": segments}
            )
    thing_categories = [{"id": c["id"], "name": c["name"]} for c in _THINGS]
    for c in thing_categories:
        if c["id"] == _TRIANGLE_ID:
            c["keypoints"] = list(SHAPES_KEYPOINT_NAMES)
            c["skeleton"] = [[1, 2], [2, 3], [3, 1]]  # 1-based, as in COCO
    coco = {"images": images, "annotations": annotations, "categories": thing_categories}
    _write_json(os.path.join(split_dir, "annotations.json"), coco)
    if manifest["panoptic"]:
        categories = [dict(c) for c in SHAPES_CATEGORIES]
        _write_json(
            os.path.join(split_dir, "panoptic.json"),
            {"images": images, "annotations": pan_annotations, "categories": categories},
        )
    return {"num_images": len(images), "num_annotations": len(annotations)}


# ---------------------------------------------------------------- registration

_SPLITS = {"shapes_train": ("train", 200, 0), "shapes_val": ("val", 50, 1)}
_PANOPTIC_SPLITS = {
    "shapes_panoptic_train": ("panoptic_train", 200, 0),
    "shapes_panoptic_val": ("panoptic_val", 50, 1),
}


def get_shapes_panoptic_metadata(separated: bool = False) -> dict[str, Any]:
    """Metadata of the panoptic shapes datasets.

    Standard form: ``stuff_classes`` lists all 8 categories and both id maps index them
    (Detectron2's standard COCO panoptic convention). Separated form (Panoptic FPN's
    semantic branch): label 0 is "things" and the 3 stuff categories are 1..3.
    """
    meta = get_shapes_metadata()
    stuff = [c for c in SHAPES_CATEGORIES if not c["isthing"]]
    if separated:
        meta["stuff_classes"] = ["things"] + [c["name"] for c in stuff]
        meta["stuff_colors"] = [[82, 18, 128]] + [list(c["color"]) for c in stuff]
        meta["stuff_dataset_id_to_contiguous_id"] = {
            0: 0,
            **{c["id"]: i + 1 for i, c in enumerate(stuff)},
        }
    else:
        meta["stuff_dataset_id_to_contiguous_id"] = {
            c["id"]: i for i, c in enumerate(SHAPES_CATEGORIES)
        }
    return meta


def register_shapes(root: str | None = None) -> None:
    """Register the shapes datasets in the catalogs; nothing is generated here.

    Names: "shapes_train" (200 images) and "shapes_val" (50), COCO instances;
    "shapes_panoptic_train"/"shapes_panoptic_val" (stuff backgrounds, standard panoptic
    form) and their "_separated" forms (instances + Panoptic FPN's semantic labels). The
    first `DatasetCatalog.get(name)` generates the split (or reuses it) under
    `<root>/shapes/`.

    Args:
        root: datasets folder; default $HERON_DATASETS, else "./datasets".
    """
    from heron.data.catalog import DatasetCatalog, MetadataCatalog

    if root is None:
        root = os.environ.get("HERON_DATASETS", "datasets")
    base = os.path.join(os.path.expanduser(root), "shapes")
    meta = get_shapes_metadata()
    meta.pop("thing_dataset_id_to_contiguous_id")  # load_coco_json sets it
    for name, (split, num_images, seed) in _SPLITS.items():
        DatasetCatalog.register(name, _make_loader(base, name, split, num_images, seed))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(base, split, "annotations.json"),
            image_root=os.path.join(base, split, "images"),
            evaluator_type="coco",
            **meta,
        )
    for name, (split, num_images, seed) in _PANOPTIC_SPLITS.items():
        split_dir = os.path.join(base, split)
        paths = {
            "image_root": os.path.join(split_dir, "images"),
            "panoptic_root": os.path.join(split_dir, "panoptic"),
            "panoptic_json": os.path.join(split_dir, "panoptic.json"),
            "json_file": os.path.join(split_dir, "annotations.json"),
        }
        args = (base, split, num_images, seed)
        DatasetCatalog.register(name, _make_panoptic_loader(*args, separated=False))
        MetadataCatalog.get(name).set(
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            label_divisor=1000,
            **paths,
            **get_shapes_panoptic_metadata(separated=False),
        )
        sep_name = name + "_separated"
        DatasetCatalog.register(sep_name, _make_panoptic_loader(*args, separated=True))
        MetadataCatalog.get(sep_name).set(
            evaluator_type="coco_panoptic_seg",
            ignore_label=255,
            sem_seg_root=os.path.join(split_dir, "semantic_separated"),
            **paths,
            **get_shapes_panoptic_metadata(separated=True),
        )


def _make_loader(
    base: str, name: str, split: str, num_images: int, seed: int
) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        from heron.data.datasets.coco import load_coco_json

        info = generate_shapes_dataset(base, num_images=num_images, seed=seed, split=split)
        return load_coco_json(info["json_file"], info["image_root"], name)

    return load


def _make_panoptic_loader(
    base: str, split: str, num_images: int, seed: int, *, separated: bool
) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        from heron.data.datasets import coco_panoptic
        from heron.data.datasets.coco import load_coco_json
        from heron.data.datasets.sem_seg import load_sem_seg

        info = generate_shapes_dataset(
            base, num_images=num_images, seed=seed, split=split, panoptic=True
        )
        if not separated:
            meta = get_shapes_panoptic_metadata(separated=False)
            return coco_panoptic.load_coco_panoptic_json(
                info["panoptic_json"], info["image_root"], info["panoptic_root"], meta
            )
        sem_root = os.path.join(info["split_dir"], "semantic_separated")
        expected = [f"{i:06d}.png" for i in range(1, num_images + 1)]
        if not all(os.path.isfile(os.path.join(sem_root, f)) for f in expected):
            coco_panoptic.separate_coco_semantic_from_panoptic(
                info["panoptic_json"], info["panoptic_root"], sem_root, SHAPES_CATEGORIES
            )
        return coco_panoptic.merge_to_panoptic(
            load_coco_json(info["json_file"], info["image_root"], split),
            load_sem_seg(sem_root, info["image_root"]),
        )

    return load
