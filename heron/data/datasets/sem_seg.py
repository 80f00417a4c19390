"""Pair images with semantic-segmentation label files into Detectron2 dataset dicts."""

from __future__ import annotations

import logging
import os

__all__ = ["load_sem_seg"]

logger = logging.getLogger(__name__)


def _files_by_key(root: str, ext: str) -> dict[str, str]:
    """Map "relative/path/without/extension" -> full path for every file under root ending in ext."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in filenames:
            if fname.endswith(ext):
                path = os.path.join(dirpath, fname)
                key = os.path.relpath(path, root)[: -len(ext)]
                # "jpg" and ".jpg" are both accepted: drop the dot left before the extension
                out[key[:-1] if key.endswith(".") else key] = path
    return out


def _describe(keys: set[str], limit: int = 5) -> str:
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{shown}{more}"


def load_sem_seg(
    gt_root: str,
    image_root: str,
    gt_ext: str = "png",
    image_ext: str = "jpg",
    *,
    allow_unlabeled_images: bool = False,
) -> list[dict]:
    """Pair every image with its label file by relative path without extension.

    Args:
        gt_root: directory of label images (pixel values are class ids), searched recursively.
        image_root: directory of the input images, searched recursively.
        gt_ext: extension of the label files.
        image_ext: extension of the images.
        allow_unlabeled_images: images without a label file are left out, and their number
            logged as a warning (for a label folder that covers a subset of a shared image
            folder, e.g. COCO's val_100 splits). Labels without an image still raise.

    Returns:
        One dict per image with "file_name" and "sem_seg_file_name", sorted by the relative
        path. "height" and "width" are not filled in, as in Detectron2.

    Raises:
        ValueError: the two directories hold different numbers of files, or some files have
            no partner; the message lists a few of them.
    """
    gt_root, image_root = os.fspath(gt_root), os.fspath(image_root)
    for what, root in (("gt_root", gt_root), ("image_root", image_root)):
        if not os.path.isdir(root):
            raise ValueError(f"{what} must be an existing directory, got {root!r}")
    images = _files_by_key(image_root, image_ext)
    gts = _files_by_key(gt_root, gt_ext)
    only_images, only_gts = set(images) - set(gts), set(gts) - set(images)
    if allow_unlabeled_images and only_images and not only_gts:
        logger.warning(
            "%d of %d images in %s have no label in %s and are left out, e.g. %s",
            len(only_images),
            len(images),
            image_root,
            gt_root,
            _describe(only_images, limit=3),
        )
        images = {k: v for k, v in images.items() if k in gts}
        only_images = set()
    if only_images or only_gts:
        raise ValueError(
            f"Directory {image_root!r} has {len(images)} *{image_ext} files and {gt_root!r} has "
            f"{len(gts)} *{gt_ext} files; images without a label: {_describe(only_images)}; "
            f"labels without an image: {_describe(only_gts)}"
        )
    dicts = [{"file_name": images[key], "sem_seg_file_name": gts[key]} for key in sorted(images)]
    logger.info("Loaded %d images with semantic segmentation from %s", len(dicts), image_root)
    return dicts
