"""`ImageList`: images of different sizes padded into one batch tensor, with their sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["ImageList"]


class ImageList:
    """A batch of images of possibly different sizes, padded to a common size.

    Attributes:
        tensor: (N, C, H, W) (or (N, H, W) for 2-D images) padded batch.
        image_sizes: the (h, w) of each image before padding; image i occupies
            tensor[i, ..., :h, :w].
    """

    def __init__(self, tensor: Tensor, image_sizes: list[tuple[int, int]]) -> None:
        """
        Args:
            tensor: (N, C, H, W) or (N, H, W) padded images.
            image_sizes: N (h, w) sizes; each must fit within (H, W).
        """
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> Tensor:
        """Return image `idx` without its padding: (C, h, w) (or (h, w))."""
        size = self.image_sizes[idx]
        return self.tensor[idx, ..., : size[0], : size[1]]

    def to(self, *args: Any, **kwargs: Any) -> ImageList:
        """Return the batch converted by `Tensor.to` (device and/or dtype)."""
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        """The device of the batch tensor."""
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: dict[str, int] | None = None,
    ) -> ImageList:
        """Pad images to the same size and stack them, as Detectron2 does.

        The common size is the largest height and the largest width; with
        size_divisibility > 1, both are rounded up to a multiple of it (what an FPN with
        stride-32 levels needs). Padding goes on the bottom and the right.

        Args:
            tensors: N images of shape (C, H_i, W_i) (or (H_i, W_i)), all with the same
                leading dimensions.
            size_divisibility: round the padded size up to a multiple of this (0 or 1: no
                rounding).
            pad_value: value of the padding pixels.
            padding_constraints: optional dict. "size_divisibility", if present, replaces the
                argument; "square_size" > 0 pads to a square of that side (then rounded to
                the divisibility), which must hold every image.

        Returns:
            ImageList with tensor (N, C, H, W) (or (N, H, W)) and image_sizes as (h, w) ints.
        """
        _check_tensors(tensors)
        image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in tensors]
        max_h = max(h for h, _ in image_sizes)
        max_w = max(w for _, w in image_sizes)

        if padding_constraints is not None:
            square_size = int(padding_constraints.get("square_size", 0))
            if square_size > 0:
                if max_h > square_size or max_w > square_size:
                    raise ValueError(
                        f"ImageList.from_tensors: padding_constraints square_size={square_size} "
                        f"is smaller than the largest image ({max_h}, {max_w})"
                    )
                max_h = max_w = square_size
            if "size_divisibility" in padding_constraints:
                size_divisibility = padding_constraints["size_divisibility"]
        if size_divisibility > 1:
            stride = int(size_divisibility)
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride

        if len(tensors) == 1:
            # F.pad on a single image is slightly faster than copying into a new batch.
            h, w = image_sizes[0]
            padding = [0, max_w - w, 0, max_h - h]  # (left, right, top, bottom)
            batched = F.pad(tensors[0], padding, value=pad_value).unsqueeze_(0)
        else:
            batch_shape = [len(tensors), *tensors[0].shape[:-2], max_h, max_w]
            batched = tensors[0].new_full(batch_shape, pad_value)
            for i, img in enumerate(tensors):
                batched[i, ..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)


def _check_tensors(tensors: Sequence[Tensor]) -> None:
    """Raise unless `tensors` is a non-empty list of >= 2-D tensors with equal leading dims."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(
            f"ImageList.from_tensors: tensors must be a list of Tensors, got {type(tensors).__name__}"
        )
    if len(tensors) == 0:
        raise ValueError("ImageList.from_tensors: tensors is empty; need at least one image")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"ImageList.from_tensors: tensors[{i}] is a {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"ImageList.from_tensors: tensors[{i}] must be (..., H, W), got {tuple(t.shape)}"
            )
        if t.shape[:-2] != tensors[0].shape[:-2]:
            raise ValueError(
                f"ImageList.from_tensors: tensors[{i}] has shape {tuple(t.shape)}, but all images "
                f"need the leading dims of tensors[0] {tuple(tensors[0].shape[:-2])}"
            )
