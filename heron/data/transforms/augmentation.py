"""Augmentations: policies that pick a ``Transform`` for given inputs (Detectron2 API).

An ``Augmentation`` looks at some fields of an ``AugInput`` (named by ``input_args``),
draws its random parameters from numpy's global RNG, returns a deterministic ``Transform``
and applies it to every field of the input.
"""

from __future__ import annotations

import inspect
import pprint
from typing import Any

import numpy as np

from heron.data.transforms.transform import NoOpTransform, Transform, TransformList

__all__ = [
    "AugInput",
    "Augmentation",
    "AugmentationList",
    "RandomApply",
    "StandardAugInput",
    "TransformGen",
    "apply_augmentations",
    "apply_transform_gens",
]


def _check_img_dtype(img: Any) -> None:
    """Raise unless ``img`` is an (H, W) or (H, W, C) array of uint8 or a float dtype."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(img).__name__}")
    if np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise TypeError(f"integer images must be uint8, got dtype {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")


class Augmentation:
    """Base class: ``get_transform(*args)`` picks a ``Transform`` from the named inputs.

    ``input_args`` names the ``AugInput`` attributes passed to ``get_transform``, in order.
    """

    input_args: tuple[str, ...] = ("image",)

    def _init(self, params: dict[str, Any] | None = None) -> None:
        """Store constructor arguments as attributes (except ``self`` and ``_x``)."""
        if params:
            for name, value in params.items():
                if name != "self" and not name.startswith("_"):
                    setattr(self, name, value)

    def get_transform(self, *args: Any) -> Transform:
        """Return the (deterministic) transform to apply to inputs ``*args``.

        Every concrete augmentation defines it; `AugmentationList` overrides `__call__`
        instead, which is why this is not an abstract method.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define get_transform")

    def __call__(self, aug_input: AugInput) -> Transform:
        """Choose a transform from ``aug_input``, apply it in place and return it."""
        args = []
        for name in self.input_args:
            if not hasattr(aug_input, name):
                raise AttributeError(
                    f"{type(self).__name__} needs input {name!r}, which "
                    f"{type(aug_input).__name__} does not have"
                )
            args.append(getattr(aug_input, name))
        tfm = self.get_transform(*args)
        if not isinstance(tfm, Transform):
            raise TypeError(
                f"{type(self).__name__}.get_transform must return a Transform, "
                f"got {type(tfm).__name__}"
            )
        aug_input.transform(tfm)
        return tfm

    def _rand_range(
        self, low: float = 1.0, high: float | None = None, size: Any = None
    ) -> np.ndarray | float:
        """Uniform sample in [low, high), or [0, low) when ``high`` is None."""
        if high is None:
            low, high = 0, low
        if size is None:
            size = []
        return np.random.uniform(low, high, size)

    def __repr__(self) -> str:
        """``Name(arg=value, ...)`` for constructor arguments that differ from the default."""
        try:
            sig = inspect.signature(self.__init__)
        except (TypeError, ValueError):
            return super().__repr__()
        parts = []
        for name, param in sig.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, name):
                continue
            value = getattr(self, name)
            if param.default is value:
                continue
            text = pprint.pformat(value)
            parts.append(f"{name}={'...' if chr(10) in text else text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


class _TransformToAug(Augmentation):
    """Wraps a fixed ``Transform`` as an augmentation that always returns it."""

    def __init__(self, tfm: Transform) -> None:
        self.tfm = tfm

    def get_transform(self, *args: Any) -> Transform:
        return self.tfm

    def __repr__(self) -> str:
        return repr(self.tfm)


def _transform_to_aug(tfm_or_aug: Transform | Augmentation) -> Augmentation:
    if isinstance(tfm_or_aug, Augmentation):
        return tfm_or_aug
    if isinstance(tfm_or_aug, Transform):
        return _TransformToAug(tfm_or_aug)
    raise TypeError(f"expected an Augmentation or a Transform, got {type(tfm_or_aug).__name__}")


class AugmentationList(Augmentation):
    """Applies augmentations in sequence; returns the ``TransformList`` of their transforms."""

    def __init__(self, augs: list[Augmentation | Transform]) -> None:
        super().__init__()
        self.augs = [_transform_to_aug(x) for x in augs]

    def __call__(self, aug_input: AugInput) -> TransformList:
        return TransformList([aug(aug_input) for aug in self.augs])

    def __repr__(self) -> str:
        return f"AugmentationList[{', '.join(repr(a) for a in self.augs)}]"

    __str__ = __repr__


class RandomApply(Augmentation):
    """Applies a transform or augmentation with probability ``prob``, else does nothing."""

    def __init__(self, tfm_or_aug: Transform | Augmentation, prob: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomApply: prob must be in [0, 1], got {prob}")
        self.aug = _transform_to_aug(tfm_or_aug)
        self.prob = prob
        self.input_args = self.aug.input_args

    def get_transform(self, *args: Any) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug.get_transform(*args)
        return NoOpTransform()

    def __call__(self, aug_input: AugInput) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug(aug_input)
        return NoOpTransform()


class AugInput:
    """The inputs an augmentation sees and transforms in place.

    Attributes:
        image: (H, W) or (H, W, C) uint8 or float array.
        boxes: (N, 4) XYXY boxes in absolute pixels, or None.
        sem_seg: (H, W) integer semantic segmentation, or None.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        boxes: np.ndarray | None = None,
        sem_seg: np.ndarray | None = None,
    ) -> None:
        _check_img_dtype(image)
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        """Apply ``tfm`` to the image and to boxes and sem_seg when present, in place."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(self, augmentations: list[Augmentation | Transform]) -> TransformList:
        """Apply augmentations in order, in place; return the transforms they used."""
        return AugmentationList(augmentations)(self)


StandardAugInput = AugInput
TransformGen = Augmentation  # Detectron2's older name for Augmentation


def apply_augmentations(
    augmentations: list[Augmentation | Transform], inputs: np.ndarray | AugInput
) -> tuple[np.ndarray | AugInput, TransformList]:
    """Apply augmentations to an image array or an ``AugInput``.

    Returns:
        The transformed image (when given an array) or the same ``AugInput``, transformed
        in place, and the ``TransformList`` that was applied.
    """
    image_only = isinstance(inputs, np.ndarray)
    aug_input = AugInput(inputs) if image_only else inputs
    tfms = aug_input.apply_augmentations(augmentations)
    return (aug_input.image if image_only else aug_input), tfms


apply_transform_gens = apply_augmentations
