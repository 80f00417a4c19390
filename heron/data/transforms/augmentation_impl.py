"""Concrete augmentations (Detectron2's ``augmentation_impl``).

All randomness comes from numpy's global RNG, as in Detectron2, so ``np.random.seed``
makes a pipeline reproducible.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from PIL import Image

from heron.data.transforms.augmentation import Augmentation, RandomApply
from heron.data.transforms.transform import (
    BlendTransform,
    CropTransform,
    ExtentTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    ResizeTransform,
    RotationTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "FixedSizeCrop",
    "MinIoURandomCrop",
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomCrop_CategoryAreaConstraint",
    "RandomExtent",
    "RandomFlip",
    "RandomLighting",
    "RandomResize",
    "RandomRotation",
    "RandomSaturation",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
]


class RandomFlip(Augmentation):
    """Flips the image horizontally or vertically with probability ``prob``."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        super().__init__()
        if horizontal and vertical:
            raise ValueError("RandomFlip: horizontal and vertical cannot both be True")
        if not horizontal and not vertical:
            raise ValueError("RandomFlip: one of horizontal or vertical must be True")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self._rand_range() < self.prob:
            return HFlipTransform(w) if self.horizontal else VFlipTransform(h)
        return NoOpTransform()


class Resize(Augmentation):
    """Resizes the image to a fixed ``shape`` (h, w), or (shape, shape) for an int."""

    def __init__(self, shape: int | tuple[int, int], interp: int = Image.Resampling.BILINEAR):
        super().__init__()
        if isinstance(shape, int):
            shape = (shape, shape)
        self._init({"shape": tuple(shape), "interp": interp})

    def get_transform(self, image: np.ndarray) -> Transform:
        return ResizeTransform(
            image.shape[0], image.shape[1], self.shape[0], self.shape[1], self.interp
        )


class RandomResize(Augmentation):
    """Resizes the image to an (h, w) picked uniformly from ``shape_list``."""

    def __init__(self, shape_list: list[tuple[int, int]], interp: int = Image.Resampling.BILINEAR):
        super().__init__()
        if len(shape_list) == 0:
            raise ValueError("RandomResize: shape_list must not be empty")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = self.shape_list[np.random.randint(len(self.shape_list))]
        return ResizeTransform(image.shape[0], image.shape[1], h, w, self.interp)


class ResizeShortestEdge(Augmentation):
    """Scales the short side to a sampled length, capping the long side at ``max_size``.

    ``sample_style="range"`` draws an integer in [min, max] of ``short_edge_length``;
    ``"choice"`` picks one of its values. A drawn length of 0 means no resize.
    """

    def __init__(
        self,
        short_edge_length: int | tuple[int, ...] | list[int],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: int = Image.Resampling.BILINEAR,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(
                f"ResizeShortestEdge: sample_style must be 'range' or 'choice', "
                f"got {sample_style!r}"
            )
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                "ResizeShortestEdge: short_edge_length must be two values (min, max) with "
                f"sample_style='range', got {short_edge_length}"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        new_h, new_w = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)

    @staticmethod
    def get_output_shape(
        oldh: int, oldw: int, short_edge_length: int, max_size: int
    ) -> tuple[int, int]:
        """Output (h, w) for an (oldh, oldw) input: Detectron2's rule, rounding int(x + 0.5).

        Example: (417, 650) with short edge 480 and max size 640 -> (411, 640).
        """
        size = short_edge_length * 1.0
        scale = size / min(oldh, oldw)
        if oldh < oldw:
            new_h, new_w = size, scale * oldw
        else:
            new_h, new_w = scale * oldh, size
        if max(new_h, new_w) > max_size:
            scale = max_size * 1.0 / max(new_h, new_w)
            new_h = new_h * scale
            new_w = new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)


class ResizeScale(Augmentation):
    """Resizes to fit a randomly scaled target size, keeping the aspect ratio (LSJ).

    The scale is drawn from U(min_scale, max_scale); the image is scaled so it fits in
    (scale * target_height, scale * target_width).
    """

    def __init__(
        self,
        min_scale: float,
        max_scale: float,
        target_height: int,
        target_width: int,
        interp: int = Image.Resampling.BILINEAR,
    ):
        super().__init__()
        self._init(locals())

    def _get_resize(self, image: np.ndarray, scale: float) -> Transform:
        input_size = image.shape[:2]
        target_scaled = np.multiply((self.target_height, self.target_width), scale)
        output_scale = np.minimum(
            target_scaled[0] / input_size[0], target_scaled[1] / input_size[1]
        )
        output_size = np.round(np.multiply(input_size, output_scale)).astype(int)
        return ResizeTransform(
            input_size[0], input_size[1], int(output_size[0]), int(output_size[1]), self.interp
        )

    def get_transform(self, image: np.ndarray) -> Transform:
        return self._get_resize(image, np.random.uniform(self.min_scale, self.max_scale))


