"""Helpers that turn dataset dicts (Detectron2's standard format) into model inputs.

Image reading, annotation transforms, and conversion of annotations into ``Instances``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from heron.data.catalog import MetadataCatalog
from heron.data.transforms.augmentation import Augmentation
from heron.data.transforms.augmentation_impl import RandomFlip, ResizeShortestEdge
from heron.data.transforms.transform import (
    CropTransform,
    HFlipTransform,
    Transform,
    TransformList,
)
from heron.structures.boxes import Boxes, BoxMode
from heron.structures.instances import Instances
from heron.structures.keypoints import Keypoints
from heron.structures.masks import BitMasks, PolygonMasks, polygons_to_bitmask
from heron.structures.rotated_boxes import RotatedBoxes
from heron.utils.file_io import PathManager

__all__ = [
    "SizeMismatchError",
    "annotations_to_instances",
    "annotations_to_instances_rotated",
    "build_augmentation",
    "build_transform_gen",
    "check_image_size",
    "check_metadata_consistency",
    "convert_PIL_to_numpy",
    "convert_image_to_rgb",
    "create_keypoint_hflip_indices",
    "filter_empty_instances",
    "gen_crop_transform_with_instance",
    "read_image",
    "transform_instance_annotations",
    "transform_keypoint_annotations",
    "transform_proposals",
]

logger = logging.getLogger(__name__)

# ITU-R BT.601 RGB -> YUV matrix and its inverse (rows give Y, U, V).
_M_RGB2YUV = [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]
_M_YUV2RGB = [[1.0, 0.0, 1.13983], [1.0, -0.39465, -0.58060], [1.0, 2.03211, 0.0]]

_EXIF_ORIENTATION = 0x0112
# EXIF orientation value -> the transpose that brings the pixels upright.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class SizeMismatchError(ValueError):
    """The image read from disk does not have the width/height its record declares."""


def convert_PIL_to_numpy(image: Image.Image, format: str | None) -> np.ndarray:
    """Convert a PIL image to a numpy array in the requested format.

    Args:
        image: a PIL image.
        format: "BGR", "RGB", "L", "YUV-BT.601", any other PIL mode, or None to keep the
            image's own mode.

    Returns:
        (H, W, C) array; (H, W, 1) for "L". uint8, except float64 for "YUV-BT.601" (Y in
        [0, 1]). With ``format=None`` the array follows the PIL mode ((H, W) for "L").
    """
    if format is not None:
        # PIL has no BGR or YUV-BT.601 mode: read RGB and reorder / convert below.
        pil_mode = "RGB" if format in ("BGR", "YUV-BT.601") else format
        image = image.convert(pil_mode)
    array = np.asarray(image)
    if format == "L":
        array = np.expand_dims(array, -1)
    elif format == "BGR":
        array = array[:, :, ::-1]
    elif format == "YUV-BT.601":
        array = np.dot(array / 255.0, np.array(_M_RGB2YUV).T)
    return array


def convert_image_to_rgb(image: np.ndarray | torch.Tensor, format: str) -> np.ndarray:
    """Convert an (H, W, C) image in ``format`` to an (H, W, 3) uint8 RGB array.

    Args:
        image: (H, W, C) array or tensor in "BGR", "RGB", "L" ((H, W, 1)) or "YUV-BT.601".
        format: the format of ``image``.
    """
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if format == "BGR":
        image = image[:, :, [2, 1, 0]]
    elif format == "YUV-BT.601":
        image = np.dot(image, np.array(_M_YUV2RGB).T) * 255.0
    elif format == "L":
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], -1)[:, :, :1], 3, axis=2)
    elif format != "RGB":
        image = np.asarray(Image.fromarray(image, mode=format).convert("RGB"))
    return np.clip(image, 0, 255).astype(np.uint8)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip ``image`` upright according to its EXIF orientation tag, if any."""
    if not hasattr(image, "getexif"):
        return image
    try:
        exif = image.getexif()
    except Exception:  # malformed EXIF: keep the pixels as stored
        return image
    method = _EXIF_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION)) if exif else None
    return image.transpose(method) if method is not None else image


