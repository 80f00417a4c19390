"""Axis-aligned boxes: the `BoxMode` conventions, the `Boxes` container and pairwise geometry.

Boxes are XYXY in absolute pixels: (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 for a
valid box, where (x0, y0) is the top-left and (x1, y1) the bottom-right corner. The
area of a box is (x1 - x0) * (y1 - y0), with no "+ 1" (Detectron2's convention).

Shapes:
    N, M: numbers of boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BoxMode",
    "Boxes",
    "matched_pairwise_iou",
    "pairwise_intersection",
    "pairwise_ioa",
    "pairwise_iou",
    "pairwise_point_box_distance",
]

RawBoxType = TypeVar("RawBoxType", list, tuple, np.ndarray, Tensor)


def _is_tracing_or_compiling() -> bool:
    """True while torch.jit traces, torch.compile compiles or torch.export exports.

    Data-dependent checks (a host sync plus a Python branch on a tensor value) break or
    slow down graph capture, so validation is skipped then.
    """
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    is_compiling = getattr(compiler, "is_compiling", None)
    is_exporting = getattr(compiler, "is_exporting", None)
    return bool((is_compiling and is_compiling()) or (is_exporting and is_exporting()))


class BoxMode(IntEnum):
    """How the four (or five) numbers of a box are to be read.

    XYXY_ABS: (x0, y0, x1, y1) in absolute pixels.
    XYWH_ABS: (x0, y0, w, h) in absolute pixels.
    XYXY_REL, XYWH_REL: the same, as fractions of the image size (not supported by
        `convert`, as in Detectron2).
    XYWHA_ABS: (xc, yc, w, h, a) in absolute pixels, a rotated box whose centre is
        (xc, yc) and whose angle `a` is in degrees, counter-clockwise.
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: RawBoxType, from_mode: BoxMode, to_mode: BoxMode) -> RawBoxType:
        """Convert boxes from one mode to another, returning the input's type.

        Conversions between XYXY_ABS, XYWH_ABS and XYWHA_ABS are supported. A rotated box
        becomes its axis-aligned bounding box (Detectron2's `BoxMode.convert`, computed in
        float64); an axis-aligned box becomes a rotated box of angle 0.

        Args:
            box: one box as a list or tuple of 4 or 5 numbers, or (N, 4) / (N, 5) boxes as an
                np.ndarray or a Tensor. The input is never modified.
            from_mode, to_mode: the modes of the input and of the result.

        Returns:
            The converted box(es), of the same type as `box` (the same object when the two
            modes are equal). Arrays and tensors keep their dtype (and device).
        """
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        relative = (BoxMode.XYXY_REL, BoxMode.XYWH_REL)
        if from_mode in relative or to_mode in relative:
            raise ValueError(
                f"BoxMode.convert: relative modes are not supported, got from_mode={from_mode.name}, "
                f"to_mode={to_mode.name}; convert to absolute pixels first"
            )

        original_type = type(box)
        single_box = isinstance(box, (list, tuple))
        is_numpy = isinstance(box, np.ndarray)
        if single_box:
            if len(box) not in (4, 5):
                raise ValueError(
                    f"BoxMode.convert: a single box must have 4 or 5 numbers, got {len(box)}: {box}"
                )
            arr = torch.tensor(box)[None, :]
        elif is_numpy:
            arr = torch.from_numpy(np.asarray(box)).clone()  # never modify the caller's array
        elif isinstance(box, Tensor):
            arr = box.clone()
        else:
            raise TypeError(
                "BoxMode.convert: box must be a list, tuple, np.ndarray or Tensor, "
                f"got {type(box).__name__}"
            )
        if arr.dim() == 0 or arr.shape[-1] not in (4, 5):
            raise ValueError(
                f"BoxMode.convert: boxes must have shape (N, 4) or (N, 5), got {tuple(arr.shape)}"
            )
        if from_mode == BoxMode.XYWHA_ABS and arr.shape[-1] != 5:
            raise ValueError(
                f"BoxMode.convert: XYWHA_ABS boxes must have 5 numbers (xc, yc, w, h, angle), "
                f"got shape {tuple(arr.shape)}"
            )

        if from_mode == BoxMode.XYWHA_ABS:
            arr = _xywha_to_xyxy(arr)
            if to_mode == BoxMode.XYWH_ABS:
                arr = _xyxy_to_xywh(arr)
        elif to_mode == BoxMode.XYWHA_ABS:
            if from_mode == BoxMode.XYXY_ABS:
                arr = _xyxy_to_xywh(arr)
            arr = _xywh_to_xywha(arr)
        elif from_mode == BoxMode.XYWH_ABS:  # to XYXY_ABS
            arr[..., 2] += arr[..., 0]
            arr[..., 3] += arr[..., 1]
        else:  # XYXY_ABS to XYWH_ABS
            arr = _xyxy_to_xywh(arr)

        if single_box:
            return original_type(arr.flatten().tolist())
        if is_numpy:
            return arr.numpy()
        return arr


