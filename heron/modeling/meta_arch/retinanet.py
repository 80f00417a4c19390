"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection"): `RetinaNet` and its
`RetinaNetHead`, with Detectron2's parameter names, config keys and inference order.

Shapes (as in dense_detector):
    N: images; L: levels; A: anchors per location; C: foreground classes;
    R: anchors over all levels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.batch_norm import CycleBatchNormList, get_norm
from heron.layers.losses import sigmoid_focal_loss_jit
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import cat
from heron.modeling.anchor_generator import build_anchor_generator
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.backbone.build import build_backbone
from heron.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from heron.modeling.matcher import Matcher
from heron.modeling.meta_arch.build import META_ARCH_REGISTRY
from heron.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from heron.structures.boxes import Boxes, pairwise_iou
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage

__all__ = ["RetinaNet", "RetinaNetHead", "permute_to_N_HWA_K"]

logger = logging.getLogger(__name__)

_BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


def _tower(
    in_channels: int, conv_dims: Sequence[int], norm: str | Callable[[int], nn.Module]
) -> nn.Sequential:
    """conv3x3 [-> norm] -> ReLU, once per entry of conv_dims (Detectron2's module order,
    so state_dict keys are cls_subnet.0, .1, ...)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([in_channels, *conv_dims], conv_dims):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1))
        if norm:
            layers.append(get_norm(norm, c_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _per_level_batch_norm(num_levels: int, bn_class: type[nn.Module]) -> Callable[[int], nn.Module]:
    """A norm factory for `get_norm`: one BatchNorm per level, used in turn, one affine."""

    def make(channels: int) -> nn.Module:
        return CycleBatchNormList(length=num_levels, bn_class=bn_class, num_features=channels)

    return make


class RetinaNetHead(nn.Module):
    """Two conv towers shared by all levels: one predicts C class logits per anchor, the
    other 4 box deltas per anchor.

    forward: L features (N, Cin, Hi, Wi) -> (logits: L x (N, A * C, Hi, Wi),
    bbox_reg: L x (N, A * 4, Hi, Wi)).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: Sequence[int],
        norm: str = "",
        prior_prob: float = 0.01,
    ) -> None:
        """
        Args:
            input_shape: shape of each input level (all must have the same channels).
            num_classes: foreground classes C.
            num_anchors: anchors per location A (the same on every level).
            conv_dims: output channels of each tower conv (the towers' depth is its length).
            norm: "" for none; "BN" or "SyncBN" give each level its own BatchNorm statistics
                (`CycleBatchNormList`) with a shared affine; other `get_norm` names share
                one norm layer across levels.
            prior_prob: initial foreground probability; sets the classifier bias to
                -log((1 - p) / p) so early training is not swamped by background.
        """
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self._num_features = len(input_shape)
        tower_norm: str | Callable[[int], nn.Module] = norm
        if norm in ("BN", "SyncBN"):
            logger.info(f"Using per-level {norm} in RetinaNetHead ({self._num_features} levels).")
            tower_norm = _per_level_batch_norm(
                self._num_features, nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
            )
        elif norm and "BN" in type(get_norm(norm, 32)).__name__:
            logger.warning(f"A BatchNorm ({norm}) shared by all levels may train poorly.")

        in_channels = input_shape[0].channels
        self.cls_subnet = _tower(in_channels, conv_dims, tower_norm)
        self.bbox_subnet = _tower(in_channels, conv_dims, tower_norm)
        last_dim = conv_dims[-1] if len(conv_dims) else in_channels
        self.cls_score = nn.Conv2d(last_dim, num_anchors * num_classes, 3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last_dim, num_anchors * 4, 3, stride=1, padding=1)

        for modules in (self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred):
            for layer in modules.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, mean=0, std=0.01)
                    nn.init.constant_(layer.bias, 0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"RetinaNetHead needs the same number of anchors on every level, "
                f"MODEL.ANCHOR_GENERATOR gives {num_anchors}"
            )
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
            "norm": cfg.MODEL.RETINANET.NORM,
            "num_anchors": num_anchors[0],
        }

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if len(features) != self._num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self._num_features} levels, "
                f"got {len(features)}"
            )
        logits = [self.cls_score(self.cls_subnet(x)) for x in features]
        bbox_reg = [self.bbox_pred(self.bbox_subnet(x)) for x in features]
        return logits, bbox_reg


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """RetinaNet: anchors on P3-P7, sigmoid focal loss, per-level top-k, class-wise NMS.

    Training visualization (Detectron2's ``visualize_training``) is not done;
    ``vis_period`` and ``input_format`` are kept as attributes.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: str = "BGR",
    ) -> None:
        """
        Args:
            backbone, head, head_in_features: see `DenseDetector`.
            anchor_generator: gives the anchors of each level, A per location.
            box2box_transform: codes boxes as deltas to anchors.
            anchor_matcher: labels anchors by IoU with ground truth (1 fg, 0 bg, -1 ignore).
            num_classes: foreground classes C.
            focal_loss_alpha, focal_loss_gamma: `sigmoid_focal_loss` parameters.
            smooth_l1_beta: smooth L1 transition point (0: plain L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            test_score_thresh: inference keeps (anchor, class) scores above this.
            test_topk_candidates: then at most this many per level, before NMS.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept after NMS.
            pixel_mean, pixel_std: see `DenseDetector`.
            vis_period, input_format: kept for Detectron2 compatibility.
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if box_reg_loss_type not in _BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"box_reg_loss_type must be one of {_BOX_REG_LOSS_TYPES}, got {box_reg_loss_type!r}"
            )
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.vis_period = vis_period
        self.input_format = input_format
        if vis_period > 0:
            logger.warning("RetinaNet does not visualize training; vis_period is ignored")
        # EMA of the number of foreground anchors; starts at a typical count, not at 1.
        self.loss_normalizer = 100.0
        self.loss_normalizer_momentum = 0.9

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        return {
            "backbone": backbone,
            "head": RetinaNetHead(cfg, feature_shapes),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(
                cfg.MODEL.RETINANET.IOU_THRESHOLDS,
                cfg.MODEL.RETINANET.IOU_LABELS,
                allow_low_quality_matches=True,
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "head_in_features": cfg.MODEL.RETINANET.IN_FEATURES,
            "focal_loss_alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward_training(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[Tensor],
        gt_labels: list[Tensor],
        pred_anchor_deltas: list[Tensor],
        gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """Focal classification loss and box regression loss, each divided by the EMA of
        the number of foreground anchors.

        Args:
            anchors: L per-level anchors (Ri, 4).
            pred_logits: L tensors (N, Ri, C).
            gt_labels: N tensors (R,) int64: class in [0, C), C for background, -1 ignored.
            pred_anchor_deltas: L tensors (N, Ri, 4).
            gt_boxes: N tensors (R, 4), each anchor's matched ground-truth box.

        Returns:
            {"loss_cls": scalar, "loss_box_reg": scalar}.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        num_pos_anchors = pos_mask.sum().item()
        storage = try_get_event_storage()
        if storage is not None:
            storage.put_scalar("num_pos_anchors", num_pos_anchors / num_images)
        normalizer = self._ema_update(
            "loss_normalizer", max(num_pos_anchors, 1), 100, self.loss_normalizer_momentum
        )
        # One-hot over C + 1 columns, then drop the background column: background
        # anchors get an all-zero target.
        gt_labels_target = F.one_hot(gt_labels[valid_mask], num_classes=self.num_classes + 1)
        gt_labels_target = gt_labels_target[:, :-1]
        loss_cls = sigmoid_focal_loss_jit(
            cat(pred_logits, dim=1)[valid_mask],
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
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    @torch.no_grad()
    def label_anchors(
        self, anchors: list[Boxes], gt_instances: list[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Match every anchor to ground truth by IoU.

        Returns:
            gt_labels: N tensors (R,) int64: the matched class for foreground anchors,
                C (num_classes) for background, -1 for ignored ones.
            matched_gt_boxes: N tensors (R, 4): the matched box (meaningful only for
                foreground anchors; zeros when the image has no ground truth).
        """
        anchors = Boxes.cat(anchors)  # (R, 4)
        gt_labels, matched_gt_boxes = [], []
        for gt_per_image in gt_instances:
            match_quality_matrix = pairwise_iou(gt_per_image.gt_boxes, anchors)  # (M, R)
            matched_idxs, anchor_labels = self.anchor_matcher(match_quality_matrix)
            del match_quality_matrix
            if len(gt_per_image) > 0:
                matched_gt_boxes_i = gt_per_image.gt_boxes.tensor[matched_idxs]
                gt_labels_i = gt_per_image.gt_classes[matched_idxs]  # a copy (advanced indexing)
                gt_labels_i[anchor_labels == 0] = self.num_classes
                gt_labels_i[anchor_labels == -1] = -1
            else:
                matched_gt_boxes_i = torch.zeros_like(anchors.tensor)
                gt_labels_i = torch.full_like(matched_idxs, self.num_classes)
            gt_labels.append(gt_labels_i)
            matched_gt_boxes.append(matched_gt_boxes_i)
        return gt_labels, matched_gt_boxes

    def forward_inference(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
    ) -> list[Instances]:
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores_per_image = [x[img_idx].sigmoid() for x in pred_logits]
            deltas_per_image = [x[img_idx] for x in pred_anchor_deltas]
            results.append(
                self.inference_single_image(anchors, scores_per_image, deltas_per_image, image_size)
            )
        return results