def read_image(file_name: str, format: str | None = None) -> np.ndarray:
    """Read an image file into a numpy array, upright per its EXIF orientation.

    Args:
        file_name: path understood by ``PathManager``.
        format: see :func:`convert_PIL_to_numpy`.

    Returns:
        (H, W, C) array ((H, W, 1) for "L").

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        OSError: the file is not a readable image (the message names it).
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now so a truncated file fails here, with its name
    except FileNotFoundError as e:
        raise FileNotFoundError(f"read_image: image file {file_name!r} not found") from e
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports some malformed files (e.g. broken PNG chunks) as SyntaxError/ValueError.
        raise OSError(f"read_image: cannot read image file {file_name!r}: {e}") from e
    image = _apply_exif_orientation(image)
    try:
        return convert_PIL_to_numpy(image, format)
    except ValueError as e:
        raise ValueError(
            f"read_image: cannot convert {file_name!r} (mode {image.mode}) to format "
            f"{format!r}: {e}"
        ) from e


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """Check the image against the record's "width"/"height", filling them in when absent.

    Raises:
        SizeMismatchError: (a ValueError) the sizes differ; names the file and both sizes.
    """
    image_wh = (image.shape[1], image.shape[0])
    if "width" in dataset_dict or "height" in dataset_dict:
        expected_wh = (
            dataset_dict.get("width", image_wh[0]),
            dataset_dict.get("height", image_wh[1]),
        )
        if tuple(expected_wh) != image_wh:
            name = dataset_dict.get("file_name", "<no file_name>")
            raise SizeMismatchError(
                f"Image {name!r}: the record says (width, height) = {tuple(expected_wh)}, "
                f"the image read has {image_wh}; check width/height in the annotations"
            )
    dataset_dict.setdefault("width", image_wh[0])
    dataset_dict.setdefault("height", image_wh[1])


def transform_proposals(
    dataset_dict: dict,
    image_shape: tuple[int, int],
    transforms: TransformList,
    *,
    proposal_topk: int,
    min_box_size: float = 0,
) -> None:
    """Transform precomputed proposals in place into ``dataset_dict["proposals"]``.

    Reads and removes "proposal_boxes" ((N, 4) array), "proposal_bbox_mode" and
    "proposal_objectness_logits" ((N,) array, sorted descending); stores an ``Instances``
    with ``proposal_boxes`` and ``objectness_logits``, clipped to ``image_shape`` (h, w),
    without boxes whose sides are not above ``min_box_size``, and at most ``proposal_topk``.
    """
    if "proposal_boxes" not in dataset_dict:
        return
    boxes = BoxMode.convert(
        np.asarray(dataset_dict.pop("proposal_boxes"), dtype=np.float64).reshape(-1, 4),
        dataset_dict.pop("proposal_bbox_mode"),
        BoxMode.XYXY_ABS,
    )
    boxes = Boxes(transforms.apply_box(boxes))
    logits = torch.as_tensor(
        np.asarray(dataset_dict.pop("proposal_objectness_logits"), dtype=np.float32)
    )
    boxes.clip(image_shape)
    keep = boxes.nonempty(threshold=min_box_size)
    proposals = Instances(image_shape)
    proposals.proposal_boxes = boxes[keep][:proposal_topk]
    proposals.objectness_logits = logits[keep][:proposal_topk]
    dataset_dict["proposals"] = proposals


def _as_transform_list(transforms: TransformList | Transform | list | tuple) -> TransformList:
    if isinstance(transforms, TransformList):
        return transforms
    if isinstance(transforms, Transform):
        return TransformList([transforms])
    return TransformList(list(transforms))


def transform_instance_annotations(
    annotation: dict,
    transforms: TransformList | list[Transform],
    image_size: tuple[int, int],
    *,
    keypoint_hflip_indices: np.ndarray | list[int] | None = None,
) -> dict:
    """Apply ``transforms`` to one instance annotation, in place.

    The box becomes XYXY_ABS clipped to ``image_size`` (h, w); polygons stay lists of flat
    arrays; an RLE dict becomes an (H, W) uint8 mask; keypoints go through
    :func:`transform_keypoint_annotations`.

    Returns:
        The same ``annotation`` dict.
    """
    transforms = _as_transform_list(transforms)
    bbox = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    bbox = transforms.apply_box(np.array([bbox], dtype=np.float64))[0].clip(min=0)
    h, w = image_size
    annotation["bbox"] = np.minimum(bbox, [w, h, w, h])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS

    if "segmentation" in annotation:
        segm = annotation["segmentation"]
        if isinstance(segm, list):
            polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm]
            annotation["segmentation"] = [
                p.reshape(-1) for p in transforms.apply_polygons(polygons)
            ]
        elif isinstance(segm, dict):
            mask = transforms.apply_segmentation(_decode_rle(segm))
            if tuple(mask.shape[:2]) != tuple(image_size):
                raise ValueError(
                    f"transform_instance_annotations: transformed mask has shape "
                    f"{mask.shape[:2]}, expected image_size {tuple(image_size)}"
                )
            annotation["segmentation"] = mask
        else:
            raise ValueError(
                "annotation['segmentation'] must be a list of polygons or an RLE dict, "
                f"got {type(segm).__name__}"
            )

    if "keypoints" in annotation:
        annotation["keypoints"] = transform_keypoint_annotations(
            annotation["keypoints"], transforms, image_size, keypoint_hflip_indices
        )
    return annotation


def transform_keypoint_annotations(
    keypoints: list[float] | np.ndarray,
    transforms: TransformList | list[Transform],
    image_size: tuple[int, int],
    keypoint_hflip_indices: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Transform COCO keypoints (x, y, v) x K.

    Keypoints that land outside the image get v = 0, and invisible ones are zeroed. After an
    odd number of horizontal flips, left/right keypoints swap by ``keypoint_hflip_indices``.

    Returns:
        (K, 3) float64 array.
    """
    transforms = _as_transform_list(transforms)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    xy = transforms.apply_coords(keypoints[:, :2])
    h, w = image_size
    inside = ((xy >= 0) & (xy <= np.array([w, h]))).all(axis=1)
    keypoints[:, :2] = xy
    keypoints[~inside, 2] = 0

    num_hflips = sum(isinstance(t, HFlipTransform) for t in transforms.transforms)
    if num_hflips % 2 == 1:
        if keypoint_hflip_indices is None:
            raise ValueError(
                "keypoint_hflip_indices is required to flip keypoints horizontally, got None"
            )
        if len(keypoints) != len(keypoint_hflip_indices):
            raise ValueError(
                f"keypoint_hflip_indices has {len(keypoint_hflip_indices)} entries, "
                f"the annotation has {len(keypoints)} keypoints"
            )
        keypoints = keypoints[np.asarray(keypoint_hflip_indices, dtype=np.int64)]

    keypoints[keypoints[:, 2] == 0] = 0
    return keypoints


