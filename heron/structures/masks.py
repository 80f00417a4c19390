"""Instance masks: full-image bitmaps (`BitMasks`), COCO polygons (`PolygonMasks`) and
per-box low-resolution masks (`ROIMasks`), plus polygon rasterization helpers.

Polygons are rasterized with pycocotools (`frPyObjects` -> `merge` -> `decode`), exactly as
Detectron2 does, so training targets built from polygons match Detectron2's pixel for pixel.

Shapes:
    N: number of instances; H, W: image height and width; M: mask side (mask_size).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor
from torchvision.ops import roi_align

from heron.structures.boxes import Boxes

__all__ = [
    "BitMasks",
    "PolygonMasks",
    "ROIMasks",
    "polygon_area",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
]


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Return the area of a simple polygon by the shoelace formula (absolute value).

    Args:
        x, y: (K,) vertex coordinates, in order around the polygon.
    """
    return 0.5 * np.abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def polygons_to_bitmask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterize the union of an instance's polygons with pycocotools.

    Args:
        polygons: the polygons of one instance, each a flat (2K,) array x0, y0, x1, y1, ...
            in absolute pixels.
        height, width: size of the output mask.

    Returns:
        (height, width) bool mask; all False when `polygons` is empty.
    """
    if len(polygons) == 0:  # pycocotools cannot rasterize an empty list
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects(polygons, height, width)
    rle = mask_util.merge(rles)
    return mask_util.decode(rle).astype(bool)


def rasterize_polygons_within_box(
    polygons: list[np.ndarray], box: np.ndarray, mask_size: int
) -> Tensor:
    """Rasterize an instance's polygons inside a box, at mask_size x mask_size resolution.

    This makes a Mask R-CNN training target for one proposal box. As in Detectron2, the
    polygons are shifted by the box's top-left corner, scaled by mask_size / box size (box
    sides below 0.1 pixel count as 0.1), then rasterized.

    Args:
        polygons: the polygons of one instance, each a flat (2K,) float array.
        box: (4,) XYXY box, absolute pixels.
        mask_size: side M of the output.

    Returns:
        (M, M) bool tensor on the CPU.
    """
    w, h = box[2] - box[0], box[3] - box[1]
    polygons = copy.deepcopy(polygons)
    for p in polygons:
        p[0::2] = p[0::2] - box[0]
        p[1::2] = p[1::2] - box[1]

    ratio_h = mask_size / max(h, 0.1)
    ratio_w = mask_size / max(w, 0.1)
    if ratio_h == ratio_w:  # same branch structure as Detectron2, for identical rounding
        for p in polygons:
            p *= ratio_h
    else:
        for p in polygons:
            p[0::2] *= ratio_w
            p[1::2] *= ratio_h

    mask = polygons_to_bitmask(polygons, mask_size, mask_size)
    return torch.from_numpy(mask)


def _boxes_tensor(boxes: Tensor | Boxes, owner: str, expected_len: int) -> Tensor:
    """Return boxes as an (N, 4) tensor, checking N against the number of masks."""
    tensor = boxes.tensor if isinstance(boxes, Boxes) else boxes
    if not isinstance(tensor, Tensor) or tensor.dim() != 2 or tensor.shape[1] != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{owner}: boxes must be an (N, 4) tensor, got {shape}")
    if tensor.shape[0] != expected_len:
        raise ValueError(
            f"{owner}: got {tensor.shape[0]} boxes for {expected_len} masks; need one box per mask"
        )
    return tensor


class BitMasks:
    """Instance masks of one image as bitmaps.

    Attributes:
        tensor: (N, H, W) bool masks.
        image_size: (H, W) as a torch.Size.
    """

    def __init__(self, tensor: Tensor | np.ndarray) -> None:
        """
        Args:
            tensor: (N, H, W) masks, converted to bool (nonzero is True). A Tensor keeps its
                device; anything else goes to the CPU.
        """
        if isinstance(tensor, Tensor):
            tensor = tensor.to(torch.bool)
        else:
            tensor = torch.as_tensor(tensor, dtype=torch.bool, device=torch.device("cpu"))
        if tensor.dim() != 3:
            raise ValueError(
                f"BitMasks: tensor must have shape (N, H, W), got {tuple(tensor.shape)}"
            )
        self.image_size = tensor.shape[1:]
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> BitMasks:
        """Return the masks converted by `Tensor.to` (e.g. to another device)."""
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        """The device of the mask tensor."""
        return self.tensor.device

    def __getitem__(self, item: int | slice | Tensor) -> BitMasks:
        """Select masks: an int gives BitMasks of length 1; also slices, bool masks and long
        index tensors. The result may share storage with this object."""
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        m = self.tensor[item]
        if m.dim() != 3:
            raise ValueError(f"BitMasks: indexing with {item!r} gave shape {tuple(m.shape)}")
        return BitMasks(m)

    def __iter__(self) -> Iterator[Tensor]:
        """Yield each mask as an (H, W) bool tensor."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, image_size={tuple(self.image_size)})"

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def nonempty(self) -> Tensor:
        """Return an (N,) bool tensor: True for masks with at least one True pixel."""
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> Tensor:
        """Return the (N,) int64 number of True pixels of each mask (not in Detectron2)."""
        return self.tensor.flatten(1).sum(dim=1)

    @staticmethod
    def from_polygon_masks(
        polygon_masks: PolygonMasks | list[list[np.ndarray]], height: int, width: int
    ) -> BitMasks:
        """Rasterize polygon masks (PolygonMasks or lists of polygons) at (height, width)."""
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks]
        if len(masks) == 0:
            return BitMasks(torch.empty(0, height, width, dtype=torch.bool))
        return BitMasks(torch.stack([torch.from_numpy(m) for m in masks]))

    @staticmethod
    def from_roi_masks(roi_masks: ROIMasks, height: int, width: int) -> BitMasks:
        """Paste ROI masks that each cover the whole (height, width) image.

        Detectron2's version calls ``roi_masks.to_bitmasks(height, width)``, which cannot
        run because `to_bitmasks` also needs the boxes. With only the image size given,
        the one consistent reading is that every ROI is the whole image, i.e. the box
        (0, 0, width, height); masks with their own boxes use `ROIMasks.to_bitmasks`.
        """
        boxes = torch.tensor(
            [[0.0, 0.0, float(width), float(height)]], device=roi_masks.device
        ).expand(len(roi_masks), 4)
        return roi_masks.to_bitmasks(boxes, height, width)

    def crop_and_resize(self, boxes: Tensor | Boxes, mask_size: int) -> Tensor:
        """Crop each mask to its box and resize to mask_size x mask_size.

        Computed as Detectron2 does: ROIAlign (aligned=True, spatial_scale 1, adaptive
        sampling) of the float masks, then >= 0.5.

        Args:
            boxes: (N, 4) XYXY boxes, absolute pixels; boxes[i] crops mask i.
            mask_size: side M of the result.

        Returns:
            (N, M, M) bool tensor on the masks' device.
        """
        boxes = _boxes_tensor(boxes, "BitMasks.crop_and_resize", len(self))
        device = self.tensor.device
        batch_inds = torch.arange(len(boxes), device=device).to(dtype=boxes.dtype)[:, None]
        rois = torch.cat([batch_inds, boxes.to(device=device)], dim=1)  # (N, 5)
        bit_masks = self.tensor.to(dtype=torch.float32)[:, None, :, :]  # (N, 1, H, W)
        output = roi_align(
            bit_masks,
            rois.to(dtype=bit_masks.dtype),
            (mask_size, mask_size),
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        ).squeeze(1)
        return output >= 0.5

    def get_bounding_boxes(self) -> Boxes:
        """Return the tight XYXY box of each mask's True pixels; (0, 0, 0, 0) if empty.

        A mask whose True pixels span columns x0..x1 and rows y0..y1 (inclusive) gets the
        box (x0, y0, x1 + 1, y1 + 1): pixels are unit squares.
        """
        n = self.tensor.shape[0]
        boxes = torch.zeros(n, 4, dtype=torch.float32, device=self.tensor.device)
        if n == 0:
            return Boxes(boxes)
        x_any = self.tensor.any(dim=1)  # (N, W): columns with a True pixel
        y_any = self.tensor.any(dim=2)  # (N, H): rows with a True pixel
        nonempty = x_any.any(dim=1)
        xs = torch.arange(x_any.shape[1], device=self.tensor.device)
        ys = torch.arange(y_any.shape[1], device=self.tensor.device)
        big = max(x_any.shape[1], y_any.shape[1])
        x0 = torch.where(x_any, xs, big).amin(dim=1)
        x1 = torch.where(x_any, xs, -1).amax(dim=1) + 1
        y0 = torch.where(y_any, ys, big).amin(dim=1)
        y1 = torch.where(y_any, ys, -1).amax(dim=1) + 1
        found = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
        boxes = torch.where(nonempty[:, None], found, boxes)
        return Boxes(boxes)

    @staticmethod
    def cat(bitmasks_list: list[BitMasks]) -> BitMasks:
        """Concatenate a non-empty list of BitMasks of the same image size."""
        if not isinstance(bitmasks_list, (list, tuple)) or len(bitmasks_list) == 0:
            raise ValueError("BitMasks.cat: expected a non-empty list of BitMasks")
        for i, m in enumerate(bitmasks_list):
            if not isinstance(m, BitMasks):
                raise TypeError(f"BitMasks.cat: element {i} is a {type(m).__name__}")
        return type(bitmasks_list[0])(torch.cat([m.tensor for m in bitmasks_list], dim=0))