def _xyxy_to_xywh(arr: Tensor) -> Tensor:
    """(..., 4+) XYXY -> XYWH, in place on `arr` (a private copy)."""
    arr[..., 2] -= arr[..., 0]
    arr[..., 3] -= arr[..., 1]
    return arr


def _xywha_to_xyxy(arr: Tensor) -> Tensor:
    """(..., 5) rotated boxes -> (..., 4) XYXY of their axis-aligned bounding boxes.

    Same arithmetic as Detectron2 (float64, angle in degrees, |cos| and |sin| weights).
    """
    original_dtype = arr.dtype
    arr = arr.double()
    w, h, a = arr[..., 2], arr[..., 3], arr[..., 4]
    c = torch.abs(torch.cos(a * math.pi / 180.0))
    s = torch.abs(torch.sin(a * math.pi / 180.0))
    new_w = c * w + s * h  # width of the bounding rectangle of the rotated box
    new_h = c * h + s * w
    arr[..., 0] -= new_w / 2.0  # centre -> top-left corner
    arr[..., 1] -= new_h / 2.0
    arr[..., 2] = arr[..., 0] + new_w
    arr[..., 3] = arr[..., 1] + new_h
    return arr[..., :4].to(dtype=original_dtype)


def _xywh_to_xywha(arr: Tensor) -> Tensor:
    """(..., 4) XYWH -> (..., 5) rotated boxes of angle 0 (float64 arithmetic, as Detectron2)."""
    original_dtype = arr.dtype
    arr = arr.double()
    arr[..., 0] += arr[..., 2] / 2.0
    arr[..., 1] += arr[..., 3] / 2.0
    angles = arr.new_zeros(arr.shape[:-1] + (1,))
    return torch.cat((arr[..., :4], angles), dim=-1).to(dtype=original_dtype)


