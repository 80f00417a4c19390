"""R-CNN meta-architectures: `GeneralizedRCNN` (backbone, proposals, ROI heads) and
`ProposalNetwork` (backbone and proposals only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from heron.config.config import CfgNode, configurable
from heron.layers.wrappers import move_device_like
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import build_backbone
from heron.modeling.meta_arch.build import META_ARCH_REGISTRY
from heron.modeling.postprocessing import detector_postprocess
from heron.modeling.proposal_generator.build import build_proposal_generator
from heron.modeling.roi_heads.roi_heads import build_roi_heads
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances

__all__ = ["GeneralizedRCNN", "ProposalNetwork", "preprocess_images"]


def preprocess_images(
    batched_inputs: list[dict[str, Any]],
    pixel_mean: Tensor,
    pixel_std: Tensor,
    backbone: Backbone,
) -> ImageList:
    """Normalize every input's ``image`` and pad the batch for the backbone.

    Each image must be a (C, H, W) tensor with C == len(pixel_mean), uint8 or floating
    point, in the model's input format (RGB or BGR, 0-255).
    """
    images = []
    for i, inputs in enumerate(batched_inputs):
        if "image" not in inputs:
            raise KeyError(f"input {i} has no 'image'; keys are {sorted(inputs)}")
        image = inputs["image"]
        if (
            not isinstance(image, Tensor)
            or image.dim() != 3
            or image.shape[0] != pixel_mean.shape[0]
        ):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(
                f"input {i}: 'image' must be a ({pixel_mean.shape[0]}, H, W) tensor "
                f"(channels first, MODEL.PIXEL_MEAN has {pixel_mean.shape[0]} entries), got {shape}"
            )
        if not (image.dtype == torch.uint8 or image.is_floating_point()):
            raise ValueError(
                f"input {i}: 'image' must be uint8 or floating point, got {image.dtype}"
            )
        image = move_device_like(image, pixel_mean)
        images.append((image - pixel_mean) / pixel_std)
    return ImageList.from_tensors(
        images, backbone.size_divisibility, padding_constraints=backbone.padding_constraints
    )


def _gt_instances(
    batched_inputs: list[dict[str, Any]], device: torch.device
) -> list[Instances] | None:
    if "instances" not in batched_inputs[0]:
        return None
    return [x["instances"].to(device) for x in batched_inputs]


def _rescale_outputs(
    results: list[Instances],
    batched_inputs: list[dict[str, Any]],
    image_sizes: list[tuple[int, int]],
    key: str,
) -> list[dict[str, Instances]]:
    """{key: results rescaled to the input's "height"/"width"} per image (default: the
    size the network saw)."""
    processed = []
    for result, inputs, image_size in zip(results, batched_inputs, image_sizes):
        height = inputs.get("height", image_size[0])
        width = inputs.get("width", image_size[1])
        processed.append({key: detector_postprocess(result, height, width)})
    return processed


class _PixelNormalizer(nn.Module):
    """Holds pixel_mean/pixel_std as non-persistent (C, 1, 1) buffers and the device."""

    def _register_pixel_stats(
        self, pixel_mean: Sequence[float], pixel_std: Sequence[float]
    ) -> None:
        if len(pixel_mean) != len(pixel_std):
            raise ValueError(
                f"PIXEL_MEAN has {len(pixel_mean)} entries but PIXEL_STD has {len(pixel_std)}"
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _move_to_current_device(self, x: Tensor) -> Tensor:
        return move_device_like(x, self.pixel_mean)

    def preprocess_image(self, batched_inputs: list[dict[str, Any]]) -> ImageList:
        """Normalize, pad and batch the input images."""
        return preprocess_images(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone)


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(_PixelNormalizer):
    """Backbone -> proposal generator -> ROI heads.

    Input: list of dicts with ``image`` (C, H, W), optional ``height``/``width`` (output
    size) and, in training, ``instances`` (gt) or precomputed ``proposals``.
    Output: training, a dict of scalar losses; inference, one {"instances": Instances}
    per image, in the requested output size.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module | None,
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str | None = None,
        vis_period: int = 0,
    ) -> None:
        """
        Args:
            backbone, proposal_generator, roi_heads: the three stages (proposal_generator
                None means proposals come with the inputs).
            pixel_mean, pixel_std: per-channel normalization of the input image.
            input_format: "RGB" or "BGR", recorded for visualization.
            vis_period: visualize training proposals every this many iterations (0: never).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.vis_period = vis_period
        if vis_period > 0 and input_format is None:
            raise ValueError("input_format is required when vis_period > 0")
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Any]]:
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = _gt_instances(batched_inputs, self.device)
        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            proposals = self._given_proposals(batched_inputs)
            proposal_losses = {}
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        return {**detector_losses, **proposal_losses}

    def _given_proposals(self, batched_inputs: list[dict[str, Any]]) -> list[Instances]:
        if "proposals" not in batched_inputs[0]:
            raise KeyError("no proposal generator: every input needs 'proposals'")
        return [x["proposals"].to(self.device) for x in batched_inputs]

    def inference(
        self,
        batched_inputs: list[dict[str, Any]],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ) -> list[dict[str, Any]] | list[Instances]:
        """Detections for a batch.

        Args:
            detected_instances: known boxes and classes per image; only masks/keypoints
                are then predicted.
            do_postprocess: rescale to each input's height/width and return dicts; else
                return raw Instances in the network's input size.
        """
        if self.training:
            raise RuntimeError("inference() needs eval mode: call model.eval() first")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if detected_instances is None:
            if self.proposal_generator is not None:
                proposals, _ = self.proposal_generator(images, features, None)
            else:
                proposals = self._given_proposals(batched_inputs)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if do_postprocess:
            return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        return results

    @staticmethod
    def _postprocess(
        instances: list[Instances],
        batched_inputs: list[dict[str, Any]],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Instances]]:
        """Rescale each image's detections to its requested output size."""
        return _rescale_outputs(instances, batched_inputs, image_sizes, "instances")


@META_ARCH_REGISTRY.register()
class ProposalNetwork(_PixelNormalizer):
    """Backbone -> proposal generator; outputs {"proposals": Instances} per image."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self._register_pixel_stats(pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Any]]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_instances = _gt_instances(batched_inputs, self.device)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        if self.training:
            return proposal_losses
        return _rescale_outputs(proposals, batched_inputs, images.image_sizes, "proposals")
