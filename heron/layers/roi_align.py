"""`ROIAlign` and `ROIPool` modules over torchvision's ops, with Detectron2's defaults."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import RoIPool as _TorchvisionRoIPool
from torchvision.ops import roi_align

__all__ = ["ROIAlign", "ROIPool", "roi_align"]


class ROIAlign(nn.Module):
    """Bilinear ROI pooling of (N, C, H, W) features into (R, C, *output_size) regions.

    Unlike torchvision's `RoIAlign`, `aligned` defaults to True.

    With `aligned=True`, box corners are scaled by `spatial_scale` and shifted by -0.5
    before sampling. In the pixel model, pixel i covers [i, i + 1) and its value sits at
    i + 0.5, so a continuous coordinate c lies between pixels floor(c - 0.5) and
    ceil(c - 0.5). `aligned=False` is the legacy Detectron behaviour: no shift, which
    samples half a pixel off, and boxes smaller than 1 pixel are enlarged to 1.

    Args:
        output_size: (height, width) of each pooled region, or one int for both.
        spatial_scale: factor from box coordinates to feature coordinates
            (1 / stride of the feature map).
        sampling_ratio: samples per bin side; 0 chooses ceil(bin size) adaptively.
        aligned: apply the half-pixel shift described above.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        """Pool one region per row of `rois`.

        Args:
            input: (N, C, H, W) features.
            rois: (R, 5) regions: batch index into N, then x0, y0, x1, y1 in the
                coordinates of the image (before `spatial_scale`).

        Returns:
            (R, C, output_height, output_width) pooled features.
        """
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(f"ROIAlign: rois must be (R, 5), got shape {tuple(rois.shape)}")
        if input.is_quantized:
            input = input.dequantize()
        # torchvision requires one dtype; under autocast its op then runs in float32.
        return roi_align(
            input,
            rois.to(dtype=input.dtype),
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )


class ROIPool(_TorchvisionRoIPool):
    """Max ROI pooling (torchvision's `RoIPool`) under Detectron2's capitalization.

    Args:
        output_size: (height, width) of each pooled region, or one int for both.
        spatial_scale: factor from box coordinates to feature coordinates.

    forward(input (N, C, H, W), rois (R, 5) batch index + x0, y0, x1, y1, or a list of
        (R_i, 4) boxes per image) -> (R, C, output_height, output_width).
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__(output_size, spatial_scale)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        if isinstance(rois, Tensor):
            if rois.dim() != 2 or rois.shape[1] != 5:
                raise ValueError(f"ROIPool: rois must be (R, 5), got shape {tuple(rois.shape)}")
            rois = rois.to(dtype=input.dtype)
        return super().forward(input, rois)
