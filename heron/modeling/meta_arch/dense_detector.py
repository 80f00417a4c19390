"""`DenseDetector`: the shared skeleton of single-stage detectors (RetinaNet, FCOS).

A dense detector runs a backbone, feeds the feature maps named by ``head_in_features``
to a head that predicts, at every location of every level, A anchors x K values
(class logits, box deltas, ...), and either turns those into losses (training) or
decodes them into detections (inference).

Shapes:
    N: images in the batch; L: feature levels; Hi, Wi: size of level i;
    A: anchors per location; K: values per anchor (classes, 4 box deltas, 1 centerness);
    R: anchors over all levels, sum of Hi * Wi * A.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from heron.layers.nms import batched_nms
from heron.modeling.backbone.backbone import Backbone
from heron.modeling.meta_arch.rcnn import _PixelNormalizer, _rescale_outputs
from heron.structures.boxes import Boxes
from heron.structures.image_list import ImageList
from heron.structures.instances import Instances

__all__ = ["DenseDetector", "permute_to_N_HWA_K"]


def permute_to_N_HWA_K(tensor: Tensor, K: int) -> Tensor:
    """Flatten a head output to one row per anchor, location-major as anchors are laid out.

    Args:
        tensor: (N, A * K, Hi, Wi) head output; channel a * K + k is value k of anchor a.
        K: values per anchor.

    Returns:
        (N, Hi * Wi * A, K); row (y * Wi + x) * A + a holds anchor a at location (y, x),
        the order `DefaultAnchorGenerator` uses.
    """
    if tensor.dim() != 4:
        raise ValueError(
            f"permute_to_N_HWA_K: tensor must be (N, A*K, H, W), got {tuple(tensor.shape)}"
        )
    N, AK, H, W = tensor.shape
    if AK % K != 0:
        raise ValueError(f"permute_to_N_HWA_K: {AK} channels is not a multiple of K={K}")
    tensor = tensor.view(N, -1, K, H, W)  # (N, A, K, H, W)
    tensor = tensor.permute(0, 3, 4, 1, 2)  # (N, H, W, A, K)
    return tensor.reshape(N, -1, K)  # (N, H*W*A, K)


def _topk_above_threshold(
    scores: Tensor, score_thresh: float, topk_candidates: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Of one level's (anchor, class) scores, keep those > score_thresh, then the top k.

    Args:
        scores: (Ri, C) scores of Ri anchors for C classes.

    Returns:
        kept scores (k,) in decreasing order, their anchor indices (k,) and class
        indices (k,), both int64.
    """
    keep = scores > score_thresh
    kept_scores = scores[keep]
    idxs = torch.nonzero(keep)  # (k0, 2) (anchor, class), row-major order
    if torch.jit.is_tracing():
        # __len__() is a tensor while tracing: the traced k follows the input, where min()
        # would freeze the sample's k into the graph
        num_topk = idxs.__len__().clamp(max=topk_candidates)
    else:
        num_topk = min(idxs.shape[0], topk_candidates)
    kept_scores, order = kept_scores.topk(num_topk)
    anchor_idxs, class_idxs = idxs[order].unbind(dim=1)
    return kept_scores, anchor_idxs, class_idxs