class RandomRotation(Augmentation):
    """Rotates by a random angle (degrees, CCW) about the center or a random center.

    ``angle``: [min, max] for "range", a list of choices for "choice". ``center``: None
    (image center), or relative (x, y) bounds [[xmin, ymin], [xmax, ymax]] / choices.
    """

    def __init__(
        self,
        angle: float | list[float],
        expand: bool = True,
        center: Any = None,
        sample_style: str = "range",
        interp: int | None = None,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(
                f"RandomRotation: sample_style must be 'range' or 'choice', got {sample_style!r}"
            )
        self.is_range = sample_style == "range"
        if isinstance(angle, (float, int)):
            angle = (angle, angle)
        if center is not None and isinstance(center[0], (float, int)):
            center = (center, center)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        center = None
        if self.is_range:
            angle = np.random.uniform(self.angle[0], self.angle[1])
            if self.center is not None:
                center = (
                    np.random.uniform(self.center[0][0], self.center[1][0]),
                    np.random.uniform(self.center[0][1], self.center[1][1]),
                )
        else:
            angle = np.random.choice(self.angle)
            if self.center is not None:
                center = self.center[np.random.randint(len(self.center))]
        if center is not None:
            center = (w * center[0], h * center[1])  # relative -> absolute
        if angle % 360 == 0:
            return NoOpTransform()
        return RotationTransform(h, w, angle, expand=self.expand, center=center, interp=self.interp)


class FixedSizeCrop(Augmentation):
    """Crops a random ``crop_size`` (h, w) window, padding up to it if the image is smaller.

    Images pad with ``pad_value``, segmentations with ``seg_pad_value``, at right/bottom.
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        pad: bool = True,
        pad_value: float = 128.0,
        seg_pad_value: int = 255,
    ):
        super().__init__()
        self._init(locals())

    def _get_crop(self, image: np.ndarray) -> Transform:
        input_size = image.shape[:2]
        max_offset = np.maximum(np.subtract(input_size, self.crop_size), 0)
        offset = np.round(np.multiply(max_offset, np.random.uniform(0.0, 1.0))).astype(int)
        # Detectron2 passes crop_size even when the image is smaller; the clamp gives the
        # same pixels and coords and makes inverse() exact.
        crop_h, crop_w = np.minimum(input_size, self.crop_size)
        return CropTransform(
            int(offset[1]), int(offset[0]), int(crop_w), int(crop_h), input_size[1], input_size[0]
        )

    def _get_pad(self, image: np.ndarray) -> Transform:
        input_size = image.shape[:2]
        pad_size = np.maximum(np.subtract(self.crop_size, input_size), 0)
        original_size = np.minimum(input_size, self.crop_size)
        return PadTransform(
            0,
            0,
            int(pad_size[1]),
            int(pad_size[0]),
            int(original_size[1]),
            int(original_size[0]),
            self.pad_value,
            self.seg_pad_value,
        )

    def get_transform(self, image: np.ndarray) -> TransformList:
        transforms = [self._get_crop(image)]
        if self.pad:
            transforms.append(self._get_pad(image))
        return TransformList(transforms)


_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


class RandomCrop(Augmentation):
    """Crops a random window whose size depends on ``crop_type``.

    - "relative": (h * crop_size[0], w * crop_size[1]);
    - "relative_range": uniform in [crop_size[i], 1] relative to the image per side;
    - "absolute": crop_size (h, w), capped by the image size;
    - "absolute_range": integers in [crop_size[0], crop_size[1]] per side, capped.
    """

    def __init__(self, crop_type: str, crop_size: tuple[float, float]):
        super().__init__()
        if crop_type not in _CROP_TYPES:
            raise ValueError(
                f"RandomCrop: crop_type must be one of {_CROP_TYPES}, got {crop_type!r}"
            )
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(f"RandomCrop: absolute_range needs min <= max, got {crop_size}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        croph, cropw = self.get_crop_size((h, w))
        if croph > h or cropw > w:
            raise ValueError(f"RandomCrop: crop size {(croph, cropw)} exceeds image {(h, w)}")
        h0 = np.random.randint(h - croph + 1)
        w0 = np.random.randint(w - cropw + 1)
        return CropTransform(w0, h0, cropw, croph)

    def get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Crop (h, w) for an image of size (h, w)."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            crop_size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = crop_size + np.random.rand(2) * (1 - crop_size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        ch = np.random.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = np.random.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return int(ch), int(cw)


class RandomCrop_CategoryAreaConstraint(Augmentation):
    """RandomCrop that retries (up to 10 times) until no single category covers more than
    ``single_category_max_area`` of the crop's semantic segmentation."""

    input_args = ("image", "sem_seg")

    def __init__(
        self,
        crop_type: str,
        crop_size: tuple[float, float],
        single_category_max_area: float = 1.0,
        ignored_category: int | None = None,
    ):
        super().__init__()
        self.crop_aug = RandomCrop(crop_type, crop_size)
        self._init(locals())

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> Transform:
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(image)
        h, w = sem_seg.shape
        for _ in range(10):
            crop_size = self.crop_aug.get_crop_size((h, w))
            y0 = np.random.randint(h - crop_size[0] + 1)
            x0 = np.random.randint(w - crop_size[1] + 1)
            window = sem_seg[y0 : y0 + crop_size[0], x0 : x0 + crop_size[1]]
            labels, cnt = np.unique(window, return_counts=True)
            if self.ignored_category is not None:
                cnt = cnt[labels != self.ignored_category]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * self.single_category_max_area:
                break
        return CropTransform(x0, y0, crop_size[1], crop_size[0])


class RandomExtent(Augmentation):
    """Crops a random rectangle (may extend past the image, padded with 0).

    The rectangle is the image rectangle scaled by U(scale_range) about its center and
    shifted by up to shift_range * (w, h) / 2.
    """

    def __init__(self, scale_range: tuple[float, float], shift_range: tuple[float, float]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        img_h, img_w = image.shape[:2]
        src_rect = np.array([-0.5 * img_w, -0.5 * img_h, 0.5 * img_w, 0.5 * img_h])
        src_rect *= np.random.uniform(self.scale_range[0], self.scale_range[1])
        src_rect[0::2] += self.shift_range[0] * img_w * (np.random.rand() - 0.5)
        src_rect[1::2] += self.shift_range[1] * img_h * (np.random.rand() - 0.5)
        src_rect[0::2] += 0.5 * img_w
        src_rect[1::2] += 0.5 * img_h
        return ExtentTransform(
            src_rect=(src_rect[0], src_rect[1], src_rect[2], src_rect[3]),
            output_size=(int(src_rect[3] - src_rect[1]), int(src_rect[2] - src_rect[0])),
        )


class RandomContrast(Augmentation):
    """Scales contrast by w ~ U(intensity_min, intensity_max): blend with the image mean."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=image.mean(), src_weight=1 - w, dst_weight=w)


class RandomBrightness(Augmentation):
    """Scales brightness by w ~ U(intensity_min, intensity_max): blend with black."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=0, src_weight=1 - w, dst_weight=w)


class RandomSaturation(Augmentation):
    """Scales saturation of an RGB image by w ~ U(min, max): blend with its grayscale."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomSaturation needs an (H, W, 3) RGB image, got {image.shape}")
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        grayscale = image.dot([0.299, 0.587, 0.114])[:, :, np.newaxis]
        return BlendTransform(src_image=grayscale, src_weight=1 - w, dst_weight=w)


class RandomLighting(Augmentation):
    """AlexNet-style PCA lighting noise on an RGB image, weights ~ N(0, scale)."""

    def __init__(self, scale: float):
        super().__init__()
        self._init(locals())
        # ImageNet RGB PCA eigenvectors (columns) and eigenvalues, as in Detectron2.
        self.eigen_vecs = np.array(
            [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
        )
        self.eigen_vals = np.array([0.2175, 0.0188, 0.0045])

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomLighting needs an (H, W, 3) RGB image, got {image.shape}")
        weights = np.random.normal(scale=self.scale, size=3)
        return BlendTransform(
            src_image=self.eigen_vecs.dot(weights * self.eigen_vals), src_weight=1.0, dst_weight=1.0
        )


def _iou_one_to_many(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY box (4,) with (N, 4) XYXY boxes -> (N,)."""
    wh = np.clip(np.minimum(patch[2:], boxes[:, 2:]) - np.maximum(patch[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area_patch = (patch[2] - patch[0]) * (patch[3] - patch[1])
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area_patch + area_boxes - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class MinIoURandomCrop(Augmentation):
    """SSD-style crop: a random patch whose IoU with every box is at least a sampled minimum.

    Mode 1 means no crop; a crop is kept only if some box center lies inside it.
    """

    input_args = ("image", "boxes")

    def __init__(
        self,
        min_ious: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size: float = 0.3,
        mode_trials: int = 1000,
        crop_trials: int = 50,
    ):
        super().__init__()
        self._init(locals())
        self.sample_mode = (1, *min_ious, 0)

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> Transform:
        if boxes is None:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        h, w = image.shape[:2]
        for _ in range(self.mode_trials):
            mode = self.sample_mode[np.random.randint(len(self.sample_mode))]
            if mode == 1:
                return NoOpTransform()
            for _ in range(self.crop_trials):
                new_w = np.random.uniform(self.min_crop_size * w, w)
                new_h = np.random.uniform(self.min_crop_size * h, h)
                if new_h / new_w < 0.5 or new_h / new_w > 2:
                    continue
                left = np.random.uniform(w - new_w)
                top = np.random.uniform(h - new_h)
                patch = np.array((int(left), int(top), int(left + new_w), int(top + new_h)))
                if patch[2] == patch[0] or patch[3] == patch[1]:
                    continue
                overlaps = _iou_one_to_many(patch.astype(np.float64), boxes)
                if len(overlaps) > 0 and overlaps.min() < mode:
                    continue
                if len(overlaps) > 0:
                    center = (boxes[:, :2] + boxes[:, 2:]) / 2
                    inside = (
                        (center[:, 0] > patch[0])
                        & (center[:, 1] > patch[1])
                        & (center[:, 0] < patch[2])
                        & (center[:, 1] < patch[3])
                    )
                    if not inside.any():
                        continue
                return CropTransform(int(left), int(top), int(new_w), int(new_h))
        return NoOpTransform()
