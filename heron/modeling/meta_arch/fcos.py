"""FCOS (Tian et al., "FCOS: A simple and strong anchor-free object detector"), as
Detectron2 implements it: `FCOS` and `FCOSHead`.

One "anchor" per location: a square box of side equal to the level's stride, centred
on the location. Boxes are coded as the four distances from that centre to the sides,
divided by the stride (`Box2BoxTransformLinear`). Detection score is
sqrt(sigmoid(class logit) * sigmoid(centerness logit)).

Detectron2 builds FCOS only from lazy configs; its YAML defaults have no ``MODEL.FCOS``
section. `add_fcos_config` adds one (with the lazy config's values) so FCOS can be
built by `build_model` from a CfgNode too.

Shapes (as in dense_detector):
    N: images; L: levels; C: foreground classes; M: ground-truth boxes of an image;
    R: anchor points over all levels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.losses import sigmoid_focal_loss_jit
from heron.layers.shape_spec import ShapeSpec
from heron.modeling.anchor_generator import DefaultAnchorGenerator
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import build_backbone
from heron.modeling.box_regression import Box2BoxTransformLinear, _dense_box_regression_loss
from heron.modeling.meta_arch.build import META_ARCH_REGISTRY
from heron.modeling.meta_arch.dense_detector import DenseDetector
from heron.modeling.meta_arch.retinanet import RetinaNetHead
from heron.structures.boxes import Boxes, pairwise_point_box_distance
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage

__all__ = ["FCOS", "FCOSHead", "add_fcos_config", "fcos_match_quality"]

logger = logging.getLogger(__name__)


def add_fcos_config(cfg: CfgNode) -> CfgNode:
    """Add a ``MODEL.FCOS`` section with the defaults of Detectron2's FCOS lazy config
    (``common/models/fcos.py``); returns cfg. Existing keys are left alone."""
    defaults = {
        "NUM_CLASSES": 80,
        "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
        "NUM_CONVS": 4,
        "HEAD_NORM": "GN",
        "PRIOR_PROB": 0.01,
        "CENTER_SAMPLING_RADIUS": 1.5,
        "FOCAL_LOSS_ALPHA": 0.25,
        "FOCAL_LOSS_GAMMA": 2.0,
        "SCORE_THRESH_TEST": 0.2,
        "TOPK_CANDIDATES_TEST": 1000,
        "NMS_THRESH_TEST": 0.6,
    }
    if "FCOS" not in cfg.MODEL:
        cfg.MODEL.FCOS = CfgNode()
    for key, value in defaults.items():
        if key not in cfg.MODEL.FCOS:
            cfg.MODEL.FCOS[key] = value
    return cfg


def _fcos_section(cfg: CfgNode) -> CfgNode:
    if "FCOS" not in cfg.MODEL:
        raise KeyError(
            "config has no MODEL.FCOS section: call "
            "heron.modeling.meta_arch.fcos.add_fcos_config(cfg) before building FCOS"
        )
    return cfg.MODEL.FCOS


@torch.no_grad()
def fcos_match_quality(
    gt_boxes: Boxes, anchors: list[Boxes], center_sampling_radius: float
) -> Tensor:
    """How well each anchor point fits each ground-truth box under FCOS's rules.

    An anchor point (centre c, stride s) may match a box when all of these hold:
    c lies within center_sampling_radius * s of the box centre (Chebyshev distance);
    c lies strictly inside the box; and the largest of its four distances to the box's
    sides lies in (4s, 8s), with the lower bound 0 on the first level and the upper
    bound infinite on the last. Among matches, smaller boxes score higher.

    Args:
        gt_boxes: M ground-truth boxes, XYXY input pixels.
        anchors: L per-level anchor boxes (square, side = stride).
        center_sampling_radius: radius in units of stride.

    Returns:
        (M, R) float32: 1e8 - area of the box where the pair may match, else 0.
    """
    num_anchors_per_level = [len(x) for x in anchors]
    anchors = Boxes.cat(anchors)  # (R, 4)
    anchor_centers = anchors.get_centers()  # (R, 2)
    anchor_sizes = anchors.tensor[:, 2] - anchors.tensor[:, 0]  # (R,)

    lower_bound = anchor_sizes * 4
    lower_bound[: num_anchors_per_level[0]] = 0
    upper_bound = anchor_sizes * 8
    upper_bound[-num_anchors_per_level[-1] :] = float("inf")

    gt_centers = gt_boxes.get_centers()  # (M, 2)
    center_dists = (anchor_centers[None, :, :] - gt_centers[:, None, :]).abs_()  # (M, R, 2)
    sampling_regions = center_sampling_radius * anchor_sizes[None, :]  # (1, R)
    match = center_dists.max(dim=2).values < sampling_regions  # (M, R)

    side_dists = pairwise_point_box_distance(anchor_centers, gt_boxes)  # (R, M, 4)
    side_dists = side_dists.permute(1, 0, 2)  # (M, R, 4)
    match &= side_dists.min(dim=2).values > 0
    max_dist = side_dists.max(dim=2).values  # (M, R)
    match &= (max_dist > lower_bound[None, :]) & (max_dist < upper_bound[None, :])

    # Prefer the smallest box where several match (Detectron2's 1e8 - area weighting).
    quality = match.to(torch.float32)
    quality *= 1e8 - gt_boxes.area()[:, None]
    return quality


class FCOSHead(RetinaNetHead):
    """`RetinaNetHead` with one anchor per location plus a centerness branch on the box
    tower.

    forward: L features (N, Cin, Hi, Wi) -> (logits L x (N, C, Hi, Wi),
    bbox_reg L x (N, 4, Hi, Wi), ctrness L x (N, 1, Hi, Wi)).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        conv_dims: Sequence[int],
        num_classes: int,
        norm: str = "",
        prior_prob: float = 0.01,
    ) -> None:
        """
        Args:
            input_shape, conv_dims, num_classes, norm, prior_prob: see `RetinaNetHead`
                (Detectron2's FCOS config uses norm="GN").
        """
        super().__init__(
            input_shape=input_shape,
            conv_dims=conv_dims,
            num_anchors=1,
            num_classes=num_classes,
            norm=norm,
            prior_prob=prior_prob,
        )
        # No learnable per-level scale (unlike the FCOS paper): Detectron2 found it
        # unnecessary once regression targets are normalized by the stride.
        last_dim = conv_dims[-1] if len(conv_dims) else input_shape[0].channels
        self.ctrness = nn.Conv2d(last_dim, 1, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.ctrness.weight, std=0.01)
        nn.init.constant_(self.ctrness.bias, 0)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        fcos = _fcos_section(cfg)
        return {
            "input_shape": input_shape,
            "conv_dims": [input_shape[0].channels] * fcos.NUM_CONVS,
            "num_classes": fcos.NUM_CLASSES,
            "norm": fcos.HEAD_NORM,
            "prior_prob": fcos.PRIOR_PROB,
        }

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        if len(features) != self._num_features:
            raise ValueError(
                f"FCOSHead was built for {self._num_features} levels, got {len(features)}"
            )
        logits, bbox_reg, ctrness = [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_feature = self.bbox_subnet(feature)
            bbox_reg.append(self.bbox_pred(bbox_feature))
            ctrness.append(self.ctrness(bbox_feature))
        return logits, bbox_reg, ctrness


@META_ARCH_REGISTRY.register()
class FCOS(DenseDetector):
    """FCOS: anchor-free dense detector with focal loss, GIoU box loss and centerness."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str] | None = None,
        box2box_transform: Box2BoxTransformLinear | None = None,
        num_classes: int,
        center_sampling_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        test_score_thresh: float = 0.2,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone, head, head_in_features, pixel_mean, pixel_std: see `DenseDetector`.
            box2box_transform: box coding; None (Detectron2's default) means
                `Box2BoxTransformLinear(normalize_by_size=True)`.
            num_classes: foreground classes C.
            center_sampling_radius: anchor points within this many strides of a box's
                centre (and inside it) are its positives.
            focal_loss_alpha, focal_loss_gamma: `sigmoid_focal_loss` parameters.
            test_score_thresh: inference keeps sqrt(cls * ctrness) scores above this.
            test_topk_candidates: then at most this many per level, before NMS.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept after NMS.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.num_classes = num_classes
        # One anchor per location: a box whose side equals the level's stride.
        feature_shapes = backbone.output_shape()
        fpn_strides = [feature_shapes[k].stride for k in self.head_in_features]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[k] for k in fpn_strides], aspect_ratios=[1.0], strides=fpn_strides
        )
        if box2box_transform is None:
            box2box_transform = Box2BoxTransformLinear(normalize_by_size=True)
        self.box2box_transform = box2box_transform
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        fcos = _fcos_section(cfg)
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        feature_shapes = [backbone_shape[f] for f in fcos.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, feature_shapes),
            "head_in_features": fcos.IN_FEATURES,
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": fcos.FOCAL_LOSS_GAMMA,
            "test_score_thresh": fcos.SCORE_THRESH_TEST,
            "test_topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward_training(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        pred_logits, pred_anchor_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
        )

    def _match_anchors(self, gt_boxes: Boxes, anchors: list[Boxes]) -> Tensor:
        """(M, R) match quality; see `fcos_match_quality`."""
        return fcos_match_quality(gt_boxes, anchors, self.center_sampling_radius)

    @torch.no_grad()
    def label_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Assign each anchor point its best-matching (smallest) box, or background.

        Returns:
            gt_labels: N tensors (R,) int64, class or C (background); none are ignored.
            matched_gt_boxes: N tensors (R, 4), the matched box (arbitrary for background).
        """
        gt_labels, matched_gt_boxes = [], []
        num_anchors = sum(len(a) for a in anchors)
        for inst in gt_instances:
            device = inst.gt_boxes.device
            if len(inst) > 0:
                quality = self._match_anchors(inst.gt_boxes, anchors)  # (M, R)
                # Matcher(thresholds=[1e-5], labels=[0, 1]) in effect.
                match_quality, matched_idxs = quality.max(dim=0)
                matched_idxs[match_quality < 1e-5] = -1
                matched_gt_boxes_i = inst.gt_boxes.tensor[matched_idxs.clip(min=0)]
                gt_labels_i = inst.gt_classes[matched_idxs.clip(min=0)]
                gt_labels_i[matched_idxs < 0] = self.num_classes
            else:
                matched_gt_boxes_i = torch.zeros((num_anchors, 4), device=device)
                gt_labels_i = torch.full(
                    (num_anchors,), self.num_classes, dtype=torch.long, device=device
                )
            gt_labels.append(gt_labels_i)
            matched_gt_boxes.append(matched_gt_boxes_i)
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[Tensor],
        gt_labels: list[Tensor],
        pred_anchor_deltas: list[Tensor],
        gt_boxes: list[Tensor],
        pred_centerness: list[Tensor],
    ) -> dict[str, Tensor]:
        """Focal, GIoU and centerness losses, divided by the EMA of foreground count.

        Args:
            anchors: L per-level anchor boxes (Ri, 4).
            pred_logits: L tensors (N, Ri, C).
            gt_labels: N tensors (R,) int64, class in [0, C) or C for background.
            pred_anchor_deltas: L tensors (N, Ri, 4).
            gt_boxes: N tensors (R, 4), each anchor's matched box.
            pred_centerness: L tensors (N, Ri, 1) of logits.

        Returns:
            {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}: scalars.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_pos_anchors, 1), 300)

        # Drop the background column of the one-hot target: background rows are all 0.
        gt_labels_target = F.one_hot(gt_labels, num_classes=self.num_classes + 1)[:, :, :-1]
        loss_cls = sigmoid_focal_loss_jit(
            torch.cat(pred_logits, dim=1),
            gt_labels_target.to(pred_logits[0].dtype),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type="giou",
        )
        ctrness_targets = self.compute_ctrness_targets(anchors, gt_boxes)  # (N, R)
        pred_centerness = torch.cat(pred_centerness, dim=1).squeeze(dim=2)  # (N, R)
        ctrness_loss = F.binary_cross_entropy_with_logits(
            pred_centerness[pos_mask], ctrness_targets[pos_mask], reduction="sum"
        )
        return {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_box_reg / normalizer,
            "loss_fcos_ctr": ctrness_loss / normalizer,
        }

    def compute_ctrness_targets(self, anchors: list[Boxes], gt_boxes: list[Tensor]) -> Tensor:
        """Centerness of every anchor point in its matched box.

        sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) from the (l, t, r, b)
        distances to the box's sides: 1 at the box centre, towards 0 at its edges.
        Meaningful only for foreground anchors (others may be NaN).

        Returns:
            (N, R) targets.
        """
        anchors = Boxes.cat(anchors).tensor  # (R, 4)
        reg_targets = [self.box2box_transform.get_deltas(anchors, m) for m in gt_boxes]
        if len(reg_targets) == 0:
            return anchors.new_zeros((0, anchors.shape[0]))
        reg_targets = torch.stack(reg_targets, dim=0)  # (N, R, 4)
        left_right = reg_targets[:, :, [0, 2]]
        top_bottom = reg_targets[:, :, [1, 3]]
        ctrness = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
            top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
        )
        return torch.sqrt(ctrness)

    def forward_inference(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
    ) -> list[Instances]:
        pred_logits, pred_anchor_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            # Score = sqrt(class prob * centerness prob), eq. 4 of the FCOS journal paper.
            scores_per_image = [
                torch.sqrt(x[img_idx].sigmoid() * y[img_idx].sigmoid())
                for x, y in zip(pred_logits, pred_centerness)
            ]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results
