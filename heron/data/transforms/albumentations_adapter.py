"""Run an Albumentations pipeline on a Heron record: image, instance annotations and sem_seg.

Albumentations is an optional extra (``pip install 'heron[albumentations]'``); it is imported
only when an :class:`AlbumentationsAdapter` is built.

Coordinates. Heron, like Detectron2, uses continuous coordinates: pixel ``i`` covers
``[i, i + 1)``, so a horizontal flip maps ``x`` to ``W - x``. Albumentations treats boxes the
same way but keypoints as pixel indices (its flip maps ``x`` to ``W - 1 - x``). Keypoints and
polygon vertices are therefore shifted by -0.5 before the pipeline and by +0.5 after, which
makes flips, 90-degree rotations, rotations, affine warps, crops and pads agree with the
image. Albumentations' keypoint resize scales index coordinates (``x * s``), so after a resize
by ``s`` points sit ``0.5 * |1 - s|`` pixels away from where the image put them; that is
Albumentations' own behaviour and is not corrected here. Albumentations computes in float32,
so transformed coordinates carry float32 precision.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from heron.structures.boxes import BoxMode

__all__ = ["AlbumentationsAdapter"]

_INSTALL_HINT = "pip install 'heron[albumentations]'"

# Transforms that map straight lines to straight lines (or leave geometry alone), so a polygon
# is carried exactly by its vertices. Anything else that moves pixels (ElasticTransform,
# GridDistortion, OpticalDistortion, PiecewiseAffine, ThinPlateSpline, RandomGridShuffle, ...)
# bends or tears polygon edges.
_POLYGON_SAFE = frozenset(
    {
        "Affine",
        "AtLeastOneBBoxRandomCrop",
        "BBoxSafeRandomCrop",
        "CenterCrop",
        "CoarseDropout",
        "ConstrainedCoarseDropout",
        "Crop",
        "CropAndPad",
        "CropNonEmptyMaskIfExists",
        "D4",
        "Erasing",
        "GridDropout",
        "HorizontalFlip",
        "LongestMaxSize",
        "MaskDropout",
        "NoOp",
        "Pad",
        "PadIfNeeded",
        "Perspective",
        "PixelDropout",
        "RandomCrop",
        "RandomCropFromBorders",
        "RandomCropNearBBox",
        "RandomResizedCrop",
        "RandomRotate90",
        "RandomScale",
        "RandomSizedBBoxSafeCrop",
        "RandomSizedCrop",
        "Resize",
        "Rotate",
        "SafeRotate",
        "ShiftScaleRotate",
        "SmallestMaxSize",
        "SquareSymmetry",
        "Transpose",
        "VerticalFlip",
        "XYMasking",
    }
)

_SUPPORTED_BOX_MODES = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
_REPLACED_KEYS = ("bbox", "bbox_mode", "segmentation", "keypoints")


def _import_albumentations() -> Any:
    try:
        import albumentations
    except ImportError as e:
        raise ImportError(
            f"AlbumentationsAdapter needs the albumentations package: {_INSTALL_HINT}"
        ) from e
    return albumentations


@dataclass
class _Parsed:
    """One annotation, validated: box (4,) XYXY_ABS clipped to the image, and its targets."""

    box: np.ndarray
    polygons: list[np.ndarray] | None  # each (K, 2)
    mask: np.ndarray | None  # (H, W) uint8
    keypoints: np.ndarray | None  # (K, 3)


@dataclass
class _Layout:
    """Where each annotation's points sit in the (P, 2) array carried as keypoints."""

    probe: int | None = None  # 3 probe points, present when any annotation has keypoints
    corner: int | None = None  # 4 box corners per annotation, when boxes follow their corners
    polygon_bounds: dict[int, np.ndarray] = field(default_factory=dict)  # polygon j: [b[j], b[j+1])
    keypoint_start: dict[int, int] = field(default_factory=dict)
    mask_owners: list[int] = field(default_factory=list)  # annotation of each carried mask


def _leaf_transforms(transforms: Sequence[Any]) -> Iterator[Any]:
    """Yield the transforms of a pipeline, descending into OneOf/SomeOf/Sequential."""
    for t in transforms:
        children = getattr(t, "transforms", None)
        if children is not None:
            yield from _leaf_transforms(children)
        else:
            yield t


