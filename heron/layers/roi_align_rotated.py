"""ROIAlignRotated: bilinear pooling of rotated regions, in pure PyTorch.

Follows Detectron2's ROIAlignRotated kernel sample for sample, so outputs agree to
rounding. Autograd differentiates it with respect to the features; as in Detectron2,
the ROIs get no gradient.

Shapes:
    N: images; C: channels; H, W: feature size; R: regions; PH, PW: output size;
    GH, GW: samples per bin along the region's height and width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ROIAlignRotated", "roi_align_rotated"]

# Upper bound on R * PH * GH * PW * GW * C elements gathered at once (per corner).
_GATHER_CHUNK = 1 << 22


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def roi_align_rotated(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """Pool rotated regions of (N, C, H, W) features into (R, C, PH, PW) outputs.

    As Detectron2's kernel (always "aligned"): the region centre is scaled by
    `spatial_scale` and shifted by -0.5 so that pixel i's value sits at continuous
    coordinate i + 0.5; the PH x PW bin grid is laid out in the region's own frame and
    rotated by the angle about the centre (the module docstring of
    `heron.structures.rotated_boxes` gives the convention); each bin averages GH x GW
    bilinear samples at the centres of a regular sub-grid. Sampling follows
    torchvision's ROIAlign border rules: a sample beyond -1 or the feature size on either
    axis counts as 0, other samples are clamped to the edge pixels.

    Args:
        input: (N, C, H, W) features. float16/bfloat16 is computed in float32 and cast back.
        rois: (R, 6) regions: batch index into N, then cx, cy, w, h in input-image
            coordinates (before `spatial_scale`), and the angle in degrees.
        output_size: (PH, PW), or one int for both.
        spatial_scale: factor from ROI coordinates to feature coordinates (1 / stride).
        sampling_ratio: GH = GW = sampling_ratio if > 0; otherwise chosen per region as
            GH = ceil(h * spatial_scale / PH), GW = ceil(w * spatial_scale / PW).

    Returns:
        (R, C, PH, PW) pooled features, in the dtype of `input`.
    """
    if input.dim() != 4:
        raise ValueError(
            f"roi_align_rotated: input must be (N, C, H, W), got shape {tuple(input.shape)}"
        )
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(f"roi_align_rotated: rois must be (R, 6), got shape {tuple(rois.shape)}")
    pooled_h, pooled_w = _pair(output_size)
    orig_dtype = input.dtype
    if orig_dtype in (torch.float16, torch.bfloat16):
        input = input.float()
    features = input
    num_images, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        # 0 * sum keeps the (empty) result attached to the graph, like torchvision's op
        empty = features.new_zeros((0, channels, pooled_h, pooled_w))
        return (empty + 0 * features.sum()).to(orig_dtype)
    rois = rois.detach().to(device=features.device, dtype=features.dtype)
    _check_rois(rois, num_images)

    geometry = _roi_geometry(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    # (N, C, H, W) -> (N * H * W, C): each bilinear corner gathers whole channel rows
    table = features.permute(0, 2, 3, 1).reshape(-1, channels)
    samples_per_roi = pooled_h * pooled_w * channels
    pieces, piece_idxs = [], []
    for grid_h, grid_w, roi_idxs in _group_by_grid(geometry["grid_h"], geometry["grid_w"]):
        chunk = max(1, _GATHER_CHUNK // (samples_per_roi * grid_h * grid_w))
        for start in range(0, roi_idxs.shape[0], chunk):
            idxs = roi_idxs[start : start + chunk]
            sub = {key: value[idxs] for key, value in geometry.items()}
            pieces.append(
                _pool_group(table, sub, (height, width), (pooled_h, pooled_w), (grid_h, grid_w))
            )
            piece_idxs.append(idxs)
    output = features.new_zeros((num_rois, pooled_h, pooled_w, channels))
    if pieces:  # regions with an empty sample grid stay 0, as in Detectron2
        output = output.index_copy(0, torch.cat(piece_idxs), torch.cat(pieces))
    return output.permute(0, 3, 1, 2).contiguous().to(orig_dtype)


def _check_rois(rois: Tensor, num_images: int) -> None:
    """Raise ValueError for non-finite values, batch indices outside [0, N) or negative sizes."""
    batch = rois[:, 0]
    not_finite = ~torch.isfinite(rois).all(dim=1)
    bad_batch = (batch < 0) | (batch >= num_images)
    bad_size = (rois[:, 3] < 0) | (rois[:, 4] < 0)
    flags = torch.stack((not_finite.any(), bad_batch.any(), bad_size.any())).tolist()
    if flags[0]:
        row = int(torch.nonzero(not_finite)[0, 0])
        raise ValueError(f"roi_align_rotated: roi {row} is not finite: {rois[row].tolist()}")
    if flags[1]:
        row = int(torch.nonzero(bad_batch)[0, 0])
        raise ValueError(
            f"roi_align_rotated: roi {row} has batch index {rois[row, 0].item()}, "
            f"expected one in [0, {num_images})"
        )
    if flags[2]:
        row = int(torch.nonzero(bad_size)[0, 0])
        raise ValueError(
            f"roi_align_rotated: roi {row} has a negative size (w, h) = "
            f"{rois[row, 3:5].tolist()}; sizes must be >= 0"
        )


def _roi_geometry(
    rois: Tensor, spatial_scale: float, pooled_h: int, pooled_w: int, sampling_ratio: int
) -> dict[str, Tensor]:
    """Per-region quantities in feature coordinates, each (R,) (Detectron2's arithmetic)."""
    # Degrees to radians in float64 as the kernel does (MPS lacks float64: its own dtype).
    wide = rois.dtype if rois.device.type == "mps" else torch.float64
    theta = (rois[:, 5].to(wide) * (math.pi / 180.0)).to(rois.dtype)
    roi_w = rois[:, 3] * spatial_scale
    roi_h = rois[:, 4] * spatial_scale
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / pooled_h).to(torch.int64)
        grid_w = torch.ceil(roi_w / pooled_w).to(torch.int64)
    return {
        "batch": rois[:, 0].to(torch.int64),
        "center_x": rois[:, 1] * spatial_scale - 0.5,
        "center_y": rois[:, 2] * spatial_scale - 0.5,
        "roi_w": roi_w,
        "roi_h": roi_h,
        "cos": torch.cos(theta),
        "sin": torch.sin(theta),
        "grid_h": grid_h,
        "grid_w": grid_w,
    }