def _as_polygon_array(polygon: Any) -> np.ndarray:
    """A polygon as a flat float64 array (tensors are moved to the CPU)."""
    if isinstance(polygon, Tensor):
        polygon = polygon.detach().cpu().numpy()
    return np.asarray(polygon, dtype=np.float64).reshape(-1)


class PolygonMasks:
    """Instance masks of one image as COCO-style polygons, kept on the CPU.

    Attributes:
        polygons: list over instances of lists of polygons; each polygon is a flat float64
            array (x0, y0, x1, y1, ...) of at least 3 points.
    """

    def __init__(self, polygons: list[list[np.ndarray | Tensor | Sequence[float]]]) -> None:
        """
        Args:
            polygons: for each instance, the list of its polygons, each a flat sequence
                (x0, y0, x1, y1, ..., xn, yn) of an even number (>= 6) of coordinates, as an
                np.ndarray, a Tensor or a list of numbers.
        """
        if not isinstance(polygons, (list, tuple)):
            raise TypeError(
                "PolygonMasks: expected a list (one entry per instance) of lists of polygons, "
                f"got {type(polygons).__name__}"
            )
        self.polygons: list[list[np.ndarray]] = [
            self._process_instance(i, p) for i, p in enumerate(polygons)
        ]

    @staticmethod
    def _process_instance(index: int, polygons_per_instance: Any) -> list[np.ndarray]:
        if not isinstance(polygons_per_instance, (list, tuple)):
            raise TypeError(
                f"PolygonMasks: instance {index} must be a list of polygons, "
                f"got {type(polygons_per_instance).__name__}"
            )
        arrays = [_as_polygon_array(p) for p in polygons_per_instance]
        for j, polygon in enumerate(arrays):
            if len(polygon) % 2 != 0 or len(polygon) < 6:
                raise ValueError(
                    f"PolygonMasks: instance {index}, polygon {j} has {len(polygon)} coordinates; "
                    "a polygon needs an even number, at least 6 (3 points x, y)"
                )
        return arrays

    @classmethod
    def _wrap(cls, polygons: list[list[np.ndarray]]) -> PolygonMasks:
        """Build from already validated polygons (indexing and cat), without re-checking."""
        masks = cls.__new__(cls)
        masks.polygons = polygons
        return masks

    def to(self, *args: Any, **kwargs: Any) -> PolygonMasks:
        """Return self: polygons always stay on the CPU (many tiny arrays)."""
        return self

    @property
    def device(self) -> torch.device:
        """Always the CPU."""
        return torch.device("cpu")

    def get_bounding_boxes(self) -> Boxes:
        """Return the tight XYXY box of each instance's polygon vertices.

        As in Detectron2, the running maximum starts at 0 and the minimum at +inf, so an
        instance with no polygon gets (inf, inf, 0, 0).
        """
        boxes = torch.zeros(len(self.polygons), 4, dtype=torch.float32)
        for idx, polygons_per_instance in enumerate(self.polygons):
            minxy = torch.as_tensor([float("inf"), float("inf")], dtype=torch.float32)
            maxxy = torch.zeros(2, dtype=torch.float32)
            for polygon in polygons_per_instance:
                coords = torch.from_numpy(polygon).view(-1, 2).to(dtype=torch.float32)
                minxy = torch.min(minxy, coords.min(dim=0).values)
                maxxy = torch.max(maxxy, coords.max(dim=0).values)
            boxes[idx, :2] = minxy
            boxes[idx, 2:] = maxxy
        return Boxes(boxes)

    def nonempty(self) -> Tensor:
        """Return an (N,) bool tensor: True for instances with at least one polygon."""
        return torch.tensor([len(p) > 0 for p in self.polygons], dtype=torch.bool)

    def __getitem__(self, item: int | slice | list[int] | Tensor) -> PolygonMasks:
        """Select instances by an int (length-1 result), a slice, a list of ints, an (N,)
        bool tensor or an int32/int64 index tensor."""
        if isinstance(item, (int, np.integer)):
            selected = [self.polygons[int(item)]]
        elif isinstance(item, slice):
            selected = self.polygons[item]
        elif isinstance(item, list):
            selected = [self.polygons[i] for i in item]
        elif isinstance(item, Tensor):
            if item.dtype == torch.bool:
                if item.dim() != 1 or item.shape[0] != len(self):
                    raise ValueError(
                        f"PolygonMasks: a bool index must have shape ({len(self)},), "
                        f"got {tuple(item.shape)}"
                    )
                indices = item.nonzero().squeeze(1).cpu().tolist()
            elif item.dtype in (torch.int32, torch.int64):
                indices = item.cpu().reshape(-1).tolist()
            else:
                raise ValueError(f"PolygonMasks: cannot index with a tensor of dtype {item.dtype}")
            selected = [self.polygons[i] for i in indices]
        else:
            raise TypeError(f"PolygonMasks: cannot index with {type(item).__name__}")
        return self._wrap(selected)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        """Yield the list of polygons (flat float64 arrays) of each instance."""
        return iter(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self.polygons)})"

    def __len__(self) -> int:
        return len(self.polygons)

    def crop_and_resize(self, boxes: Tensor | Boxes, mask_size: int) -> Tensor:
        """Rasterize each instance inside its box at mask_size x mask_size.

        Args:
            boxes: (N, 4) XYXY boxes, absolute pixels; boxes[i] is used for instance i.
            mask_size: side M of the result.

        Returns:
            (N, M, M) bool tensor on the boxes' device.
        """
        boxes = _boxes_tensor(boxes, "PolygonMasks.crop_and_resize", len(self))
        device = boxes.device
        # Rasterization runs on the CPU: polygons are many tiny arrays.
        boxes_cpu = boxes.to(torch.device("cpu"))
        results = [
            rasterize_polygons_within_box(poly, box.numpy(), mask_size)
            for poly, box in zip(self.polygons, boxes_cpu)
        ]
        if len(results) == 0:
            return torch.empty(0, mask_size, mask_size, dtype=torch.bool, device=device)
        return torch.stack(results, dim=0).to(device=device)

    def area(self) -> Tensor:
        """Return the (N,) float64 sum of the shoelace areas of each instance's polygons.

        As in Detectron2, overlapping polygons (or holes) are not accounted for.
        """
        areas = [
            float(sum(polygon_area(p[0::2], p[1::2]) for p in polygons_per_instance))
            for polygons_per_instance in self.polygons
        ]
        return torch.tensor(areas, dtype=torch.float64)

    @staticmethod
    def cat(polymasks_list: list[PolygonMasks]) -> PolygonMasks:
        """Concatenate a list of PolygonMasks; an empty list gives an empty PolygonMasks."""
        if not isinstance(polymasks_list, (list, tuple)):
            raise TypeError(
                f"PolygonMasks.cat: expected a list, got {type(polymasks_list).__name__}"
            )
        for i, m in enumerate(polymasks_list):
            if not isinstance(m, PolygonMasks):
                raise TypeError(f"PolygonMasks.cat: element {i} is a {type(m).__name__}")
        cls = type(polymasks_list[0]) if polymasks_list else PolygonMasks
        return cls._wrap(list(itertools.chain.from_iterable(m.polygons for m in polymasks_list)))


