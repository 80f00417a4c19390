"""Deterministic transforms on images and geometry (fvcore + Detectron2 transform API).

A ``Transform`` holds fixed parameters (chosen beforehand, e.g. by an ``Augmentation``) and
applies the same geometric or photometric change to every kind of data:

- image: (H, W) or (H, W, C) numpy array, uint8 or float32;
- coords: (N, 2) float array of (x, y) in absolute pixels;
- box: (N, 4) float array, XYXY, absolute pixels;
- polygons: list of (K, 2) float arrays of (x, y);
- segmentation: (H, W) integer mask, resampled with nearest neighbour.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

__all__ = [
    "BlendTransform",
    "ColorTransform",
    "CropTransform",
    "ExtentTransform",
    "HFlipTransform",
    "NoOpTransform",
    "PILColorTransform",
    "PadTransform",
    "ResizeTransform",
    "RotationTransform",
    "ScaleTransform",
    "Transform",
    "TransformList",
    "VFlipTransform",
]


class Transform(metaclass=ABCMeta):
    """Base class of deterministic transforms; subclasses define ``apply_image``/``apply_coords``.

    The other ``apply_*`` methods have defaults built on those two; ``register_type`` adds
    new data types (``apply_<name>``) to a transform class.
    """

    def _set_attributes(self, params: dict[str, Any] | None = None) -> None:
        """Store the given constructor arguments as attributes (except ``self`` and ``_x``)."""
        if params:
            for name, value in params.items():
                if name != "self" and not name.startswith("_"):
                    setattr(self, name, value)

    @abstractmethod
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Transform an (H, W) or (H, W, C) image."""

    @abstractmethod
    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Transform (N, 2) (x, y) coordinates in absolute pixels."""

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Transform an (H, W) segmentation mask; the default treats it as an image."""
        return self.apply_image(segmentation)

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """Transform (N, 4) XYXY boxes: the box around the 4 transformed corners.

        Exact for flips, resizes and crops; for rotations the result encloses the rotated box.
        """
        corner_idxs = np.array([(0, 1), (2, 1), (0, 3), (2, 3)]).flatten()
        box = np.asarray(box).reshape(-1, 4)
        coords = box[:, corner_idxs].reshape(-1, 2)  # (N*4, 2) corners
        coords = self.apply_coords(coords).reshape((-1, 4, 2))
        return np.concatenate((coords.min(axis=1), coords.max(axis=1)), axis=1)

    def apply_polygons(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """Transform a list of (K, 2) polygons through ``apply_coords``."""
        return [self.apply_coords(p) for p in polygons]

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """Transform (N, 5) rotated boxes (cx, cy, w, h, angle in degrees, CCW)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no apply_rotated_box; define it with "
            f"{type(self).__name__}.register_type('rotated_box', func)"
        )

    @classmethod
    def register_type(cls, data_type: str, func: Callable | None = None) -> Any:
        """Register ``func(transform, data)`` as ``cls.apply_<data_type>``.

        Usable as a decorator when ``func`` is None.
        """
        if func is None:

            def wrapper(decorated: Callable) -> Callable:
                cls.register_type(data_type, decorated)
                return decorated

            return wrapper
        if not callable(func):
            raise TypeError(f"register_type: func must be callable, got {type(func).__name__}")
        num_args = len(inspect.signature(func).parameters)
        if num_args != 2:
            raise TypeError(
                f"register_type: func must take (transform, data), got {num_args} arguments"
            )
        setattr(cls, "apply_" + data_type, func)
        return None

    def inverse(self) -> Transform:
        """Return the transform that undoes this one."""
        raise NotImplementedError(f"{type(self).__name__} is not invertible")

    def __repr__(self) -> str:
        try:
            sig = inspect.signature(self.__init__)
        except (TypeError, ValueError):
            return super().__repr__()
        parts = []
        for name in sig.parameters:
            if hasattr(self, name):
                value = getattr(self, name)
                text = repr(value) if not isinstance(value, np.ndarray) else "ndarray"
                parts.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"


class TransformList(Transform):
    """A sequence of transforms applied in order; nested lists are flattened."""

    def __init__(self, transforms: list[Transform]) -> None:
        super().__init__()
        flat: list[Transform] = []
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}] must be a Transform, got {type(t).__name__}")
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = flat

    def _apply(self, x: Any, meth: str) -> Any:
        for t in self.transforms:
            x = getattr(t, meth)(x)
        return x

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._apply(img, "apply_image")

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return self._apply(coords, "apply_coords")

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        return self._apply(box, "apply_box")

    def apply_polygons(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        return self._apply(polygons, "apply_polygons")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._apply(segmentation, "apply_segmentation")

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return self._apply(rotated_boxes, "apply_rotated_box")

    def __getattr__(self, name: str) -> Any:
        # Data types registered later with register_type (apply_<type>) chain through the list.
        if name.startswith("apply_") and name != "apply_" and "transforms" in self.__dict__:
            return lambda x: self._apply(x, name)
        raise AttributeError(f"TransformList has no attribute {name!r}")

    def __add__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        return TransformList(self.transforms + others)

    def __iadd__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        self.transforms.extend(TransformList(others).transforms)
        return self

    def __radd__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        return TransformList(others + self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, idx: int) -> Transform:
        return self.transforms[idx]

    def inverse(self) -> TransformList:
        """Invert each transform and reverse the order."""
        return TransformList([t.inverse() for t in reversed(self.transforms)])

    def __repr__(self) -> str:
        return f"TransformList[{', '.join(repr(t) for t in self.transforms)}]"


class NoOpTransform(Transform):
    """Leaves every kind of data unchanged."""

    def __init__(self) -> None:
        super().__init__()

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return rotated_boxes

    def inverse(self) -> Transform:
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("apply_"):
            return lambda x: x
        raise AttributeError(f"NoOpTransform has no attribute {name!r}")


class HFlipTransform(Transform):
    """Mirrors left-right an image of the given width: x -> width - x."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        # (H, W) and (H, W, C) flip axis 1; batched (N, H, W, C) flips axis -2.
        return np.flip(img, axis=1) if img.ndim <= 3 else np.flip(img, axis=-2)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 0] = self.width - coords[:, 0]
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """Mirror centers; a CCW angle becomes its negative."""
        boxes = np.array(rotated_boxes, dtype=np.float64)
        boxes[:, 0] = self.width - boxes[:, 0]
        boxes[:, 4] = -boxes[:, 4]
        return boxes

    def inverse(self) -> Transform:
        return self


