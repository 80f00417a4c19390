"""Test-time augmentation: run a model on several resized (and flipped) copies of each image
and merge the predictions in the original image's coordinates.

`DatasetMapperTTA` makes the copies; `GeneralizedRCNNWithTTA` merges R-CNN detections (boxes
by class-wise NMS over the union, masks by averaging the mask head's probabilities);
`SemanticSegmentorWithTTA` (Heron's own) averages per-pixel class probabilities.

Shapes: C classes, (H, W) the original image's (height, width), R detections, M the mask
head's output resolution.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from heron.config.config import CfgNode, configurable
from heron.data.detection_utils import read_image
from heron.data.transforms.augmentation import Augmentation, apply_augmentations
from heron.data.transforms.augmentation_impl import RandomFlip, ResizeShortestEdge
from heron.data.transforms.transform import (
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    ScaleTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from heron.modeling.meta_arch.rcnn import GeneralizedRCNN
from heron.modeling.postprocessing import detector_postprocess
from heron.modeling.roi_heads.fast_rcnn_inference import fast_rcnn_inference_single_image
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances

__all__ = ["DatasetMapperTTA", "GeneralizedRCNNWithTTA", "SemanticSegmentorWithTTA"]

# Score threshold of the merge step: the per-copy detections already passed the model's own
# SCORE_THRESH_TEST; this only drops exact zeros (Detectron2's _merge_detections uses 1e-8).
_MERGE_SCORE_THRESH = 1e-8


class DatasetMapperTTA:
    """Turns one dataset dict into its test-time augmented copies.

    For every size in ``min_sizes`` the image is resized so its short side has that length
    (long side capped at ``max_size``); with ``flip`` each resized copy also comes mirrored
    left-right. Each copy is a deep copy of the input dict with ``image`` replaced by the
    augmented (C, H', W') tensor and ``transforms`` set to the TransformList that maps the
    original image (``height`` x ``width``) onto it.
    """

    @configurable
    def __init__(self, min_sizes: Sequence[int], max_size: int, flip: bool) -> None:
        """
        Args:
            min_sizes: short-side lengths in pixels, one copy (two with ``flip``) each.
            max_size: cap on the long side in pixels.
            flip: also add a horizontally flipped copy of every resized image.
        """
        if len(min_sizes) == 0:
            raise ValueError("DatasetMapperTTA: min_sizes must hold at least one size, got []")
        self.min_sizes = list(min_sizes)
        self.max_size = max_size
        self.flip = flip

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        return {
            "min_sizes": cfg.TEST.AUG.MIN_SIZES,
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
        }

    def _augmentation_lists(self) -> list[list[Augmentation]]:
        candidates = []
        for min_size in self.min_sizes:
            resize = ResizeShortestEdge(min_size, self.max_size)
            candidates.append([resize])
            if self.flip:
                candidates.append([resize, RandomFlip(prob=1.0)])
        return candidates

    def __call__(self, dataset_dict: dict[str, Any]) -> list[dict[str, Any]]:
        """Augmented copies of ``dataset_dict``.

        Args:
            dataset_dict: needs ``image``, a (C, h, w) tensor in the model's input format,
                and ``height``/``width``, the size of the original image (``image`` may
                already be resized from it, as a test-time DatasetMapper does).

        Returns:
            len(min_sizes) * (2 if flip else 1) dicts: resized copy, then its flipped twin
            when ``flip``, for each size in order.
        """
        for key in ("image", "height", "width"):
            if key not in dataset_dict:
                raise KeyError(
                    f"DatasetMapperTTA: the dataset dict has no {key!r}; "
                    f"keys are {sorted(dataset_dict)}"
                )
        image = dataset_dict["image"]
        if not isinstance(image, Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"DatasetMapperTTA: 'image' must be a (C, H, W) tensor, got {shape}")
        numpy_image = image.permute(1, 2, 0).cpu().numpy()  # (h, w, C)
        image_hw = numpy_image.shape[:2]
        orig_hw = (int(dataset_dict["height"]), int(dataset_dict["width"]))
        # The transforms must start from the original image, which the input may already
        # have been resized from.
        if tuple(image_hw) != orig_hw:
            pre_tfm: Transform = ResizeTransform(*orig_hw, *image_hw)
        else:
            pre_tfm = NoOpTransform()

        ret = []
        for augs in self._augmentation_lists():
            new_image, tfms = apply_augmentations(augs, np.copy(numpy_image))
            augmented = copy.deepcopy(dataset_dict)
            augmented["image"] = torch.from_numpy(
                np.ascontiguousarray(new_image.transpose(2, 0, 1))
            )
            augmented["transforms"] = TransformList([pre_tfm, tfms])
            ret.append(augmented)
        return ret


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _read_if_needed(dataset_dict: dict[str, Any], input_format: str | None) -> dict[str, Any]:
    """A shallow copy with ``image`` read from ``file_name`` when absent, and ``height``/
    ``width`` defaulting to the image's size."""
    ret = copy.copy(dataset_dict)
    if "image" not in ret:
        if "file_name" not in ret:
            raise KeyError(
                f"TTA input needs 'image' or 'file_name'; keys are {sorted(dataset_dict)}"
            )
        image = read_image(ret.pop("file_name"), input_format)  # (H, W, C)
        ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    ret.setdefault("height", ret["image"].shape[1])
    ret.setdefault("width", ret["image"].shape[2])
    return ret