def _decode_rle(segm: dict) -> np.ndarray:
    """Decode a COCO RLE dict (compressed or with a list of counts) to an (H, W) uint8 mask."""
    if isinstance(segm.get("counts"), list):
        h, w = segm["size"]
        segm = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(segm)


def annotations_to_instances(
    annos: list[dict], image_size: tuple[int, int], mask_format: str = "polygon"
) -> Instances:
    """Build ``Instances`` from (transformed) annotations.

    Fields: ``gt_boxes`` (Boxes, (N, 4) XYXY_ABS), ``gt_classes`` ((N,) int64), and when the
    annotations carry them ``gt_masks`` (PolygonMasks for "polygon", BitMasks of
    ``image_size`` for "bitmask") and ``gt_keypoints`` (Keypoints, (N, K, 3)).
    """
    if mask_format not in ("polygon", "bitmask"):
        raise ValueError(f"mask_format must be 'polygon' or 'bitmask', got {mask_format!r}")
    if len(annos):
        boxes = np.stack(
            [BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS) for obj in annos]
        ).astype(np.float32)
    else:
        boxes = np.zeros((0, 4), dtype=np.float32)
    target = Instances(image_size)
    target.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)

    if len(annos) and "segmentation" in annos[0]:
        segms = [obj["segmentation"] for obj in annos]
        if mask_format == "polygon":
            for i, segm in enumerate(segms):
                if not isinstance(segm, list):
                    raise ValueError(
                        f"mask_format='polygon' needs polygon segmentations, annotation {i} "
                        f"has {type(segm).__name__}; use mask_format='bitmask'"
                    )
            target.gt_masks = PolygonMasks(segms)
        else:
            target.gt_masks = BitMasks(
                torch.stack([torch.from_numpy(_segm_to_bitmask(s, image_size)) for s in segms])
            )

    if len(annos) and "keypoints" in annos[0]:
        # Raw COCO lists are flat (x, y, v) * K; transformed ones are already (K, 3).
        kpts = [
            np.asarray(obj.get("keypoints", []), dtype=np.float32).reshape(-1, 3) for obj in annos
        ]
        target.gt_keypoints = Keypoints(np.stack(kpts))
    return target


