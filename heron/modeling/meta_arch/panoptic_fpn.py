"""Panoptic FPN (Kirillov et al., 2019): Mask R-CNN plus a semantic FPN head on the same
backbone, and the rule that merges their outputs into one panoptic map."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from heron.config.config import CfgNode, configurable
from heron.modeling.meta_arch.build import META_ARCH_REGISTRY
from heron.modeling.meta_arch.rcnn import GeneralizedRCNN
from heron.modeling.meta_arch.semantic_seg import build_sem_seg_head, pad_sem_seg_targets
from heron.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from heron.structures.instances import Instances

__all__ = ["PanopticFPN", "combine_semantic_and_instance_outputs"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPN(GeneralizedRCNN):
    """`GeneralizedRCNN` with a semantic segmentation head on the shared features.

    Training inputs need both ``instances`` and ``sem_seg`` ((H, W) int64, stuff classes
    from 1 and all things merged into class 0). Training returns the semantic loss
    (weighted by SEM_SEG_HEAD.LOSS_WEIGHT) and the R-CNN losses; inference returns per
    image {"sem_seg": (C, H, W) logits, "instances": Instances, "panoptic_seg":
    ((H, W) int32 segment ids, segments_info)}.
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        combine_overlap_thresh: float = 0.5,
        combine_stuff_area_thresh: float = 4096,
        combine_instances_score_thresh: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            sem_seg_head: the semantic head (e.g. `SemSegFPNHead`).
            combine_overlap_thresh: an instance whose mask is covered by earlier (higher
                scoring) segments in more than this fraction of its area is dropped.
            combine_stuff_area_thresh: stuff segments smaller than this (pixels) are dropped.
            combine_instances_score_thresh: instances scoring below this are not used.
            kwargs: the arguments of `GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine_overlap_thresh = combine_overlap_thresh
        self.combine_stuff_area_thresh = combine_stuff_area_thresh
        self.combine_instances_score_thresh = combine_instances_score_thresh

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        ret = super().from_config(cfg)
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        ret.update(
            {
                "combine_overlap_thresh": combine.OVERLAP_THRESH,
                "combine_stuff_area_thresh": combine.STUFF_AREA_LIMIT,
                "combine_instances_score_thresh": combine.INSTANCES_CONFIDENCE_THRESH,
            }
        )
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        if not combine.ENABLED:
            # As in Detectron2, the key no longer switches anything.
            logger.warning(
                "MODEL.PANOPTIC_FPN.COMBINE.ENABLED is no longer used; call "
                "model.inference(batched_inputs, do_postprocess=False) to skip the merge."
            )
        weight = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        if weight != 1.0:
            logger.warning(
                "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT is deprecated (set the ROI heads' "
                "loss weights instead): scaling every ROI-head loss by %s",
                weight,
            )
            _scale_instance_loss_weights(ret["roi_heads"], weight)
        return ret

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Any]]:
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        gt_sem_seg = pad_sem_seg_targets(
            batched_inputs, self.backbone, self.sem_seg_head.ignore_value, self.device
        )
        _, sem_seg_losses = self.sem_seg_head(features, gt_sem_seg)
        gt_instances = self._gt_instances(batched_inputs)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        return {**sem_seg_losses, **proposal_losses, **detector_losses}

    def _gt_instances(self, batched_inputs: list[dict[str, Any]]) -> list[Instances]:
        for i, inputs in enumerate(batched_inputs):
            if "instances" not in inputs:
                raise KeyError(f"input {i} has no 'instances'; keys are {sorted(inputs)}")
        return [x["instances"].to(self.device) for x in batched_inputs]

    def inference(
        self, batched_inputs: list[dict[str, Any]], do_postprocess: bool = True
    ) -> list[dict[str, Any]] | tuple[list[Instances], Tensor]:
        """Semantic, instance and panoptic predictions for a batch.

        Args:
            do_postprocess: rescale to each input's height/width, merge into a panoptic
                map and return dicts; else return (detections per image in the network's
                input size, (N, C, H, W) padded semantic logits).
        """
        if self.training:
            raise RuntimeError("inference() needs eval mode: call model.eval() first")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return detector_results, sem_seg_results

        processed = []
        for sem_seg_result, detector_result, inputs, image_size in zip(
            sem_seg_results, detector_results, batched_inputs, images.image_sizes
        ):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            sem_seg_r = sem_seg_postprocess(sem_seg_result, image_size, height, width)
            detector_r = detector_postprocess(detector_result, height, width)
            panoptic_r = combine_semantic_and_instance_outputs(
                detector_r,
                sem_seg_r.argmax(dim=0),
                self.combine_overlap_thresh,
                self.combine_stuff_area_thresh,
                self.combine_instances_score_thresh,
            )
            processed.append(
                {"sem_seg": sem_seg_r, "instances": detector_r, "panoptic_seg": panoptic_r}
            )
        return processed


def _scale_instance_loss_weights(roi_heads: nn.Module, weight: float) -> None:
    """Multiply every ROI-head loss (box classification and regression of every stage,
    mask, keypoint) by ``weight``, what PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT is documented to
    do ("scaling of all losses from instance detection / segmentation head").

    Detectron2's current code scales the box predictor's loss_weight dict, which by default
    holds only "loss_box_reg", so its loss_cls stays unscaled; Heron fills in the missing
    box losses (weight 1.0) first so that both are scaled, as the key's documentation and
    Detectron2's earlier releases do.
    """
    predictors = roi_heads.box_predictor
    if not isinstance(predictors, nn.ModuleList):
        predictors = [predictors]
    for predictor in predictors:
        w = predictor.loss_weight
        if isinstance(w, dict):
            w = {"loss_cls": 1.0, "loss_box_reg": 1.0, **w}
            predictor.loss_weight = {k: v * weight for k, v in w.items()}
        else:
            predictor.loss_weight = w * weight
    for name in ("mask_head", "keypoint_head"):
        head = getattr(roi_heads, name, None)
        if head is not None:
            head.loss_weight = head.loss_weight * weight


def combine_semantic_and_instance_outputs(
    instance_results: Instances,
    semantic_results: Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Merge instance masks and a semantic label map into one panoptic segmentation.

    Instances are pasted in decreasing score order, each onto the pixels no earlier
    segment took; an instance scoring below ``instances_score_thresh`` ends the pass, one
    with an empty mask is skipped, and so is one whose mask overlaps earlier segments in
    more than ``overlap_threshold`` of its area. Then each semantic label except 0 (the
    merged "things" class of the semantic head) claims its still-empty pixels, if they
    number at least ``stuff_area_thresh``. Segment ids count from 1 in creation order; 0
    marks unassigned pixels.

    Args:
        instance_results: detections with ``scores`` (R,), ``pred_classes`` (R,) and
            ``pred_masks`` (R, H, W) bool, at the semantic map's size.
        semantic_results: (H, W) int64 semantic labels (the argmax of the logits).
        overlap_threshold, stuff_area_thresh, instances_score_thresh: as above.

    Returns:
        panoptic_seg: (H, W) int32 segment ids.
        segments_info: one dict per segment, in id order: things {"id", "isthing": True,
            "score", "category_id", "instance_id" (index into instance_results)}; stuff
            {"id", "isthing": False, "category_id", "area"}.
    """
    if semantic_results.dim() != 2:
        raise ValueError(
            f"semantic_results must be an (H, W) label map, got shape "
            f"{tuple(semantic_results.shape)}"
        )
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    instance_masks = instance_results.pred_masks
    if instance_masks.shape[1:] != semantic_results.shape:
        raise ValueError(
            f"instance_results.pred_masks of shape {tuple(instance_masks.shape)} do not match "
            f"semantic_results of shape {tuple(semantic_results.shape)}"
        )
    instance_masks = instance_masks.to(dtype=torch.bool, device=panoptic_seg.device)
    segments_info: list[dict[str, Any]] = []
    current_segment_id = 0

    # Same call as Detectron2 (argsort of the negated scores), so ties order the same.
    sorted_idxs = torch.argsort(-instance_results.scores)
    for inst_id in sorted_idxs.tolist():
        score = instance_results.scores[inst_id].item()
        if score < instances_score_thresh:
            break
        mask = instance_masks[inst_id]  # (H, W)
        mask_area = mask.sum().item()
        if mask_area == 0:
            continue
        intersect_area = (mask & (panoptic_seg > 0)).sum().item()
        if intersect_area * 1.0 / mask_area > overlap_threshold:
            continue
        if intersect_area > 0:
            mask = mask & (panoptic_seg == 0)
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append(
            {
                "id": current_segment_id,
                "isthing": True,
                "score": score,
                "category_id": instance_results.pred_classes[inst_id].item(),
                "instance_id": inst_id,
            }
        )

    for semantic_label in torch.unique(semantic_results).tolist():
        if semantic_label == 0:  # the semantic head's single "things" class
            continue
        mask = (semantic_results == semantic_label) & (panoptic_seg == 0)
        mask_area = mask.sum().item()
        if mask_area < stuff_area_thresh:
            continue
        current_segment_id += 1
        panoptic_seg[mask] = current_segment_id
        segments_info.append(
            {
                "id": current_segment_id,
                "isthing": False,
                "category_id": semantic_label,
                "area": mask_area,
            }
        )
    return panoptic_seg, segments_info