class DenseDetector(_PixelNormalizer, metaclass=ABCMeta):
    """Base class of single-stage detectors: backbone -> head -> losses or detections.

    Subclasses implement `forward_training` and `forward_inference`, and give a
    ``box2box_transform`` for `_decode_per_level_predictions`.

    Input: list of dicts with ``image`` (C, H, W), optional ``height``/``width`` (output
    size) and, in training, ``instances`` with ``gt_boxes`` and ``gt_classes``.
    Output: training, a dict of scalar losses; inference, one {"instances": Instances}
    per image with ``pred_boxes``, ``scores`` and ``pred_classes``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str] | None = None,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        """
        Args:
            backbone: feature extractor; its output dict must hold ``head_in_features``.
            head: module mapping a list of L (N, C, Hi, Wi) features to a tuple of lists of
                L dense predictions (N, A * K, Hi, Wi).
            head_in_features: backbone outputs fed to the head, in this order; None takes
                every backbone output, by increasing stride.
            pixel_mean, pixel_std: per-channel normalization of the input image.
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        shapes = backbone.output_shape()
        if head_in_features is None:
            head_in_features = sorted(shapes, key=lambda name: shapes[name].stride)
        missing = [f for f in head_in_features if f not in shapes]
        if missing:
            raise KeyError(
                f"head_in_features {missing} are not backbone outputs; it has {sorted(shapes)}"
            )
        self.head_in_features = list(head_in_features)
        self._register_pixel_stats(pixel_mean, pixel_std)

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, Tensor] | list[dict[str, Instances]]:
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        if self.training:
            if "instances" not in batched_inputs[0]:
                raise KeyError("training needs 'instances' (ground truth) in every input")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, predictions, gt_instances)
        results = self.forward_inference(images, features, predictions)
        return _rescale_outputs(results, batched_inputs, images.image_sizes, "instances")

    @abstractmethod
    def forward_training(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
        gt_instances: list[Instances],
    ) -> dict[str, Tensor]:
        """Training losses from the head's predictions."""

    @abstractmethod
    def forward_inference(
        self,
        images: ImageList,
        features: list[Tensor],
        predictions: Sequence[list[Tensor]],
    ) -> list[Instances]:
        """Detections per image, in the network's input size."""

    def _transpose_dense_predictions(
        self, predictions: Sequence[list[Tensor]], dims_per_anchor: Sequence[int]
    ) -> list[list[Tensor]]:
        """Flatten each kind of prediction to (N, Hi * Wi * A, K) per level.

        Args:
            predictions: one list per kind (e.g. logits, deltas) of L (N, A * K, Hi, Wi).
            dims_per_anchor: K of each kind, e.g. [num_classes, 4].

        Returns:
            the same nesting with every tensor passed through `permute_to_N_HWA_K`.
        """
        if len(predictions) != len(dims_per_anchor):
            raise ValueError(
                f"{len(predictions)} kinds of prediction but {len(dims_per_anchor)} dims_per_anchor"
            )
        return [
            [permute_to_N_HWA_K(x, k) for x in pred]
            for pred, k in zip(predictions, dims_per_anchor)
        ]

    def _ema_update(
        self, name: str, value: float, initial_value: float, momentum: float = 0.9
    ) -> float:
        """Update and return the exponential moving average stored in attribute ``name``.

        The first update starts from ``initial_value``; new = old * momentum +
        value * (1 - momentum). Used to smooth the loss normalizer (number of foreground
        anchors) across iterations, as Detectron2 does.
        """
        old = getattr(self, name, initial_value)
        new = old * momentum + value * (1 - momentum)
        setattr(self, name, new)
        return new

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        """Decode one level: threshold the scores, keep the top k, apply their deltas.

        Args:
            anchors: (Ri, 4) anchors of this level.
            pred_scores: (Ri, C) per-class scores (probabilities) of the anchors.
            pred_deltas: (Ri, 4) box deltas of the anchors.
            score_thresh: keep (anchor, class) pairs with score > score_thresh.
            topk_candidates: then keep at most this many, highest scores first.
            image_size: (height, width) of the network input.

        Returns:
            Instances with ``pred_boxes`` (k, 4) XYXY input pixels, ``scores`` (k,) in
            decreasing order and ``pred_classes`` (k,) int64.
        """
        scores, anchor_idxs, class_idxs = _topk_above_threshold(
            pred_scores, score_thresh, topk_candidates
        )
        pred_boxes = self.box2box_transform.apply_deltas(
            pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs]
        )
        return Instances(
            image_size, pred_boxes=Boxes(pred_boxes), scores=scores, pred_classes=class_idxs
        )

    def _decode_multi_level_predictions(
        self,
        anchors: list[Boxes],
        pred_scores: list[Tensor],
        pred_deltas: list[Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: tuple[int, int],
    ) -> Instances:
        """`_decode_per_level_predictions` on every level, concatenated level by level
        (no NMS yet). Arguments are per-level lists of the former's."""
        predictions = [
            self._decode_per_level_predictions(
                anchors_i, scores_i, deltas_i, score_thresh, topk_candidates, image_size
            )
            for anchors_i, scores_i, deltas_i in zip(anchors, pred_scores, pred_deltas)
        ]
        return Instances.cat(predictions)

    def inference_single_image(
        self,
        anchors: list[Boxes],
        box_cls: list[Tensor],
        box_delta: list[Tensor],
        image_size: tuple[int, int],
    ) -> Instances:
        """Detections of one image: per-level threshold and top-k, then per-class NMS.

        Uses the subclass's ``test_score_thresh``, ``test_topk_candidates``,
        ``test_nms_thresh`` and ``max_detections_per_image``.

        Args:
            anchors: L per-level anchors (Ri, 4).
            box_cls: L tensors (Ri, C) of scores.
            box_delta: L tensors (Ri, 4) of box deltas.
            image_size: (height, width) of the network input.

        Returns:
            at most max_detections_per_image detections, by decreasing score.
        """
        pred = self._decode_multi_level_predictions(
            anchors,
            box_cls,
            box_delta,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        keep = batched_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]