def _segm_to_bitmask(segm: Any, image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 mask from polygons, an RLE dict or a 2D array."""
    h, w = image_size
    if isinstance(segm, list):
        return polygons_to_bitmask([np.asarray(p) for p in segm], h, w).astype(np.uint8)
    if isinstance(segm, dict):
        return np.ascontiguousarray(_decode_rle(segm))
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"a mask segmentation must be 2D (H, W), got shape {segm.shape}")
        return np.ascontiguousarray(segm)
    raise ValueError(
        "segmentation must be a list of polygons, an RLE dict or an (H, W) array, "
        f"got {type(segm).__name__}"
    )


def annotations_to_instances_rotated(annos: list[dict], image_size: tuple[int, int]) -> Instances:
    """Build ``Instances`` with rotated ``gt_boxes`` ((N, 5) cx, cy, w, h, angle) and
    ``gt_classes``; boxes are clipped to ``image_size`` (h, w)."""
    boxes = [obj["bbox"] for obj in annos]
    target = Instances(image_size)
    tensor = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 5))
    target.gt_boxes = RotatedBoxes(tensor)
    target.gt_boxes.clip(image_size)
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
) -> Instances | tuple[Instances, torch.Tensor]:
    """Drop instances with an empty box (sides not above ``box_threshold``) or empty mask.

    Returns:
        The kept instances, plus the (N,) bool keep mask when ``return_mask``.
    """
    keeps = []
    if by_box:
        keeps.append(instances.gt_boxes.nonempty(threshold=box_threshold))
    if by_mask and instances.has("gt_masks"):
        keeps.append(instances.gt_masks.nonempty())
    if not keeps:
        keep = torch.ones(len(instances), dtype=torch.bool)
        return (instances, keep) if return_mask else instances
    keep = keeps[0]
    for k in keeps[1:]:
        keep = keep & k
    return (instances[keep], keep) if return_mask else instances[keep]


def check_metadata_consistency(key: str, dataset_names: list[str]) -> None:
    """Check that metadata ``key`` is equal across ``dataset_names``.

    Raises:
        ValueError: naming the key and the two datasets that disagree.
    """
    if len(dataset_names) == 0:
        return
    entries = [MetadataCatalog.get(d).get(key) for d in dataset_names]
    for name, entry in zip(dataset_names, entries):
        if entry != entries[0]:
            logger.error("Metadata '%s' of dataset '%s' is %s", key, dataset_names[0], entries[0])
            logger.error("Metadata '%s' of dataset '%s' is %s", key, name, entry)
            raise ValueError(
                f"Metadata {key!r} differs between datasets {dataset_names[0]!r} and {name!r}"
            )


def create_keypoint_hflip_indices(dataset_names: list[str] | str) -> list[int]:
    """Index of each keypoint's mirror image, from metadata keypoint_names/keypoint_flip_map.

    Returns:
        list of K ints: entry i is the index of the keypoint that i becomes after a flip.
    """
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    check_metadata_consistency("keypoint_names", dataset_names)
    check_metadata_consistency("keypoint_flip_map", dataset_names)
    meta = MetadataCatalog.get(dataset_names[0])
    names = list(meta.keypoint_names)
    flip_map = dict(meta.keypoint_flip_map)
    flip_map.update({v: k for k, v in flip_map.items()})
    return [names.index(flip_map.get(n, n)) for n in names]


def gen_crop_transform_with_instance(
    crop_size: tuple[int, int], image_size: tuple[int, int], instance: dict
) -> CropTransform:
    """A random (h, w) = ``crop_size`` crop of ``image_size`` containing the instance's
    box center."""
    crop_size = np.asarray(crop_size, dtype=np.int32)
    bbox = BoxMode.convert(instance["bbox"], instance["bbox_mode"], BoxMode.XYXY_ABS)
    center_yx = np.array([(bbox[1] + bbox[3]) * 0.5, (bbox[0] + bbox[2]) * 0.5])
    if image_size[0] < center_yx[0] or image_size[1] < center_yx[1]:
        raise ValueError(
            f"instance box center (y, x) = {tuple(center_yx)} lies outside image {image_size}"
        )
    if image_size[0] < crop_size[0] or image_size[1] < crop_size[1]:
        raise ValueError(f"crop_size {tuple(crop_size)} is larger than image {image_size}")
    min_yx = np.maximum(np.floor(center_yx).astype(np.int32) - crop_size, 0)
    max_yx = np.maximum(np.asarray(image_size, dtype=np.int32) - crop_size, 0)
    max_yx = np.minimum(max_yx, np.ceil(center_yx).astype(np.int32))
    y0 = np.random.randint(min_yx[0], max_yx[0] + 1)
    x0 = np.random.randint(min_yx[1], max_yx[1] + 1)
    return CropTransform(int(x0), int(y0), int(crop_size[1]), int(crop_size[0]))


def build_augmentation(cfg: Any, is_train: bool) -> list[Augmentation]:
    """Default augmentations from cfg.INPUT: ResizeShortestEdge, plus RandomFlip in training."""
    if is_train:
        min_size = cfg.INPUT.MIN_SIZE_TRAIN
        max_size = cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size = cfg.INPUT.MIN_SIZE_TEST
        max_size = cfg.INPUT.MAX_SIZE_TEST
        sample_style = "choice"
    augmentation: list[Augmentation] = [ResizeShortestEdge(min_size, max_size, sample_style)]
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("horizontal", "vertical", "none"):
        raise ValueError(
            f"cfg.INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}"
        )
    if is_train and flip != "none":
        augmentation.append(
            RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical")
        )
    return augmentation


build_transform_gen = build_augmentation