def _parse_box(i: int, anno: dict, image_size: tuple[int, int]) -> np.ndarray:
    if "bbox" not in anno or "bbox_mode" not in anno:
        raise ValueError(f"annotation {i}: fields 'bbox' and 'bbox_mode' are required")
    try:
        mode = BoxMode(anno["bbox_mode"])
    except ValueError as e:
        raise ValueError(
            f"annotation {i} field 'bbox_mode': unknown mode {anno['bbox_mode']!r}"
        ) from e
    if mode not in _SUPPORTED_BOX_MODES:
        raise ValueError(
            f"annotation {i} field 'bbox_mode': expected XYXY_ABS or XYWH_ABS, got {mode.name}"
        )
    box = np.asarray(anno["bbox"], dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(
            f"annotation {i} field 'bbox': expected 4 finite numbers, got {anno['bbox']!r}"
        )
    box = np.asarray(BoxMode.convert(box, mode, BoxMode.XYXY_ABS), dtype=np.float64)
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(
            f"annotation {i} field 'bbox': negative width or height in {anno['bbox']!r}"
        )
    h, w = image_size
    return np.clip(box, 0.0, [w, h, w, h])


def _parse_segmentation(
    i: int, segm: Any, image_size: tuple[int, int]
) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """(polygons, None) for a polygon list, (None, mask) for an RLE dict or an (H, W) array."""
    if isinstance(segm, list):
        polygons = []
        for j, poly in enumerate(segm):
            p = np.asarray(poly, dtype=np.float64).reshape(-1)
            if len(p) < 6 or len(p) % 2 or not np.isfinite(p).all():
                raise ValueError(
                    f"annotation {i} field 'segmentation': polygon {j} must be a flat list of "
                    f"at least 3 finite (x, y) pairs, got {len(p)} numbers"
                )
            polygons.append(p.reshape(-1, 2))
        return polygons, None
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(
                f"annotation {i} field 'segmentation': an RLE dict needs 'counts' and 'size', "
                f"got keys {sorted(segm)}"
            )
        if tuple(segm["size"]) != tuple(image_size):
            raise ValueError(
                f"annotation {i} field 'segmentation': RLE size {tuple(segm['size'])} differs "
                f"from the image (height, width) {tuple(image_size)}"
            )
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *image_size)
        return None, np.ascontiguousarray(mask_util.decode(segm), dtype=np.uint8)
    if isinstance(segm, np.ndarray) and segm.shape == tuple(image_size):
        return None, np.ascontiguousarray(segm, dtype=np.uint8)
    got = segm.shape if isinstance(segm, np.ndarray) else type(segm).__name__
    raise ValueError(
        f"annotation {i} field 'segmentation': expected a list of polygons, an RLE dict or an "
        f"(H, W) = {tuple(image_size)} array, got {got}"
    )


def _parse_annotation(i: int, anno: dict, image_size: tuple[int, int]) -> _Parsed:
    if not isinstance(anno, dict):
        raise ValueError(f"annotation {i}: expected a dict, got {type(anno).__name__}")
    box = _parse_box(i, anno, image_size)
    polygons, mask = None, None
    if "segmentation" in anno:
        polygons, mask = _parse_segmentation(i, anno["segmentation"], image_size)
    keypoints = None
    if "keypoints" in anno:
        kpts = np.asarray(anno["keypoints"], dtype=np.float64).reshape(-1)
        if len(kpts) % 3 or not np.isfinite(kpts).all():
            raise ValueError(
                f"annotation {i} field 'keypoints': expected finite [x, y, v] * K, "
                f"got {len(kpts)} numbers"
            )
        keypoints = kpts.reshape(-1, 3)
    return _Parsed(box, polygons, mask, keypoints)


def _clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip a (K, 2) polygon to [0, width] x [0, height] (Sutherland-Hodgman).

    Returns:
        (M, 2) float64 vertices; M == 0 when the polygon has no area inside the rectangle.
    """
    # Half-planes as (axis, bound, sign): a point is inside when sign * (p[axis] - bound) >= 0.
    for axis, bound, sign in ((0, 0.0, 1.0), (0, width, -1.0), (1, 0.0, 1.0), (1, height, -1.0)):
        if len(points) == 0:
            break
        clipped = []
        for k in range(len(points)):
            cur, prev = points[k], points[k - 1]
            d_cur = sign * (cur[axis] - bound)
            d_prev = sign * (prev[axis] - bound)
            if (d_cur >= 0) != (d_prev >= 0):  # edge prev -> cur crosses the boundary line
                cross = prev + (d_prev / (d_prev - d_cur)) * (cur - prev)
                cross[axis] = bound  # exactly on the line, whatever the rounding above
                clipped.append(cross)
            if d_cur >= 0:
                clipped.append(cur)
        points = np.asarray(clipped, dtype=np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    twice_area = np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))
    if len(points) < 3 or twice_area == 0:
        return np.zeros((0, 2), dtype=np.float64)
    return points


def _encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an (H, W) mask."""
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


