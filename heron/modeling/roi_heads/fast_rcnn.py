"""`FastRCNNOutputLayers`: per-region classification and box regression, losses, inference.

Naming: ``scores`` are (R, K + 1) logits (last column background) from ``cls_score``;
``proposal_deltas`` are (R, C * B) box deltas from ``bbox_pred`` with C = K classes, or 1
when class-agnostic, and B = 4 (or 5 for rotated boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from heron.config.config import CfgNode, configurable
from heron.layers.shape_spec import ShapeSpec
from heron.layers.wrappers import cat, cross_entropy, nonzero_tuple
from heron.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from heron.modeling.roi_heads.fast_rcnn_inference import (
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)
from heron.structures.instances import Instances
from heron.utils.events import try_get_event_storage

__all__ = [
    "FastRCNNOutputLayers",
    "fast_rcnn_inference",
    "fast_rcnn_inference_single_image",
    "get_fed_loss_classes",
    "get_fed_loss_cls_weights",
]


def get_fed_loss_cls_weights(
    dataset_names: list[str] | str, freq_weight_power: float = 1.0
) -> Tensor:
    """(K,) class weights image_count ** power for federated-loss negative sampling (LVIS).

    Reads ``class_image_count`` (a list of {"id", "image_count"}) from the first dataset's
    metadata.
    """
    from heron.data.catalog import MetadataCatalog  # data sits above modeling; read lazily

    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    meta = MetadataCatalog.get(dataset_names[0])
    counts = getattr(meta, "class_image_count", None)
    if counts is None:
        raise KeyError(
            f"federated loss needs metadata 'class_image_count' for dataset {dataset_names[0]!r}"
        )
    freq = torch.tensor([c["image_count"] for c in sorted(counts, key=lambda c: c["id"])])
    return freq.float() ** freq_weight_power


def get_fed_loss_classes(
    gt_classes: Tensor, num_fed_loss_classes: int, num_classes: int, weight: Tensor
) -> Tensor:
    """The classes the federated loss covers: every class present in the batch, plus
    negatives drawn (without replacement, proportional to ``weight``) up to
    ``num_fed_loss_classes`` in total."""
    unique_gt = torch.unique(gt_classes)
    prob = unique_gt.new_ones(num_classes + 1).float()
    prob[-1] = 0  # never draw background
    if len(unique_gt) >= num_fed_loss_classes:
        return unique_gt
    prob[:num_classes] = weight.float().clone()
    prob[unique_gt] = 0
    negatives = torch.multinomial(prob, num_fed_loss_classes - len(unique_gt), replacement=False)
    return torch.cat([unique_gt, negatives])


def _log_classification_stats(
    pred_logits: Tensor, gt_classes: Tensor, prefix: str = "fast_rcnn"
) -> None:
    """Record accuracy, foreground accuracy and false-negative rate when a storage is open."""
    storage = try_get_event_storage()
    num_instances = gt_classes.numel()
    if storage is None or num_instances == 0:
        return
    pred_classes = pred_logits.argmax(dim=1)
    bg_class = pred_logits.shape[1] - 1
    fg = (gt_classes >= 0) & (gt_classes < bg_class)
    num_fg = int(fg.sum())
    fg_gt, fg_pred = gt_classes[fg], pred_classes[fg]
    storage.put_scalar(
        f"{prefix}/cls_accuracy", int((pred_classes == gt_classes).sum()) / num_instances
    )
    if num_fg > 0:
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", int((fg_pred == fg_gt).sum()) / num_fg)
        storage.put_scalar(f"{prefix}/false_negative", int((fg_pred == bg_class).sum()) / num_fg)


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on region features: class logits and box deltas."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec | int,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: float | dict[str, float] = 1.0,
        use_fed_loss: bool = False,
        use_sigmoid_ce: bool = False,
        get_fed_loss_cls_weights: Callable[[], Tensor] | None = None,
        fed_loss_num_classes: int = 50,
    ) -> None:
        """
        Args:
            input_shape: shape of the region features (flattened), or its channel count.
            box2box_transform: box coding of the regression.
            num_classes: K foreground classes.
            test_score_thresh, test_nms_thresh, test_topk_per_image: inference filters.
            cls_agnostic_bbox_reg: one box per region instead of one per class.
            smooth_l1_beta: smooth L1 transition (0: L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            loss_weight: one weight for both losses, or per loss ("loss_cls", "loss_box_reg").
            use_fed_loss: federated sigmoid loss over a sampled class subset (LVIS).
            use_sigmoid_ce: per-class sigmoid cross-entropy instead of softmax.
            get_fed_loss_cls_weights: gives the (K,) class weights for federated sampling.
            fed_loss_num_classes: classes the federated loss covers per batch.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        self.num_classes = num_classes
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_box_sets = 1 if cls_agnostic_bbox_reg else num_classes
        box_dim = len(box2box_transform.weights)
        self.bbox_pred = nn.Linear(input_size, num_box_sets * box_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, float | int):
            loss_weight = {"loss_cls": loss_weight, "loss_box_reg": loss_weight}
        self.loss_weight = loss_weight
        self.use_fed_loss = use_fed_loss
        self.use_sigmoid_ce = use_sigmoid_ce
        self.fed_loss_num_classes = fed_loss_num_classes
        if use_fed_loss:
            if not use_sigmoid_ce:
                raise ValueError("the federated loss needs use_sigmoid_ce=True")
            if get_fed_loss_cls_weights is None:
                raise ValueError("use_fed_loss=True needs get_fed_loss_cls_weights")
            weights = get_fed_loss_cls_weights()
            if len(weights) != num_classes:
                raise ValueError(
                    f"federated-loss class weights have {len(weights)} entries for {num_classes} classes"
                )
            self.register_buffer("fed_loss_cls_weights", weights)

    # The box coding from_config builds with ROI_BOX_HEAD.BBOX_REG_WEIGHTS (rotated
    # subclass: the rotated one).
    _box_coder = Box2BoxTransform
    # The multi-image inference `inference` runs (rotated subclass: the rotated one).
    _inference = staticmethod(fast_rcnn_inference)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec) -> dict[str, Any]:
        box_head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "box2box_transform": cls._box_coder(weights=box_head.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_bbox_reg": box_head.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": box_head.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": box_head.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": box_head.BBOX_REG_LOSS_WEIGHT},
            "use_fed_loss": box_head.USE_FED_LOSS,
            "use_sigmoid_ce": box_head.USE_SIGMOID_CE,
            "get_fed_loss_cls_weights": lambda: get_fed_loss_cls_weights(
                cfg.DATASETS.TRAIN, box_head.FED_LOSS_FREQ_WEIGHT_POWER
            ),
            "fed_loss_num_classes": box_head.FED_LOSS_NUM_CLASSES,
        }

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, ...) region features -> (R, K + 1) scores and (R, C * B) deltas."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> dict[str, Tensor]:
        """Classification loss over all sampled regions and box loss over foreground ones.

        ``proposals`` carry ``proposal_boxes``, ``gt_classes`` and (when the image has
        ground truth) ``gt_boxes``.
        """
        scores, proposal_deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            if proposal_boxes.requires_grad:
                raise ValueError("proposal boxes must not require grad")
            # Images without ground truth have no gt_boxes; their regions are all
            # background, so any box serves as a placeholder target.
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        _log_classification_stats(scores, gt_classes)

        if self.use_sigmoid_ce:
            loss_cls = self.sigmoid_cross_entropy_loss(scores, gt_classes)
        else:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes
            ),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def sigmoid_cross_entropy_loss(self, pred_class_logits: Tensor, gt_classes: Tensor) -> Tensor:
        """Per-class BCE over the K foreground columns, averaged over regions; with the
        federated loss, only over the sampled classes."""
        if pred_class_logits.numel() == 0:
            return pred_class_logits.new_zeros([1])[0]
        num_regions = pred_class_logits.shape[0]
        num_classes = pred_class_logits.shape[1] - 1
        target = pred_class_logits.new_zeros(num_regions, num_classes + 1)
        target[torch.arange(len(gt_classes), device=gt_classes.device), gt_classes] = 1
        target = target[:, :num_classes]
        loss = F.binary_cross_entropy_with_logits(
            pred_class_logits[:, :-1], target, reduction="none"
        )
        if self.use_fed_loss:
            classes = get_fed_loss_classes(
                gt_classes, self.fed_loss_num_classes, num_classes, self.fed_loss_cls_weights
            )
            mask = pred_class_logits.new_zeros(num_classes + 1)
            mask[classes] = 1
            weight = (
                mask[:num_classes].view(1, num_classes).expand(num_regions, num_classes).float()
            )
            loss = loss * weight
        return torch.sum(loss) / num_regions

    def box_reg_loss(
        self, proposal_boxes: Tensor, gt_boxes: Tensor, pred_deltas: Tensor, gt_classes: Tensor
    ) -> Tensor:
        """Box loss of the foreground regions' deltas for their gt class, divided by the
        number of ALL regions (so each region weighs the same, as in Detectron2)."""
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[
                fg_inds, gt_classes[fg_inds]
            ]
        loss = _dense_box_regression_loss(
            [proposal_boxes[fg_inds]],
            self.box2box_transform,
            [fg_pred_deltas.unsqueeze(0)],
            [gt_boxes[fg_inds]],
            ...,
            self.box_reg_loss_type,
            self.smooth_l1_beta,
        )
        return loss / max(gt_classes.numel(), 1.0)

    def inference(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> tuple[list[Instances], list[Tensor]]:
        """Final detections per image (see `fast_rcnn_inference`; the rotated subclass:
        `fast_rcnn_inference_rotated`)."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        return self._inference(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )

    def predict_boxes_for_gt_classes(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image, (Ri, B) boxes decoded for each region's gt class."""
        if not len(proposals):
            return []
        boxes, proposal_boxes = self._decode(predictions, proposals)
        num_regions, box_dim = proposal_boxes.shape
        num_box_sets = boxes.shape[1] // box_dim
        if num_box_sets > 1:
            gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0).clamp_(
                0, num_box_sets - 1
            )
            rows = torch.arange(num_regions, dtype=torch.long, device=boxes.device)
            boxes = boxes.view(num_regions, num_box_sets, box_dim)[rows, gt_classes]
        return boxes.split([p.__len__() for p in proposals])

    def predict_boxes(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image, (Ri, C * B) decoded boxes."""
        if not len(proposals):
            return []
        boxes, _ = self._decode(predictions, proposals)
        # __len__ rather than len(): under tracing the region counts stay dynamic
        return boxes.split([p.__len__() for p in proposals])

    def _decode(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> tuple[Tensor, Tensor]:
        """(R, C * B) decoded boxes of all images, and the (R, B) proposal boxes."""
        _, proposal_deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        return self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes), proposal_boxes

    def predict_probs(
        self, predictions: tuple[Tensor, Tensor], proposals: list[Instances]
    ) -> list[Tensor]:
        """Per image, (Ri, K + 1) class probabilities (softmax, or sigmoid per class)."""
        scores, _ = predictions
        probs = scores.sigmoid() if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return probs.split([p.__len__() for p in proposals], dim=0)