class VFlipTransform(Transform):
    """Mirrors top-bottom an image of the given height: y -> height - y."""

    def __init__(self, height: int) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.flip(img, axis=0) if img.ndim <= 3 else np.flip(img, axis=-3)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 1] = self.height - coords[:, 1]
        return coords

    def inverse(self) -> Transform:
        return self


_PIL_TO_TORCH_MODE = {
    Image.Resampling.NEAREST: "nearest",
    Image.Resampling.BILINEAR: "bilinear",
    Image.Resampling.BICUBIC: "bicubic",
}


class ResizeTransform(Transform):
    """Resizes an image from (h, w) to (new_h, new_w); coords scale by new_w/w and new_h/h."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int | None = None) -> None:
        super().__init__()
        if interp is None:
            interp = Image.Resampling.BILINEAR
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        """Resize with PIL for uint8 images and ``F.interpolate`` otherwise (as Detectron2)."""
        if tuple(img.shape[:2]) != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects an image of size {(self.h, self.w)}, "
                f"got {tuple(img.shape[:2])}"
            )
        if img.ndim > 4:
            raise ValueError(f"ResizeTransform expects at most 4 dims, got shape {img.shape}")
        interp = interp if interp is not None else self.interp
        if img.dtype == np.uint8:
            one_channel = img.ndim > 2 and img.shape[2] == 1
            pil_image = Image.fromarray(img[:, :, 0] if one_channel else img)
            pil_image = pil_image.resize((self.new_w, self.new_h), interp)
            out = np.asarray(pil_image)
            return np.expand_dims(out, -1) if one_channel else out
        if interp not in _PIL_TO_TORCH_MODE:
            raise ValueError(f"interp {interp} is not supported for non-uint8 images")
        tensor = torch.from_numpy(np.ascontiguousarray(img))
        shape = list(tensor.shape)
        shape_4d = shape[:2] + [1] * (4 - len(shape)) + shape[2:]
        tensor = tensor.view(shape_4d).permute(2, 3, 0, 1)  # h, w(, c) -> n, c, h, w
        mode = _PIL_TO_TORCH_MODE[interp]
        align_corners = None if mode == "nearest" else False
        tensor = F.interpolate(
            tensor, (self.new_h, self.new_w), mode=mode, align_corners=align_corners
        )
        shape[:2] = (self.new_h, self.new_w)
        return tensor.permute(2, 3, 0, 1).reshape(shape).numpy()

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.Resampling.NEAREST)

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """Scale (N, 5) rotated boxes; an anisotropic scale changes sizes and angle."""
        boxes = np.array(rotated_boxes, dtype=np.float64)
        sx, sy = self.new_w * 1.0 / self.w, self.new_h * 1.0 / self.h
        boxes[:, 0] *= sx
        boxes[:, 1] *= sy
        theta = boxes[:, 4] * np.pi / 180.0
        c, s = np.cos(theta), np.sin(theta)
        boxes[:, 2] *= np.sqrt(np.square(sx * c) + np.square(sy * s))
        boxes[:, 3] *= np.sqrt(np.square(sx * s) + np.square(sy * c))
        boxes[:, 4] = np.arctan2(sx * s, sy * c) * 180 / np.pi
        return boxes

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class ScaleTransform(Transform):
    """Resizes (h, w) -> (new_h, new_w) with ``F.interpolate`` for every dtype (fvcore's).

    ``interp`` is an ``F.interpolate`` mode name ("nearest", "bilinear", "bicubic", "area");
    uint8 images are resampled in float and rounded back.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: str = "bilinear") -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: str | None = None) -> np.ndarray:
        if img.ndim not in (2, 3, 4):
            raise ValueError(f"ScaleTransform expects 2-4 dims, got shape {img.shape}")
        h, w = img.shape[1:3] if img.ndim == 4 else img.shape[:2]
        if (h, w) != (self.h, self.w):
            raise ValueError(
                f"ScaleTransform expects an image of size {(self.h, self.w)}, got {(h, w)}"
            )
        mode = interp if interp is not None else self.interp
        tensor = torch.from_numpy(np.ascontiguousarray(img))
        if img.ndim == 2:
            tensor = tensor[None, None]  # (H, W) -> (1, 1, H, W)
        elif img.ndim == 3:
            tensor = tensor.permute(2, 0, 1)[None]  # (H, W, C) -> (1, C, H, W)
        else:
            tensor = tensor.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        align_corners = False if mode in ("linear", "bilinear", "bicubic") else None
        out = F.interpolate(
            tensor.float(), size=(self.new_h, self.new_w), mode=mode, align_corners=align_corners
        )
        if img.ndim == 2:
            out = out[0, 0]
        elif img.ndim == 3:
            out = out[0].permute(1, 2, 0)
        else:
            out = out.permute(0, 2, 3, 1)
        if img.dtype == np.uint8:
            return out.round().clamp(0, 255).numpy().astype(np.uint8)
        return out.numpy().astype(img.dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp="nearest")

    def inverse(self) -> Transform:
        return ScaleTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