class Boxes:
    """A list of N axis-aligned boxes, stored as an (N, 4) float32 tensor, XYXY absolute.

    Supports the common box operations (area, clip, nonempty, ...) and behaves like a
    tensor of boxes for indexing, `len` and iteration.

    Validation: the constructor checks the shape and rejects NaN coordinates, naming the
    first bad row. The NaN check is a host sync, so it is skipped while tracing, compiling
    or exporting, and on boxes derived from an existing `Boxes` (indexing, `clone`, `to`,
    `cat`), which were validated when first built; hot paths do not re-validate.

    Attributes:
        tensor: (N, 4) float32 boxes, XYXY absolute pixels.
    """

    def __init__(self, tensor: Tensor | np.ndarray | Sequence[Sequence[float]]) -> None:
        """
        Args:
            tensor: (N, 4) boxes, XYXY absolute pixels, as a Tensor (its device is kept),
                an np.ndarray or nested lists. Converted to float32. An empty input
                (any shape with 0 elements) becomes (0, 4).
        """
        if not isinstance(tensor, Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        else:
            tensor = tensor.to(torch.float32)
        if (tensor.dim() != 2 or tensor.shape[-1] != 4) and tensor.numel() == 0:
            # reshape rather than a new tensor, so the result still depends on the input
            # (keeps traced graphs connected), as Detectron2 does. (N, 4) is left alone, so
            # that torch.export does not guard on whether a data-dependent N is 0.
            tensor = tensor.reshape((-1, 4))
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            raise ValueError(f"Boxes: tensor must have shape (N, 4), got {tuple(tensor.shape)}")
        if not _is_tracing_or_compiling():
            _check_no_nan(tensor, "Boxes")
        self.tensor = tensor

    @classmethod
    def _wrap(cls, tensor: Tensor) -> Boxes:
        """Build from an (N, 4) float32 tensor derived from valid boxes, without re-checking."""
        boxes = cls.__new__(cls)
        boxes.tensor = tensor
        return boxes

    def clone(self) -> Boxes:
        """Return a copy whose tensor does not share storage with this one."""
        return self._wrap(self.tensor.clone())

    def to(self, device: torch.device | str) -> Boxes:
        """Return the boxes on `device` (Detectron2 moves boxes, it never changes their dtype)."""
        return self._wrap(self.tensor.to(device=device))

    @property
    def device(self) -> torch.device:
        """The device of the box tensor."""
        return self.tensor.device

    def area(self) -> Tensor:
        """Return the (N,) areas, (x1 - x0) * (y1 - y0); negative for inverted boxes."""
        box = self.tensor
        return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip the boxes, in place, to the image rectangle [0, width] x [0, height].

        Args:
            box_size: (height, width) of the image.

        Raises:
            ValueError: if a coordinate is infinite or NaN (checked except while tracing,
                compiling or exporting).
        """
        if not _is_tracing_or_compiling():
            finite = torch.isfinite(self.tensor).all(dim=1)
            if not bool(finite.all()):
                row = int(torch.nonzero(~finite)[0, 0])
                raise ValueError(
                    f"Boxes.clip: box {row} is not finite: {self.tensor[row].tolist()}"
                )
        h, w = box_size
        x0 = self.tensor[:, 0].clamp(min=0, max=w)
        y0 = self.tensor[:, 1].clamp(min=0, max=h)
        x1 = self.tensor[:, 2].clamp(min=0, max=w)
        y1 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x0, y0, x1, y1), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> Tensor:
        """Return an (N,) bool tensor: True where both width and height exceed `threshold`."""
        box = self.tensor
        widths = box[:, 2] - box[:, 0]
        heights = box[:, 3] - box[:, 1]
        return (widths > threshold) & (heights > threshold)

    def inside_box(self, box_size: tuple[int, int], boundary_threshold: int = 0) -> Tensor:
        """Return an (N,) bool tensor: True where a box lies inside the image.

        Args:
            box_size: (height, width) of the image.
            boundary_threshold: boxes may reach this many pixels beyond the image edges.
                x0 >= -t, y0 >= -t, x1 < width + t and y1 < height + t (strict on the far
                side, as Detectron2).
        """
        height, width = box_size
        t = boundary_threshold
        return (
            (self.tensor[..., 0] >= -t)
            & (self.tensor[..., 1] >= -t)
            & (self.tensor[..., 2] < width + t)
            & (self.tensor[..., 3] < height + t)
        )

    def get_centers(self) -> Tensor:
        """Return the (N, 2) box centres (x, y)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale the x coordinates by `scale_x` and the y coordinates by `scale_y`, in place."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: list[Boxes] | tuple[Boxes, ...]) -> Boxes:
        """Concatenate a list of Boxes into one; an empty list gives empty (0, 4) Boxes."""
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(f"Boxes.cat: expected a list of Boxes, got {type(boxes_list).__name__}")
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        for i, b in enumerate(boxes_list):
            if not isinstance(b, Boxes):
                raise TypeError(f"Boxes.cat: element {i} is a {type(b).__name__}, not Boxes")
        return cls._wrap(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> Boxes:
        """Select boxes; the result may share storage with this object (torch indexing rules).

        Args:
            item: an int (gives Boxes of length 1, as Detectron2), a slice, an (N,) bool
                mask or a long tensor of indices.
        """
        if isinstance(item, int):
            return self._wrap(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        if b.dim() != 2:
            raise ValueError(
                f"Boxes: indexing with {item!r} gave shape {tuple(b.shape)}, not (K, 4)"
            )
        return self._wrap(b)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        """Yield each box as a (4,) tensor."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"


def _check_no_nan(tensor: Tensor, owner: str) -> None:
    """Raise ValueError naming the first row of `tensor` that contains a NaN."""
    if tensor.numel() == 0:
        return
    bad = torch.isnan(tensor).any(dim=1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"{owner}: box {row} contains NaN: {tensor[row].tolist()} "
            f"({int(bad.sum())} of {tensor.shape[0]} boxes have NaN)"
        )


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """Return the (N, M) intersection areas of every pair of boxes.

    Args:
        boxes1, boxes2: N and M boxes.
    """
    b1, b2 = boxes1.tensor, boxes2.tensor
    width_height = torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])
    width_height.clamp_(min=0)  # (N, M, 2), 0 where the boxes do not overlap
    return width_height.prod(dim=2)


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """Return the (N, M) intersection-over-union of every pair of boxes.

    Pairs that do not overlap (including empty boxes) get IoU 0 rather than 0 / 0.

    Args:
        boxes1, boxes2: N and M boxes.
    """
    area1 = boxes1.area()  # (N,)
    area2 = boxes2.area()  # (M,)
    inter = pairwise_intersection(boxes1, boxes2)
    return torch.where(
        inter > 0,
        inter / (area1[:, None] + area2 - inter),
        torch.zeros(1, dtype=inter.dtype, device=inter.device),
    )


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """Return the (N, M) intersection over the area of the box in `boxes2`, for every pair.

    Non-overlapping pairs get 0.

    Args:
        boxes1, boxes2: N and M boxes; the denominator is the area of boxes2[j].
    """
    area2 = boxes2.area()  # (M,)
    inter = pairwise_intersection(boxes1, boxes2)
    return torch.where(
        inter > 0, inter / area2, torch.zeros(1, dtype=inter.dtype, device=inter.device)
    )


def pairwise_point_box_distance(points: Tensor, boxes: Boxes) -> Tensor:
    """Return the distances from every point to the four sides of every box.

    Args:
        points: (N, 2) points (x, y).
        boxes: M boxes.

    Returns:
        (N, M, 4) distances (left, top, right, bottom) = (x - x0, y - y0, x1 - x, y1 - y);
        all four are positive exactly when the point lies strictly inside the box.
    """
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(
            f"pairwise_point_box_distance: points must be (N, 2), got {tuple(points.shape)}"
        )
    x, y = points.unsqueeze(dim=2).unbind(dim=1)  # each (N, 1)
    x0, y0, x1, y1 = boxes.tensor.unsqueeze(dim=0).unbind(dim=2)  # each (1, M)
    return torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """Return the (N,) IoU of boxes1[i] with boxes2[i].

    As in Detectron2, there is no special case for empty boxes: two empty boxes give
    0 / 0 = NaN.

    Args:
        boxes1, boxes2: N boxes each.
    """
    if len(boxes1) != len(boxes2):
        raise ValueError(
            f"matched_pairwise_iou: boxes1 and boxes2 must have the same length, "
            f"got {len(boxes1)} and {len(boxes2)}"
        )
    area1 = boxes1.area()
    area2 = boxes2.area()
    b1, b2 = boxes1.tensor, boxes2.tensor
    lt = torch.max(b1[:, :2], b2[:, :2])  # (N, 2)
    rb = torch.min(b1[:, 2:], b2[:, 2:])  # (N, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area1 + area2 - inter)