def _group_by_grid(grid_h: Tensor, grid_w: Tensor) -> list[tuple[int, int, Tensor]]:
    """Split regions by sample grid (GH, GW) > 0: [(GH, GW, (R_g,) int64 region indices)]."""
    keys = torch.stack((grid_h, grid_w), dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    groups = []
    for k, (gh, gw) in enumerate(unique.tolist()):
        if gh > 0 and gw > 0:
            groups.append((gh, gw, torch.nonzero(inverse == k).squeeze(1)))
    return groups


def _pool_group(
    table: Tensor,
    geometry: dict[str, Tensor],
    feature_size: tuple[int, int],
    output_size: tuple[int, int],
    grid: tuple[int, int],
) -> Tensor:
    """Pool regions that share one sample grid.

    Args:
        table: (N * H * W, C) features, one row per pixel.
        geometry: per-region (G,) tensors from `_roi_geometry`.

    Returns:
        (G, PH, PW, C) bin averages.
    """
    height, width = feature_size
    pooled_h, pooled_w = output_size
    grid_h, grid_w = grid
    dtype, device = table.dtype, table.device
    bin_h = geometry["roi_h"] / pooled_h  # (G,)
    bin_w = geometry["roi_w"] / pooled_w
    # Offsets from the centre in the region's frame, in the kernel's order of operations:
    # start + bin * size + (sub + 0.5) * size / grid.
    ph = torch.arange(pooled_h, device=device, dtype=dtype)[:, None]  # (PH, 1)
    iy = torch.arange(grid_h, device=device, dtype=dtype)[None, :] + 0.5  # (1, GH)
    pw = torch.arange(pooled_w, device=device, dtype=dtype)[:, None]
    ix = torch.arange(grid_w, device=device, dtype=dtype)[None, :] + 0.5
    yy = (-geometry["roi_h"] / 2.0)[:, None, None] + ph * bin_h[:, None, None]
    yy = yy + iy * bin_h[:, None, None] / grid_h  # (G, PH, GH)
    xx = (-geometry["roi_w"] / 2.0)[:, None, None] + pw * bin_w[:, None, None]
    xx = xx + ix * bin_w[:, None, None] / grid_w  # (G, PW, GW)
    yy = yy[:, :, :, None, None]  # (G, PH, GH, 1, 1)
    xx = xx[:, None, None, :, :]  # (G, 1, 1, PW, GW)
    cos = geometry["cos"][:, None, None, None, None]
    sin = geometry["sin"][:, None, None, None, None]
    y = yy * cos - xx * sin + geometry["center_y"][:, None, None, None, None]
    x = yy * sin + xx * cos + geometry["center_x"][:, None, None, None, None]
    values = _bilinear(table, geometry["batch"], y.flatten(1), x.flatten(1), height, width)
    num_rois, channels = values.shape[0], values.shape[-1]
    values = values.reshape(num_rois, pooled_h, grid_h, pooled_w, grid_w, channels)
    return values.sum(dim=(2, 4)) / (grid_h * grid_w)


def _bilinear(
    table: Tensor, batch: Tensor, y: Tensor, x: Tensor, height: int, width: int
) -> Tensor:
    """Bilinear samples with torchvision/Detectron2 ROIAlign border rules.

    Args:
        table: (N * H * W, C) features; batch: (G,) int64 image of each region.
        y, x: (G, S) sample coordinates in feature pixels (pixel i centred at i).

    Returns:
        (G, S, C) samples; 0 where y < -1, y > H, x < -1 or x > W.
    """
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    # Clamping to H and W changes no sample that counts and keeps indices in range.
    y = y.clamp(min=0, max=height)
    x = x.clamp(min=0, max=width)
    y_low = y.to(torch.int64).clamp(max=height - 1)  # truncation == floor for y >= 0
    x_low = x.to(torch.int64).clamp(max=width - 1)
    # At or past the last pixel the kernel snaps the sample onto it.
    y = torch.where(y_low >= height - 1, y_low.to(y.dtype), y)
    x = torch.where(x_low >= width - 1, x_low.to(x.dtype), x)
    y_high = (y_low + 1).clamp(max=height - 1)
    x_high = (x_low + 1).clamp(max=width - 1)
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    base = (batch * (height * width))[:, None]  # (G, 1)
    corners = (
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    )
    out = None
    for row, col, weight in corners:
        weight = torch.where(inside, weight, zero)
        term = weight[..., None] * table[base + row * width + col]
        out = term if out is None else out + term
    return out


class ROIAlignRotated(nn.Module):
    """Bilinear pooling of rotated regions (see `roi_align_rotated`).

    Args:
        output_size: (height, width) of each pooled region, or one int for both.
        spatial_scale: factor from ROI coordinates to feature coordinates (1 / stride).
        sampling_ratio: samples per bin side; <= 0 chooses ceil(region size / output size)
            per region.
    """

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """Pool one region per row of `rois`.

        Args:
            input: (N, C, H, W) features.
            rois: (R, 6) regions: batch index, cx, cy, w, h (image coordinates), angle
                in degrees.

        Returns:
            (R, C, output_height, output_width) pooled features, in the dtype of `input`.
        """
        if rois.dim() != 2 or rois.shape[1] != 6:
            raise ValueError(f"ROIAlignRotated: rois must be (R, 6), got shape {tuple(rois.shape)}")
        return roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio})"
        )
