"""Rotated boxes: the `RotatedBoxes` container and exact rotated-box IoU in pure PyTorch.

A rotated box is (cx, cy, w, h, angle): centre, width, height in absolute pixels and the
angle in degrees, counter-clockwise as seen in the image (y pointing down), Detectron2's
convention. Rotating by `angle` turns the width direction from (1, 0) into
(cos a, -sin a) and the height direction from (0, 1) into (sin a, cos a), so a corner at
offset (u, v) from the centre in the box's own frame lies at

    x = cx + u * cos(a) + v * sin(a),    y = cy - u * sin(a) + v * cos(a).

(5, 3, 4, 2, 90) is therefore the horizontal (5, 3, 4, 2, 0) turned to stand upright.

Shapes:
    N, M: numbers of boxes. P: number of box pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from heron.structures.boxes import Boxes, _check_no_nan, _is_tracing_or_compiling

__all__ = ["RotatedBoxes", "pairwise_iou", "pairwise_iou_rotated"]

# Pairs whose exact intersection is computed in one batch, and the number of (row, column)
# entries screened at once; together they bound the working memory to tens of MiB.
_PAIR_CHUNK = 1 << 14
_SCREEN_CHUNK = 1 << 20


class RotatedBoxes(Boxes):
    """A list of N rotated boxes, stored as an (N, 5) float32 tensor (cx, cy, w, h, angle).

    The angle is in degrees, counter-clockwise in the image (see the module docstring). It
    has no required range; `normalize_angles` maps it to [-180, 180). A subclass of
    `Boxes` as in Detectron2, with every method redefined for rotated boxes.

    Validation: the constructor checks the shape and rejects NaN values, naming the first
    bad row; the NaN check is skipped while tracing or compiling, and for boxes derived
    from existing `RotatedBoxes` (indexing, `clone`, `to`, `cat`).

    Attributes:
        tensor: (N, 5) float32 boxes (cx, cy, w, h, angle in degrees), absolute pixels.
    """

    def __init__(self, tensor: Tensor | np.ndarray | Sequence[Sequence[float]]) -> None:
        """
        Args:
            tensor: (N, 5) rotated boxes as a Tensor (its device is kept), an np.ndarray or
                nested lists. Converted to float32. An empty input becomes (0, 5).
        """
        if not isinstance(tensor, Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        else:
            tensor = tensor.to(torch.float32)
        if tensor.numel() == 0:
            tensor = tensor.reshape((-1, 5))  # reshape keeps a traced graph connected
        if tensor.dim() != 2 or tensor.shape[-1] != 5:
            raise ValueError(
                f"RotatedBoxes: tensor must have shape (N, 5), got {tuple(tensor.shape)}"
            )
        if not _is_tracing_or_compiling():
            _check_no_nan(tensor, "RotatedBoxes")
        self.tensor = tensor

    def clone(self) -> RotatedBoxes:
        """Return a copy whose tensor does not share storage with this one."""
        return self._wrap(self.tensor.clone())

    def to(self, device: torch.device | str) -> RotatedBoxes:
        """Return the boxes on `device` (the dtype stays float32)."""
        return self._wrap(self.tensor.to(device=device))

    @property
    def device(self) -> torch.device:
        """The device of the box tensor."""
        return self.tensor.device

    def area(self) -> Tensor:
        """Return the (N,) areas w * h."""
        return self.tensor[:, 2] * self.tensor[:, 3]

    def normalize_angles(self) -> None:
        """Map every angle, in place, into [-180, 180) degrees (the same box, re-labelled)."""
        self.tensor[:, 4] = (self.tensor[:, 4] + 180.0) % 360.0 - 180.0

    def clip(self, box_size: tuple[int, int], clip_angle_threshold: float = 1.0) -> None:
        """Clip nearly horizontal boxes, in place, to the image [0, width] x [0, height].

        As Detectron2 (for RRPN), only boxes with |angle| <= `clip_angle_threshold` after
        `normalize_angles` are clipped, as if they were horizontal; their angle is kept.
        Other boxes are left alone: a tilted box has no single best clipped version, and
        ROIAlignRotated copes with boxes that leave the image. Angles of all boxes are
        normalized as a side effect.

        Args:
            box_size: (height, width) of the image.
            clip_angle_threshold: in degrees.
        """
        h, w = box_size
        self.normalize_angles()
        idx = torch.where(torch.abs(self.tensor[:, 4]) <= clip_angle_threshold)[0]
        boxes = self.tensor[idx]
        x0 = (boxes[:, 0] - boxes[:, 2] / 2.0).clamp(min=0, max=w)
        y0 = (boxes[:, 1] - boxes[:, 3] / 2.0).clamp(min=0, max=h)
        x1 = (boxes[:, 0] + boxes[:, 2] / 2.0).clamp(min=0, max=w)
        y1 = (boxes[:, 1] + boxes[:, 3] / 2.0).clamp(min=0, max=h)
        self.tensor[idx, 0] = (x0 + x1) / 2.0
        self.tensor[idx, 1] = (y0 + y1) / 2.0
        # min() so that rounding in the round trip never makes a box larger
        self.tensor[idx, 2] = torch.min(boxes[:, 2], x1 - x0)
        self.tensor[idx, 3] = torch.min(boxes[:, 3], y1 - y0)

    def nonempty(self, threshold: float = 0.0) -> Tensor:
        """Return an (N,) bool tensor: True where both w and h exceed `threshold`."""
        return (self.tensor[:, 2] > threshold) & (self.tensor[:, 3] > threshold)

    def inside_box(self, box_size: tuple[int, int], boundary_threshold: int = 0) -> Tensor:
        """Return an (N,) bool tensor: True where a box's axis-aligned hull is in the image.

        The hull of a box has half-extents |cos a| w/2 + |sin a| h/2 along x and
        |cos a| h/2 + |sin a| w/2 along y; it must satisfy x0 >= -t, y0 >= -t,
        x1 < width + t, y1 < height + t (strict on the far side, as Detectron2).

        Args:
            box_size: (height, width) of the image.
            boundary_threshold: t, how far boxes may reach beyond the image edges.
        """
        height, width = box_size
        t = boundary_threshold
        cx, cy = self.tensor[..., 0], self.tensor[..., 1]
        half_w, half_h = self.tensor[..., 2] / 2.0, self.tensor[..., 3] / 2.0
        theta = self.tensor[..., 4] * math.pi / 180.0
        c, s = torch.abs(torch.cos(theta)), torch.abs(torch.sin(theta))
        half_dx = c * half_w + s * half_h
        half_dy = c * half_h + s * half_w
        return (
            (cx - half_dx >= -t)
            & (cy - half_dy >= -t)
            & (cx + half_dx < width + t)
            & (cy + half_dy < height + t)
        )

    def get_centers(self) -> Tensor:
        """Return the (N, 2) box centres (x, y)."""
        return self.tensor[:, :2]

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale the boxes in place by `scale_x` along x and `scale_y` along y.

        Unequal factors turn a tilted rectangle into a parallelogram; as Detectron2, the
        result is the rectangle through the images of the edge midpoints: the half-width
        vector (w/2)(cos a, -sin a) becomes (w/2)(sx cos a, -sy sin a), so
        w' = w sqrt((sx cos a)^2 + (sy sin a)^2); the half-height vector (h/2)(sin a, cos a)
        becomes (h/2)(sx sin a, sy cos a), so h' = h sqrt((sx sin a)^2 + (sy cos a)^2) and
        a' = atan2(sx sin a, sy cos a).
        """
        self.tensor[:, 0] *= scale_x
        self.tensor[:, 1] *= scale_y
        theta = self.tensor[:, 4] * math.pi / 180.0
        c, s = torch.cos(theta), torch.sin(theta)
        self.tensor[:, 2] *= torch.sqrt((scale_x * c) ** 2 + (scale_y * s) ** 2)
        self.tensor[:, 3] *= torch.sqrt((scale_x * s) ** 2 + (scale_y * c) ** 2)
        self.tensor[:, 4] = torch.atan2(scale_x * s, scale_y * c) * 180 / math.pi

    @classmethod
    def cat(cls, boxes_list: list[RotatedBoxes] | tuple[RotatedBoxes, ...]) -> RotatedBoxes:
        """Concatenate a list of RotatedBoxes; an empty list gives empty (0, 5) boxes."""
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(
                f"RotatedBoxes.cat: expected a list of RotatedBoxes, got {type(boxes_list).__name__}"
            )
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        for i, b in enumerate(boxes_list):
            if not isinstance(b, RotatedBoxes):
                raise TypeError(
                    f"RotatedBoxes.cat: element {i} is a {type(b).__name__}, not RotatedBoxes"
                )
        return cls._wrap(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item: int | slice | Tensor | Sequence[int]) -> RotatedBoxes:
        """Select boxes; the result may share storage with this object (torch indexing rules).

        Args:
            item: an int (gives RotatedBoxes of length 1, as Detectron2), a slice, an (N,)
                bool mask or a long tensor of indices.
        """
        if isinstance(item, int):
            return self._wrap(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        if b.dim() != 2:
            raise ValueError(
                f"RotatedBoxes: indexing with {item!r} gave shape {tuple(b.shape)}, not (K, 5)"
            )
        return self._wrap(b)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        """Yield each box as a (5,) tensor."""
        yield from self.tensor

    def __repr__(self) -> str:
        return f"RotatedBoxes({self.tensor})"


def pairwise_iou(boxes1: RotatedBoxes, boxes2: RotatedBoxes) -> Tensor:
    """Return the (N, M) IoU of every pair of rotated boxes (see `pairwise_iou_rotated`)."""
    return pairwise_iou_rotated(boxes1.tensor, boxes2.tensor)


def pairwise_iou_rotated(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Return the exact (N, M) IoU of every pair of rotated boxes.

    The intersection of two rectangles is a convex polygon whose vertices are among the
    corners of each box lying inside the other and the crossings of their edges; those
    candidates are ordered by angle around their mean and summed with the shoelace
    formula. Work is in float64 and vectorized over pairs; pairs whose circumscribed
    circles do not overlap are skipped (IoU 0), and large inputs are processed in chunks
    so memory stays bounded. Boxes with w * h <= 0 have IoU 0 with everything.

    Args:
        boxes1: (N, 5) rotated boxes (cx, cy, w, h, angle in degrees).
        boxes2: (M, 5) rotated boxes.

    Returns:
        (N, M) IoU in [0, 1], in the dtype of `boxes1` (float32 if it is not floating).
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"pairwise_iou_rotated: {name} must have shape (K, 5), got {tuple(boxes.shape)}"
            )
    out_dtype = boxes1.dtype if boxes1.is_floating_point() else torch.float32
    out_device = boxes1.device
    # MPS has no float64: compute on the CPU there.
    device = torch.device("cpu") if out_device.type == "mps" else out_device
    n, m = boxes1.shape[0], boxes2.shape[0]
    ious = torch.zeros((n, m), dtype=torch.float64, device=device)
    if n == 0 or m == 0:
        return ious.to(device=out_device, dtype=out_dtype)
    b1 = boxes1.detach().to(device=device, dtype=torch.float64)
    b2 = boxes2.detach().to(device=device, dtype=torch.float64)
    radius1 = torch.hypot(b1[:, 2], b1[:, 3]) / 2
    radius2 = torch.hypot(b2[:, 2], b2[:, 3]) / 2
    ok1 = b1[:, 2] * b1[:, 3] > 0  # degenerate boxes keep IoU 0
    ok2 = b2[:, 2] * b2[:, 3] > 0
    rows_per_chunk = max(1, _SCREEN_CHUNK // m)
    for start in range(0, n, rows_per_chunk):
        stop = min(start + rows_per_chunk, n)
        dist2 = (b1[start:stop, None, :2] - b2[None, :, :2]).square().sum(dim=2)
        reach = radius1[start:stop, None] + radius2[None, :]
        candidates = (dist2 < reach.square()) & ok1[start:stop, None] & ok2[None, :]
        rows, cols = torch.nonzero(candidates, as_tuple=True)
        rows = rows + start
        for k in range(0, rows.shape[0], _PAIR_CHUNK):
            r, c = rows[k : k + _PAIR_CHUNK], cols[k : k + _PAIR_CHUNK]
            ious[r, c] = _iou_of_pairs(b1[r], b2[c])
    return ious.to(device=out_device, dtype=out_dtype)


def _box_frames(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Corners and unit axes of (P, 5) float64 boxes.

    Returns:
        corners: (P, 4, 2) corners (x, y), in order around the rectangle.
        axis_w: (P, 2) unit vector along the width, (cos a, -sin a).
        axis_h: (P, 2) unit vector along the height, (sin a, cos a).
    """
    theta = torch.deg2rad(boxes[:, 4])
    c, s = torch.cos(theta), torch.sin(theta)
    axis_w = torch.stack((c, -s), dim=1)
    axis_h = torch.stack((s, c), dim=1)
    half_w = axis_w * (boxes[:, 2:3] / 2)  # (P, 2)
    half_h = axis_h * (boxes[:, 3:4] / 2)
    signs = boxes.new_tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # (4, 2)
    corners = (
        boxes[:, None, :2]
        + signs[None, :, 0:1] * half_w[:, None, :]
        + signs[None, :, 1:2] * half_h[:, None, :]
    )
    return corners, axis_w, axis_h


def _corners_inside(
    points: Tensor, boxes: Tensor, axis_w: Tensor, axis_h: Tensor, tol: Tensor
) -> Tensor:
    """(P, 4) bool: whether each of the (P, 4, 2) points lies in its (P, 5) box (+ tol)."""
    offset = points - boxes[:, None, :2]
    u = (offset * axis_w[:, None, :]).sum(dim=2)  # coordinates in the box's own frame
    v = (offset * axis_h[:, None, :]).sum(dim=2)
    half_w = boxes[:, 2:3].abs() / 2
    half_h = boxes[:, 3:4].abs() / 2
    return (u.abs() <= half_w + tol) & (v.abs() <= half_h + tol)


def _edge_crossings(corners1: Tensor, corners2: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """Crossings of every edge of box 1 with every edge of box 2, per pair.

    Args:
        corners1, corners2: (P, 4, 2) corners in order around each rectangle.
        tol: slack on the edge parameters (relative to the edge lengths).

    Returns:
        points: (P, 16, 2) crossing points; valid: (P, 16) bool, False for parallel edges
        and for lines that cross outside either segment.
    """
    start1 = corners1[:, :, None, :]  # (P, 4, 1, 2): edge i of box 1
    dir1 = (torch.roll(corners1, -1, dims=1) - corners1)[:, :, None, :]
    start2 = corners2[:, None, :, :]  # (P, 1, 4, 2): edge j of box 2
    dir2 = (torch.roll(corners2, -1, dims=1) - corners2)[:, None, :, :]

    def cross(a: Tensor, b: Tensor) -> Tensor:
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]

    denom = cross(dir1, dir2)  # (P, 4, 4)
    gap = start2 - start1
    scale = dir1.norm(dim=-1) * dir2.norm(dim=-1)
    parallel = denom.abs() <= 1e-12 * scale
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t1 = cross(gap, dir2) / safe  # position along edge i, 0..1
    t2 = cross(gap, dir1) / safe  # position along edge j, 0..1
    valid = ~parallel & (t1 >= -tol) & (t1 <= 1 + tol) & (t2 >= -tol) & (t2 <= 1 + tol)
    points = start1 + t1[..., None] * dir1  # (P, 4, 4, 2)
    return points.reshape(-1, 16, 2), valid.reshape(-1, 16)


def _convex_area(points: Tensor, valid: Tensor) -> Tensor:
    """Area of the convex hull of the valid points, all of which lie on that hull's boundary.

    Args:
        points: (P, K, 2) candidate points; valid: (P, K) bool.

    Returns:
        (P,) areas, 0 where fewer than three points are valid.
    """
    weights = valid.to(points.dtype)
    count = weights.sum(dim=1)  # (P,)
    centre = (points * weights[..., None]).sum(dim=1) / count.clamp(min=1)[:, None]
    rel = points - centre[:, None, :]  # relative coordinates keep precision
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 4.0))  # > pi: invalid go last
    order = torch.argsort(angle, dim=1)
    rel = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    # Points past the valid ones repeat the first, so they add zero-length edges only.
    used = torch.arange(rel.shape[1], device=rel.device)[None, :] < count[:, None]
    rel = torch.where(used[..., None], rel, rel[:, :1, :])
    nxt = torch.roll(rel, -1, dims=1)
    twice_area = (rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]).sum(dim=1)
    return torch.where(count >= 3, twice_area.abs() / 2, torch.zeros_like(twice_area))


def _iou_of_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Exact IoU of boxes1[k] with boxes2[k]: (P, 5), (P, 5) float64, w * h > 0 -> (P,)."""
    # Measure from the midpoint of the two centres so coordinates stay small.
    shift = (boxes1[:, :2] + boxes2[:, :2]) / 2
    boxes1 = torch.cat((boxes1[:, :2] - shift, boxes1[:, 2:]), dim=1)
    boxes2 = torch.cat((boxes2[:, :2] - shift, boxes2[:, 2:]), dim=1)
    corners1, axis_w1, axis_h1 = _box_frames(boxes1)
    corners2, axis_w2, axis_h2 = _box_frames(boxes2)
    # Slack for points on the other box's boundary (touching or identical boxes).
    size = boxes1[:, 2:4].abs().sum(dim=1) + boxes2[:, 2:4].abs().sum(dim=1)
    tol = (1e-10 * size)[:, None]  # (P, 1), a length
    inside1 = _corners_inside(corners1, boxes2, axis_w2, axis_h2, tol)
    inside2 = _corners_inside(corners2, boxes1, axis_w1, axis_h1, tol)
    crossings, crossing_valid = _edge_crossings(corners1, corners2, 1e-10)
    points = torch.cat((corners1, corners2, crossings), dim=1)  # (P, 24, 2)
    valid = torch.cat((inside1, inside2, crossing_valid), dim=1)
    area1 = boxes1[:, 2] * boxes1[:, 3]
    area2 = boxes2[:, 2] * boxes2[:, 3]
    inter = torch.minimum(_convex_area(points, valid), torch.minimum(area1, area2))
    return inter / (area1 + area2 - inter)