def _has_transform(tfm: Transform, kind: type) -> bool:
    transforms = tfm.transforms if isinstance(tfm, TransformList) else [tfm]
    return any(isinstance(t, kind) for t in transforms)


def _batches(items: list[Any], batch_size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _pop_transforms(augmented_inputs: list[dict[str, Any]]) -> list[Transform]:
    """Remove and return every augmented input's ``transforms``."""
    for i, x in enumerate(augmented_inputs):
        if "transforms" not in x:
            raise KeyError(f"tta_mapper output {i} has no 'transforms'; keys are {sorted(x)}")
    return [x.pop("transforms") for x in augmented_inputs]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


class GeneralizedRCNNWithTTA(nn.Module):
    """A `GeneralizedRCNN` run with test-time augmentation; called like the model itself.

    Per image: detect boxes on every augmented copy (mask head off), map them back to the
    original image, merge the union with class-wise NMS, then predict masks for the merged
    boxes on every copy and average them. Keypoint models and precomputed proposals are not
    supported (as in Detectron2).
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: nn.Module,
        tta_mapper: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
        batch_size: int = 3,
    ) -> None:
        """
        Args:
            cfg: the model's config; reads MODEL.KEYPOINT_ON, MODEL.LOAD_PROPOSALS,
                MODEL.MASK_ON, MODEL.ROI_HEADS.{NUM_CLASSES, NMS_THRESH_TEST},
                TEST.DETECTIONS_PER_IMAGE and (for the default mapper) TEST.AUG.*.
            model: a GeneralizedRCNN, possibly wrapped in DistributedDataParallel.
            tta_mapper: dataset dict -> list of augmented dicts, each with ``transforms``;
                defaults to ``DatasetMapperTTA(cfg)``.
            batch_size: how many augmented images go through the model at once.
        """
        super().__init__()
        model = _unwrap(model)
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(
                f"TTA is only supported on GeneralizedRCNN, got a model of type "
                f"{type(model).__name__}"
            )
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("TTA for keypoint is not supported yet (MODEL.KEYPOINT_ON=True)")
        if cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError(
                "TTA for pre-computed proposals is not supported yet (MODEL.LOAD_PROPOSALS=True)"
            )
        _check_batch_size(batch_size)
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    @contextmanager
    def _turn_off_roi_heads(self, attrs: Sequence[str]) -> Iterator[None]:
        """Set the given ``roi_heads`` switches (e.g. "mask_on") to False inside the block."""
        roi_heads = self.model.roi_heads
        old = {attr: getattr(roi_heads, attr) for attr in attrs if hasattr(roi_heads, attr)}
        for attr in old:
            setattr(roi_heads, attr, False)
        try:
            yield
        finally:
            for attr, value in old.items():
                setattr(roi_heads, attr, value)

    def _batch_inference(
        self,
        batched_inputs: list[dict[str, Any]],
        detected_instances: list[Instances] | None = None,
    ) -> list[Instances]:
        """`GeneralizedRCNN.inference` without postprocessing, ``batch_size`` images at a
        time; outputs are in each augmented image's coordinates."""
        outputs: list[Instances] = []
        idxs = list(range(len(batched_inputs)))
        for batch in _batches(idxs, self.batch_size):
            inputs = [batched_inputs[i] for i in batch]
            given = None if detected_instances is None else [detected_instances[i] for i in batch]
            outputs.extend(self.model.inference(inputs, given, do_postprocess=False))
        return outputs

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        """Detections per image, ``[{"instances": Instances}]``, in each input's
        ``height`` x ``width`` (the image's size when absent).

        Inputs are dicts as for the model; an input without ``image`` is read from its
        ``file_name`` in the model's input format.
        """
        return [
            self._inference_one_image(_read_if_needed(x, self.model.input_format))
            for x in batched_inputs
        ]

    def _inference_one_image(self, inputs: dict[str, Any]) -> dict[str, Instances]:
        orig_shape = (int(inputs["height"]), int(inputs["width"]))
        augmented_inputs, tfms = self._get_augmented_inputs(inputs)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            all_boxes, all_scores, all_classes = self._get_augmented_boxes(augmented_inputs, tfms)
        merged = self._merge_detections(all_boxes, all_scores, all_classes, orig_shape)
        if not self.cfg.MODEL.MASK_ON:
            return {"instances": merged}
        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances  # the copies can be large
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        return {"instances": detector_postprocess(merged, *orig_shape)}

    def _get_augmented_inputs(
        self, inputs: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[Transform]]:
        augmented_inputs = self.tta_mapper(inputs)
        return augmented_inputs, _pop_transforms(augmented_inputs)

    def _get_augmented_boxes(
        self, augmented_inputs: list[dict[str, Any]], tfms: list[Transform]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The union of all copies' detections, boxes mapped back to the original image.

        Returns:
            (D, 4) boxes XYXY in original-image pixels, (D,) scores, (D,) int64 classes.
        """
        outputs = self._batch_inference(augmented_inputs)
        all_boxes, all_scores, all_classes = [], [], []
        for output, tfm in zip(outputs, tfms):
            pred_boxes = output.pred_boxes.tensor
            # Boxes go through numpy, where the transforms live (as Detectron2 does).
            original = tfm.inverse().apply_box(pred_boxes.detach().cpu().numpy())
            all_boxes.append(torch.from_numpy(original).to(pred_boxes))
            all_scores.append(output.scores)
            all_classes.append(output.pred_classes)
        return torch.cat(all_boxes, dim=0), torch.cat(all_scores), torch.cat(all_classes)

    def _merge_detections(
        self, all_boxes: Tensor, all_scores: Tensor, all_classes: Tensor, shape_hw: tuple[int, int]
    ) -> Instances:
        """Class-wise NMS and top-k over the union of detections (Detectron2's
        ``_merge_detections``): each box gets a one-hot (D, K + 1) score row."""
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        scores_2d = all_boxes.new_zeros(len(all_boxes), num_classes + 1)
        scores_2d[torch.arange(len(all_boxes), device=all_boxes.device), all_classes] = (
            all_scores.to(scores_2d.dtype)
        )
        merged, _ = fast_rcnn_inference_single_image(
            all_boxes,
            scores_2d,
            shape_hw,
            _MERGE_SCORE_THRESH,
            self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            self.cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return merged

    def _rescale_detected_boxes(
        self,
        augmented_inputs: list[dict[str, Any]],
        merged: Instances,
        tfms: list[Transform],
    ) -> list[Instances]:
        """The merged detections moved into every augmented image's coordinates."""
        boxes = merged.pred_boxes.tensor
        augmented_instances = []
        for inputs, tfm in zip(augmented_inputs, tfms):
            aug_boxes = tfm.apply_box(boxes.detach().cpu().numpy())
            augmented_instances.append(
                Instances(
                    tuple(inputs["image"].shape[1:3]),
                    pred_boxes=Boxes(torch.from_numpy(aug_boxes).to(boxes)),
                    pred_classes=merged.pred_classes,
                    scores=merged.scores,
                )
            )
        return augmented_instances

    def _reduce_pred_masks(self, outputs: list[Instances], tfms: list[Transform]) -> Tensor:
        """Average the copies' (R, 1, M, M) mask probabilities.

        They are box-relative, so resizes need no undoing; a horizontal flip mirrors the
        M x M grid and is flipped back.
        """
        masks = []
        for output, tfm in zip(outputs, tfms):
            pred_masks = output.pred_masks
            masks.append(
                pred_masks.flip(dims=[3]) if _has_transform(tfm, HFlipTransform) else pred_masks
            )
        return torch.stack(masks, dim=0).mean(dim=0)


# Transforms whose effect on a sem_seg output is undone by postprocessing (resizes) or
# by flipping back here.
_SEM_SEG_TTA_TRANSFORMS = (
    NoOpTransform,
    ResizeTransform,
    ScaleTransform,
    HFlipTransform,
    VFlipTransform,
)


class SemanticSegmentorWithTTA(nn.Module):
    """A semantic segmentation model run with test-time augmentation (Heron's own).

    The model must return ``[{"sem_seg": (C, H, W) logits}]`` at each input's
    ``height`` x ``width``, as `SemanticSegmentor` does. Per image, every augmented copy's
    logits go through a softmax over classes, flips are undone, and the probabilities are
    averaged.
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: nn.Module,
        tta_mapper: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
        batch_size: int = 1,
    ) -> None:
        """
        Args:
            cfg: reads TEST.AUG.* for the default mapper and INPUT.FORMAT to read files.
            model: the segmentation model, possibly wrapped in DistributedDataParallel.
            tta_mapper: dataset dict -> list of augmented dicts, each with ``transforms``
                built from resizes and flips; defaults to ``DatasetMapperTTA(cfg)``.
            batch_size: how many augmented images go through the model at once.
        """
        super().__init__()
        _check_batch_size(batch_size)
        self.cfg = cfg.clone()
        self.model = _unwrap(model)
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Tensor]]:
        """Per image, ``{"sem_seg": (C, H, W) averaged class probabilities}`` at the input's
        ``height`` x ``width``.

        Inputs are dicts as for the model (``image`` or ``file_name``); a ground-truth
        ``sem_seg`` in an input is ignored.
        """
        input_format = self.cfg.INPUT.FORMAT
        return [self._inference_one_image(_read_if_needed(x, input_format)) for x in batched_inputs]

    def _inference_one_image(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        inputs = {k: v for k, v in inputs.items() if k != "sem_seg"}  # targets would not fit
        orig_hw = (int(inputs["height"]), int(inputs["width"]))
        augmented_inputs = self.tta_mapper(inputs)
        tfms = _pop_transforms(augmented_inputs)
        outputs = []
        for batch in _batches(augmented_inputs, self.batch_size):
            outputs.extend(o["sem_seg"] for o in self.model(batch))
        probs = [
            self._to_original(logits, tfm, orig_hw, i)
            for i, (logits, tfm) in enumerate(zip(outputs, tfms))
        ]
        return {"sem_seg": torch.stack(probs, dim=0).mean(dim=0)}

    @staticmethod
    def _to_original(logits: Tensor, tfm: Transform, orig_hw: tuple[int, int], idx: int) -> Tensor:
        """(C, H, W) logits of augmented copy ``idx`` -> class probabilities on the
        original image's pixel grid."""
        if logits.dim() != 3 or tuple(logits.shape[1:]) != orig_hw:
            raise ValueError(
                f"augmented input {idx}: the model's 'sem_seg' must be (C, {orig_hw[0]}, "
                f"{orig_hw[1]}) at the input's height x width, got {tuple(logits.shape)}"
            )
        transforms = tfm.transforms if isinstance(tfm, TransformList) else [tfm]
        for t in transforms:
            if not isinstance(t, _SEM_SEG_TTA_TRANSFORMS):
                names = ", ".join(k.__name__ for k in _SEM_SEG_TTA_TRANSFORMS)
                raise ValueError(
                    f"augmented input {idx}: cannot undo {type(t).__name__} on 'sem_seg'; "
                    f"supported transforms are {names}"
                )
        probs = logits.softmax(dim=0)
        # Each flip is its own inverse, and flips along different axes commute.
        if sum(isinstance(t, HFlipTransform) for t in transforms) % 2:
            probs = probs.flip(dims=[2])
        if sum(isinstance(t, VFlipTransform) for t in transforms) % 2:
            probs = probs.flip(dims=[1])
        return probs