class AlbumentationsAdapter:
    """Apply an Albumentations pipeline to an image and its Detectron2-style annotations.

    Boxes go through Albumentations as "pascal_voc" boxes labelled with their annotation's
    index, so the annotations whose boxes Albumentations drops (cropped away, or below
    ``min_visibility`` / ``min_area``) are dropped with them; boxes of zero width or height
    after clipping to the image are dropped the same way. The returned box is the enclosing
    box of the box's four transformed corners, clipped to the image (what Albumentations
    computes, without the float32 round-off of its normalized boxes); after a transform that
    bends lines, or a rotation with ``rotate_method="ellipse"``, it is Albumentations' box.
    Keypoints and polygon vertices go through as keypoints, all of them kept; RLE or array
    masks and ``sem_seg`` go through as masks (nearest-neighbour interpolation). When only
    pixel-level transforms ran, the annotations come back with their input geometry, bit for
    bit.

    Polygons are carried by their vertices, which is exact only for transforms that keep
    straight lines straight. A pipeline holding any other transform that moves pixels
    (ElasticTransform, GridDistortion, OpticalDistortion, PiecewiseAffine, ThinPlateSpline,
    RandomGridShuffle, an unknown custom transform, ...) raises ``ValueError`` naming it when
    a record has polygon segmentations; convert such records to RLE masks first.

    When the transformed image is a mirror image (an odd number of flips, Transpose, ...;
    detected from the turning direction of three probe points carried with the keypoints),
    left and right keypoints are swapped by ``keypoint_hflip_indices``, as Detectron2 does
    after a horizontal flip. Detectron2 swaps only for ``HFlipTransform``; a vertical flip,
    which also mirrors, swaps here too.
    """

    def __init__(
        self,
        transform: Any,
        *,
        min_visibility: float = 0.0,
        min_area: float = 0.0,
        keypoint_hflip_indices: Sequence[int] | np.ndarray | None = None,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            transform: an ``A.Compose``, one albumentations transform, or a list of them. A
                Compose's own bbox/keypoint settings and probability are replaced by the
                adapter's; its seed is kept unless ``seed`` is given.
            min_visibility: drop an annotation when less than this fraction of its box area
                remains (Albumentations' ``BboxParams.min_visibility``).
            min_area: drop an annotation when its transformed box has a smaller area, in
                pixels (``BboxParams.min_area``).
            keypoint_hflip_indices: (K,) index of each keypoint's mirror image, see
                :func:`heron.data.detection_utils.create_keypoint_hflip_indices`; required
                when keypoints are mirrored.
            seed: seed of the pipeline's random generator (Albumentations keeps its own,
                independent of ``np.random``); None draws a fresh one.
        """
        alb = _import_albumentations()
        if isinstance(transform, alb.Compose):
            if seed is None:
                seed = transform.seed
            transforms = list(transform.transforms)
        elif isinstance(transform, (list, tuple)):
            transforms = list(transform)
        else:
            transforms = [transform]
        for i, t in enumerate(transforms):
            if not isinstance(t, (alb.BasicTransform, alb.BaseCompose)):
                raise TypeError(
                    f"transform: item {i} must be an albumentations transform, "
                    f"got {type(t).__name__}"
                )
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {min_area}")
        leaves = list(_leaf_transforms(transforms))
        pixel_only = [isinstance(t, alb.ImageOnlyTransform) for t in leaves]
        self._pixel_only_names = {type(t).__name__ for t, p in zip(leaves, pixel_only) if p}
        self._polygon_unsafe = sorted(
            {
                type(t).__name__
                for t, p in zip(leaves, pixel_only)
                if not p and type(t).__name__ not in _POLYGON_SAFE
            }
        )
        # Boxes are re-derived from their transformed corners (exact where Albumentations'
        # float32 box arithmetic is not) unless a transform defines boxes another way.
        self._own_box_names = set(self._polygon_unsafe) | {
            type(t).__name__
            for t in leaves
            if getattr(t, "rotate_method", "largest_box") != "largest_box"
        }
        self.keypoint_hflip_indices = (
            None
            if keypoint_hflip_indices is None
            else np.asarray(keypoint_hflip_indices, dtype=np.int64)
        )
        with warnings.catch_warnings():
            # A pixel-only pipeline makes Albumentations warn that no transform uses boxes.
            warnings.filterwarnings("ignore", message="Got processor for", category=UserWarning)
            self.compose = self._build_compose(alb, transforms, min_visibility, min_area, seed)

    @staticmethod
    def _build_compose(
        alb: Any, transforms: list[Any], min_visibility: float, min_area: float, seed: int | None
    ) -> Any:
        return alb.Compose(
            transforms,
            bbox_params=alb.BboxParams(
                format="pascal_voc",
                label_fields=["anno_idxs"],
                min_visibility=min_visibility,
                min_area=min_area,
                clip=True,
                filter_invalid_bboxes=True,
            ),
            keypoint_params=alb.KeypointParams(format="xy", remove_invisible=False),
            seed=seed,
            save_applied_params=True,
        )

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms)
        return f"AlbumentationsAdapter([{names}])"

    def __call__(
        self, image: np.ndarray, annotations: list[dict], sem_seg: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[dict], np.ndarray | None]:
        """Transform one record.

        Args:
            image: (H, W, C) uint8 image.
            annotations: Detectron2 dataset-dict annotations: "bbox" with an axis-aligned
                absolute "bbox_mode", optional "segmentation" (polygons as flat lists, a COCO
                RLE dict compressed or not, or an (H, W) array) and optional "keypoints"
                (flat [x, y, v] * K); other keys are copied through. Not modified.
            sem_seg: optional (H, W) integer semantic-segmentation map.

        Returns:
            image: (H', W', C) uint8 transformed image.
            annotations: the kept annotations, in input order, with "bbox" in XYXY_ABS,
                polygons clipped to the image (vanished ones removed), masks as compressed
                RLE dicts and keypoints as flat [x, y, v] * K lists (v = 0 and x = y = 0 for
                keypoints outside the image or invisible).
            sem_seg: (H', W') transformed map, or None.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
            raise ValueError(f"image must be an (H, W, C) uint8 array, got {got}")
        image_size = (image.shape[0], image.shape[1])
        if sem_seg is not None and (
            not isinstance(sem_seg, np.ndarray) or sem_seg.shape != image_size
        ):
            got = sem_seg.shape if isinstance(sem_seg, np.ndarray) else type(sem_seg).__name__
            raise ValueError(f"sem_seg must be an (H, W) = {image_size} array, got {got}")
        parsed = [_parse_annotation(i, a, image_size) for i, a in enumerate(annotations)]
        if self._polygon_unsafe and any(p.polygons is not None for p in parsed):
            raise ValueError(
                f"transforms {self._polygon_unsafe} do not keep straight lines straight, so "
                "polygon segmentations cannot follow them; use RLE masks for these records"
            )
        points, layout, inputs = self._pack(image, parsed, sem_seg)
        out = self.compose(**inputs)
        return self._unpack(out, annotations, parsed, points, layout, sem_seg)

    def _pack(
        self, image: np.ndarray, parsed: list[_Parsed], sem_seg: np.ndarray | None
    ) -> tuple[np.ndarray, _Layout, dict[str, Any]]:
        """Albumentations inputs, and the (P, 2) points carried as keypoints with their layout."""
        h, w = image.shape[:2]
        layout = _Layout()
        groups: list[np.ndarray] = []
        offset = 0
        if any(a.keypoints is not None for a in parsed):
            # A unit right angle at the image centre: its turning direction reveals mirroring.
            groups.append(np.array([[w / 2, h / 2], [w / 2 + 1, h / 2], [w / 2, h / 2 + 1]]))
            layout.probe, offset = offset, offset + 3
        if not self._own_box_names:
            groups += [a.box[[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2) for a in parsed]
            layout.corner, offset = offset, offset + 4 * len(parsed)
        for i, a in enumerate(parsed):
            if a.polygons is not None:
                groups += a.polygons
                sizes = [len(p) for p in a.polygons]
                layout.polygon_bounds[i] = np.cumsum([offset, *sizes])
                offset += sum(sizes)
            if a.keypoints is not None:
                groups.append(a.keypoints[:, :2])
                layout.keypoint_start[i], offset = offset, offset + len(a.keypoints)
        points = np.concatenate(groups, axis=0) if groups else np.zeros((0, 2))
        layout.mask_owners = [i for i, a in enumerate(parsed) if a.mask is not None]
        inputs: dict[str, Any] = {
            "image": image,
            "bboxes": np.array([a.box for a in parsed], dtype=np.float64).reshape(-1, 4),
            "anno_idxs": list(range(len(parsed))),
            "keypoints": points - 0.5,  # continuous -> Albumentations' pixel-index coordinates
        }
        if layout.mask_owners:
            inputs["masks"] = [parsed[i].mask for i in layout.mask_owners]
        if sem_seg is not None:
            inputs["mask"] = sem_seg
        return points, layout, inputs

    def _unpack(
        self,
        out: dict[str, Any],
        annotations: list[dict],
        parsed: list[_Parsed],
        points: np.ndarray,
        layout: _Layout,
        sem_seg: np.ndarray | None,
    ) -> tuple[np.ndarray, list[dict], np.ndarray | None]:
        kept = [round(float(v)) for v in out["anno_idxs"]]
        if len(set(kept)) != len(kept) or len(out["keypoints"]) != len(points):
            raise ValueError(
                "the pipeline changed the number of boxes or keypoints: reflecting border "
                "modes copy them (use border_mode=cv2.BORDER_CONSTANT) and distortions with "
                "keypoint_remapping_method='mask' can lose them (use 'direct')"
            )
        new_h, new_w = out["image"].shape[:2]
        moved = any(name not in self._pixel_only_names for name, _ in out["applied_transforms"])
        if moved:
            new_points = np.asarray(out["keypoints"], dtype=np.float64)[:, :2] + 0.5
            new_boxes = self._boxes(out, kept, new_points, layout, len(parsed))
            masks = dict(zip(layout.mask_owners, out.get("masks", [])))
            new_sem_seg = out.get("mask")
        else:  # only pixel values changed: keep the input geometry bit for bit
            new_points = points
            new_boxes = np.array([parsed[i].box for i in kept]).reshape(-1, 4)
            masks = {}
            new_sem_seg = sem_seg
        mirrored = False
        if layout.probe is not None:
            p0, p1, p2 = new_points[layout.probe : layout.probe + 3]
            e1, e2 = p1 - p0, p2 - p0
            mirrored = bool(e1[0] * e2[1] - e1[1] * e2[0] < 0)

        results = []
        for box, i in sorted(zip(new_boxes, kept), key=lambda bi: bi[1]):
            anno, a = annotations[i], parsed[i]
            rec = {k: copy.deepcopy(v) for k, v in anno.items() if k not in _REPLACED_KEYS}
            rec["bbox"] = [float(v) for v in box]
            rec["bbox_mode"] = BoxMode.XYXY_ABS
            if a.polygons is not None:
                polys = [
                    _clip_polygon(new_points[s:e], new_w, new_h)
                    for s, e in itertools.pairwise(layout.polygon_bounds[i])
                ]
                rec["segmentation"] = [p.reshape(-1).tolist() for p in polys if len(p)]
            elif a.mask is not None:
                rec["segmentation"] = (
                    _encode_mask(masks[i]) if moved else copy.deepcopy(anno["segmentation"])
                )
            if a.keypoints is not None:
                start = layout.keypoint_start[i]
                xy = new_points[start : start + len(a.keypoints)]
                rec["keypoints"] = self._finish_keypoints(
                    i, a.keypoints, xy, new_h, new_w, mirrored
                )
            results.append(rec)
        return out["image"], results, new_sem_seg

    def _boxes(
        self,
        out: dict[str, Any],
        kept: list[int],
        new_points: np.ndarray,
        layout: _Layout,
        num_annos: int,
    ) -> np.ndarray:
        """(len(kept), 4) XYXY boxes of the kept annotations in the transformed image."""
        if layout.corner is None:
            return np.asarray(out["bboxes"], dtype=np.float32).astype(np.float64).reshape(-1, 4)
        start = layout.corner
        corners = new_points[start : start + 4 * num_annos].reshape(num_annos, 4, 2)[kept]
        h, w = out["image"].shape[:2]
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        return np.clip(boxes, 0.0, [w, h, w, h]).reshape(-1, 4)

    def _finish_keypoints(
        self, i: int, kpts: np.ndarray, xy: np.ndarray, h: int, w: int, mirrored: bool
    ) -> list[float]:
        """Detectron2's visibility rules and left/right swap on transformed keypoints."""
        kpts = kpts.copy()
        kpts[:, :2] = xy
        inside = ((xy >= 0) & (xy <= np.array([w, h]))).all(axis=1)
        kpts[~inside, 2] = 0
        if mirrored:
            flip = self.keypoint_hflip_indices
            if flip is None:
                raise ValueError(
                    f"annotation {i} field 'keypoints': the image was mirrored, so "
                    "keypoint_hflip_indices is required to swap left and right keypoints"
                )
            if len(flip) != len(kpts):
                raise ValueError(
                    f"annotation {i} field 'keypoints': keypoint_hflip_indices has "
                    f"{len(flip)} entries, the annotation has {len(kpts)} keypoints"
                )
            kpts = kpts[flip]
        kpts[kpts[:, 2] == 0] = 0
        return kpts.reshape(-1).tolist()