class ROIMasks:
    """Per-box masks: N small (M, M) masks, each covering its own box in the image.

    Pasting each mask into its box (`to_bitmasks`) gives full-image `BitMasks`.

    Attributes:
        tensor: (N, M, M) masks (soft values in [0, 1] or bool).
    """

    def __init__(self, tensor: Tensor) -> None:
        if not isinstance(tensor, Tensor) or tensor.dim() != 3:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"ROIMasks: tensor must have shape (N, M, M), got {shape}")
        self.tensor = tensor

    def to(self, device: torch.device | str) -> ROIMasks:
        """Return the masks on `device`."""
        return ROIMasks(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        """The device of the mask tensor."""
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: int | slice | Tensor) -> ROIMasks:
        """Select masks by a slice, bool mask or index tensor; an int gives length 1
        (Detectron2 rejects ints here; we follow the other structures)."""
        if isinstance(item, int):
            return ROIMasks(self.tensor[item].unsqueeze(0))
        t = self.tensor[item]
        if t.dim() != 3:
            raise ValueError(f"ROIMasks: indexing with {item!r} gave shape {tuple(t.shape)}")
        return ROIMasks(t)

    def __repr__(self) -> str:
        return f"ROIMasks(num_instances={len(self)})"

    def to_bitmasks(
        self, boxes: Tensor | Boxes, height: int, width: int, threshold: float = 0.5
    ) -> BitMasks:
        """Paste every mask into its box of a (height, width) image.

        Args:
            boxes: (N, 4) XYXY boxes, absolute pixels, as a Tensor or Boxes.
            height, width: image size.
            threshold: pixels whose pasted value is >= threshold are True.

        Returns:
            BitMasks of shape (N, height, width).
        """
        # The one place where structures reaches into layers, as in Detectron2: imported
        # here so that importing heron.structures never imports heron.layers.
        from heron.layers.mask_ops import paste_masks_in_image

        boxes = _boxes_tensor(boxes, "ROIMasks.to_bitmasks", self.tensor.shape[0])
        masks = self.tensor if self.tensor.is_floating_point() else self.tensor.float()
        return BitMasks(paste_masks_in_image(masks, boxes, (height, width), threshold=threshold))