def _clip_polygon_to_rect(
    polygon: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """Clip a (K, 2) polygon to the rectangle [x0, x1] x [y0, y1] (Sutherland-Hodgman).

    Returns an (M, 2) polygon, M == 0 when nothing remains inside.
    """
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    # Each edge: (axis, bound, keep_greater)
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if len(points) == 0:
            break
        sign = 1.0 if keep_greater else -1.0
        dist = sign * (points[:, axis] - bound)  # >= 0 means inside this half-plane
        prev = np.roll(points, 1, axis=0)
        prev_dist = np.roll(dist, 1)
        out = []
        for p, d, q, dq in zip(points, dist, prev, prev_dist):
            if (d >= 0) != (dq >= 0):  # the edge q -> p crosses the boundary
                t = dq / (dq - d)
                crossing = q + t * (p - q)
                crossing[axis] = bound  # exact on the boundary despite rounding in t
                out.append(crossing)
            if d >= 0:
                out.append(p)
        points = np.array(out, dtype=np.float64).reshape(-1, 2)
    return points


class CropTransform(Transform):
    """Crops the window [x0, x0 + w) x [y0, y0 + h); coords shift by (-x0, -y0)."""

    def __init__(
        self,
        x0: int,
        y0: int,
        w: int,
        h: int,
        orig_w: int | None = None,
        orig_h: int | None = None,
    ) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.ndim <= 3:
            return img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        return img[..., self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w, :]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_polygons(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """Clip each polygon to the crop window, then shift it; empty results are dropped."""
        out = []
        for polygon in polygons:
            clipped = _clip_polygon_to_rect(
                polygon, self.x0, self.y0, self.x0 + self.w, self.y0 + self.h
            )
            if len(clipped) >= 3:
                out.append(self.apply_coords(clipped))
        return out

    def inverse(self) -> Transform:
        """Pad back to the original size; needs ``orig_w`` and ``orig_h``."""
        if self.orig_w is None or self.orig_h is None:
            raise ValueError("CropTransform.inverse() needs orig_w and orig_h, got None")
        pad_x1 = self.orig_w - self.x0 - self.w
        pad_y1 = self.orig_h - self.y0 - self.h
        return PadTransform(self.x0, self.y0, pad_x1, pad_y1, orig_w=self.w, orig_h=self.h)


class PadTransform(Transform):
    """Pads x0/x1 columns left/right and y0/y1 rows top/bottom; coords shift by (x0, y0)."""

    def __init__(
        self,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        orig_w: int | None = None,
        orig_h: int | None = None,
        pad_value: float = 0,
        seg_pad_value: int = 0,
    ) -> None:
        super().__init__()
        self._set_attributes(locals())

    def _pad(self, img: np.ndarray, value: float) -> np.ndarray:
        padding = ((self.y0, self.y1), (self.x0, self.x1))
        if img.ndim == 3:
            padding = padding + ((0, 0),)
        return np.pad(img, padding, mode="constant", constant_values=value)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._pad(img, self.pad_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._pad(segmentation, self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64 if coords.dtype == np.float64 else np.float32)
        coords[:, 0] += self.x0
        coords[:, 1] += self.y0
        return coords

    def inverse(self) -> Transform:
        """Crop the original area back out; needs ``orig_w`` and ``orig_h``."""
        if self.orig_w is None or self.orig_h is None:
            raise ValueError("PadTransform.inverse() needs orig_w and orig_h, got None")
        new_w = self.orig_w + self.x0 + self.x1
        new_h = self.orig_h + self.y0 + self.y1
        return CropTransform(self.x0, self.y0, self.orig_w, self.orig_h, orig_w=new_w, orig_h=new_h)


def _pil_per_channel(img: np.ndarray, func: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply a PIL geometric op to each channel: 'L' for uint8, 'F' for other dtypes."""
    squeeze = img.ndim == 2
    channels = img[:, :, None] if squeeze else img
    outs = []
    for c in range(channels.shape[2]):
        plane = channels[:, :, c]
        if plane.dtype == np.uint8:
            outs.append(np.asarray(func(Image.fromarray(plane))))
        else:
            pil = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
            outs.append(np.asarray(func(pil)).astype(img.dtype))
    out = np.stack(outs, axis=2)
    return out[:, :, 0] if squeeze else out


class ExtentTransform(Transform):
    """Maps the source rectangle ``src_rect`` (x0, y0, x1, y1) onto an output of
    ``output_size`` (h, w), scaling and padding with ``fill`` (PIL's EXTENT transform)."""

    def __init__(
        self,
        src_rect: tuple[float, float, float, float],
        output_size: tuple[int, int],
        interp: int = Image.Resampling.BILINEAR,
        fill: float = 0,
    ) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        h, w = self.output_size
        resample = interp if interp is not None else self.interp

        def extent(pil: Image.Image) -> Image.Image:
            return pil.transform(
                size=(w, h),
                method=Image.Transform.EXTENT,
                data=tuple(float(v) for v in self.src_rect),
                resample=resample,
                fillcolor=self.fill,
            )

        return _pil_per_channel(img, extent)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        h, w = self.output_size
        x0, y0, x1, y1 = self.src_rect
        out = np.array(coords, dtype=np.float32)
        out[:, 0] = (out[:, 0] - 0.5 * (x0 + x1)) * (w / (x1 - x0)) + 0.5 * w
        out[:, 1] = (out[:, 1] - 0.5 * (y0 + y1)) * (h / (y1 - y0)) + 0.5 * h
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.Resampling.NEAREST)


def _rotation_matrix(center: tuple[float, float], angle: float) -> np.ndarray:
    """(2, 3) affine matrix rotating by ``angle`` degrees CCW (as seen on screen) about center.

    Same matrix as OpenCV's ``getRotationMatrix2D(center, angle, 1)``.
    """
    a, b = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    cx, cy = center
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])


class RotationTransform(Transform):
    """Rotates an (h, w) image by ``angle`` degrees counter-clockwise about ``center``.

    With ``expand`` the output grows to hold the whole rotated image (Detectron2's
    ``RotationTransform``, bound sizes rounded with ``np.rint``); otherwise it keeps (h, w).
    Images are resampled with PIL's affine transform; coords use the same matrix.
    """

    def __init__(
        self,
        h: int,
        w: int,
        angle: float,
        expand: bool = True,
        center: tuple[float, float] | None = None,
        interp: int | None = None,
    ) -> None:
        super().__init__()
        image_center = np.array((w / 2, h / 2))
        if center is None:
            center = image_center
        if interp is None:
            interp = Image.Resampling.BILINEAR
        abs_cos, abs_sin = abs(np.cos(np.deg2rad(angle))), abs(np.sin(np.deg2rad(angle)))
        if expand:
            bound_w, bound_h = np.rint(
                [h * abs_sin + w * abs_cos, h * abs_cos + w * abs_sin]
            ).astype(int)
        else:
            bound_w, bound_h = w, h
        self._set_attributes(locals())
        self.bound_w, self.bound_h = int(bound_w), int(bound_h)
        self.rm_coords = self.create_rotation_matrix()

    def create_rotation_matrix(self, offset: float = 0) -> np.ndarray:
        """(2, 3) matrix from input to output coords; ``offset`` shifts the pixel origin."""
        center = (self.center[0] + offset, self.center[1] + offset)
        rm = _rotation_matrix(center, self.angle)
        if self.expand:
            # Move the rotated image center to the center of the expanded canvas.
            src = self.image_center + offset
            rot_im_center = rm[:, :2] @ src + rm[:, 2]
            new_center = np.array([self.bound_w / 2, self.bound_h / 2]) + offset - rot_im_center
            rm[:, 2] += new_center
        return rm

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        if len(img) == 0 or self.angle % 360 == 0:
            return img
        if tuple(img.shape[:2]) != (self.h, self.w):
            raise ValueError(
                f"RotationTransform expects an image of size {(self.h, self.w)}, "
                f"got {tuple(img.shape[:2])}"
            )
        # PIL samples at pixel centers in continuous coordinates (x + 0.5), the same frame
        # as rm_coords, and wants the output -> input map.
        full = np.vstack([self.rm_coords, [0.0, 0.0, 1.0]])
        inv = np.linalg.inv(full)[:2].flatten()
        resample = interp if interp is not None else self.interp

        def rotate(pil: Image.Image) -> Image.Image:
            return pil.transform(
                (self.bound_w, self.bound_h),
                Image.Transform.AFFINE,
                data=tuple(float(v) for v in inv),
                resample=resample,
                fillcolor=0,
            )

        return _pil_per_channel(img, rotate)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=float)
        if len(coords) == 0 or self.angle % 360 == 0:
            return coords
        return coords @ self.rm_coords[:, :2].T + self.rm_coords[:, 2]

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.Resampling.NEAREST)

    def inverse(self) -> Transform:
        """Rotate back by -angle (expanding), then crop the original (h, w) out of the middle."""
        if not self.expand:
            raise ValueError("RotationTransform.inverse() needs expand=True")
        rotation = RotationTransform(
            self.bound_h, self.bound_w, -self.angle, True, None, self.interp
        )
        crop = CropTransform(
            (rotation.bound_w - self.w) // 2, (rotation.bound_h - self.h) // 2, self.w, self.h
        )
        return TransformList([rotation, crop])


class ColorTransform(Transform):
    """Applies ``op(image) -> image`` to images only; geometry and masks are unchanged."""

    def __init__(self, op: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        if not callable(op):
            raise TypeError(f"ColorTransform: op must be callable, got {type(op).__name__}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self.op(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()


class PILColorTransform(ColorTransform):
    """Like ``ColorTransform`` but ``op`` takes and returns a PIL image (uint8 input)."""

    def __init__(self, op: Callable[[Image.Image], Image.Image]) -> None:
        super().__init__(op)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(self.op(Image.fromarray(img)))


class BlendTransform(Transform):
    """Blends images: ``src_weight * src_image + dst_weight * image``.

    uint8 images are blended in float32 and clipped back to [0, 255]; geometry is unchanged.
    """

    def __init__(self, src_image: np.ndarray | float, src_weight: float, dst_weight: float) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype == np.uint8:
            blended = self.src_weight * self.src_image + self.dst_weight * img.astype(np.float32)
            return np.clip(blended, 0, 255).astype(np.uint8)
        return self.src_weight * self.src_image + self.dst_weight * img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return NoOpTransform()
