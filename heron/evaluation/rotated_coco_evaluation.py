"""COCO-style box evaluation for rotated boxes (Detectron2's
``detectron2/evaluation/rotated_coco_evaluation.py``).

Boxes are (cx, cy, w, h, angle in degrees) in XYWHA_ABS; IoU is the exact polygon IoU of
`heron.structures.rotated_boxes.pairwise_iou_rotated`. Only IoU counts: a box and its
180-degree turn are the same box.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from heron.evaluation.coco_evaluation import COCOEvaluator, _check_boxes
from heron.structures.boxes import BoxMode
from heron.structures.instances import Instances
from heron.structures.rotated_boxes import pairwise_iou_rotated

__all__ = ["RotatedCOCOEvaluator", "RotatedCOCOeval"]

logger = logging.getLogger(__name__)


class RotatedCOCOeval(COCOeval):
    """pycocotools' COCOeval with IoU of rotated boxes for 5-number ``bbox`` entries.

    Only ``iouType="bbox"``. When neither detections nor ground truth are rotated, the IoU
    is COCO's own (crowd regions included); rotated crowd regions are not supported.
    """

    @staticmethod
    def is_rotated(box_list: Any) -> bool:
        """Whether ``box_list`` (an (N, 5 or 4) array or a list of boxes) holds rotated boxes."""
        if isinstance(box_list, np.ndarray):
            return box_list.ndim == 2 and box_list.shape[1] == 5
        if isinstance(box_list, list):
            if not box_list:  # no box: the dimension cannot be told
                return False
            return all(isinstance(b, (list, np.ndarray)) and len(b) == 5 for b in box_list)
        return False

    @staticmethod
    def boxlist_to_tensor(boxlist: Any, output_box_dim: int) -> torch.Tensor:
        """Turn a list or array of XYWH (4) or XYWHA (5) boxes into an (N, output_box_dim)
        float64 tensor, converting XYWH to XYWHA when asked."""
        if isinstance(boxlist, np.ndarray):
            box_tensor = torch.from_numpy(boxlist).to(torch.float64)
        elif isinstance(boxlist, list):
            if not boxlist:
                return torch.zeros((0, output_box_dim), dtype=torch.float64)
            box_tensor = torch.tensor(boxlist, dtype=torch.float64)
        else:
            raise TypeError(f"boxlist must be a list or a numpy array, got {type(boxlist)}")
        input_box_dim = box_tensor.shape[1]
        if input_box_dim == output_box_dim:
            return box_tensor
        if input_box_dim == 4 and output_box_dim == 5:
            return BoxMode.convert(box_tensor, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
        raise ValueError(f"cannot convert {input_box_dim}-number boxes to {output_box_dim}")

    def compute_iou_dt_gt(self, dt: Any, gt: Any, is_crowd: list[int]) -> Any:
        """(D, G) IoU of detections against ground truth."""
        if self.is_rotated(dt) or self.is_rotated(gt):
            if any(is_crowd):
                raise ValueError(
                    "RotatedCOCOeval does not support crowd regions (iscrowd=1) with "
                    "rotated boxes; remove them or mark them iscrowd=0"
                )
            dt_tensor = self.boxlist_to_tensor(dt, output_box_dim=5)
            gt_tensor = self.boxlist_to_tensor(gt, output_box_dim=5)
            return pairwise_iou_rotated(dt_tensor, gt_tensor).numpy()
        return mask_util.iou(dt, gt, is_crowd)

    def computeIoU(self, imgId: Any, catId: Any) -> Any:
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 and len(dt) == 0:
            return []
        # same ordering and truncation as COCOeval.computeIoU
        inds = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in inds][: p.maxDets[-1]]
        if p.iouType != "bbox":
            raise ValueError(f"RotatedCOCOeval supports iouType 'bbox' only, got {p.iouType!r}")
        g = [g["bbox"] for g in gt]
        d = [d["bbox"] for d in dt]
        iscrowd = [int(o["iscrowd"]) for o in gt]
        return self.compute_iou_dt_gt(d, g, iscrowd)


class RotatedCOCOEvaluator(COCOEvaluator):
    """COCO box metrics for rotated-box predictions (``pred_boxes`` as RotatedBoxes).

    Only the "bbox" task; pycocotools with `RotatedCOCOeval` does the counting
    (``use_fast_impl`` does not apply: faster-coco-eval has no rotated IoU).
    """

    def _instances_to_json(self, instances: Instances, img_id: Any) -> list[dict]:
        return self.instances_to_json(instances, img_id)

    def instances_to_json(self, instances: Instances, img_id: Any) -> list[dict]:
        """COCO result records with ``bbox`` as XYWHA (5 numbers), or XYWH for 4-number boxes.

        Raises:
            ValueError: a box is not finite or has negative width or height.
        """
        num_instance = len(instances)
        if num_instance == 0:
            return []
        boxes = instances.pred_boxes.tensor.detach().cpu().double().numpy()
        if boxes.shape[1] == 4:
            boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        _check_boxes(boxes, img_id)
        boxes = boxes.tolist()
        scores = instances.scores.tolist()
        classes = instances.pred_classes.tolist()
        return [
            {"image_id": img_id, "category_id": classes[k], "bbox": boxes[k], "score": scores[k]}
            for k in range(num_instance)
        ]

    def _tasks_from_predictions(self, predictions: list[dict]) -> list[str]:
        return ["bbox"]

    def _evaluate_task(
        self, coco_results: list[dict], task: str, img_ids: Sequence[Any] | None
    ) -> Any:
        if task != "bbox":
            raise ValueError(f"RotatedCOCOEvaluator supports the 'bbox' task only, got {task!r}")
        return self._evaluate_predictions_on_coco(self._coco_api, coco_results, img_ids=img_ids)

    def _evaluate_predictions_on_coco(
        self, coco_gt: Any, coco_results: list[dict], img_ids: Sequence[Any] | None = None
    ) -> RotatedCOCOeval:
        """Run `RotatedCOCOeval` (evaluate, accumulate, summarize) on non-empty results."""
        if len(coco_results) == 0:
            raise ValueError("coco_results is empty; COCO's API cannot evaluate no predictions")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_dt = coco_gt.loadRes([dict(r) for r in coco_results])
        # COCO's maxDets [1, 10, 100], as Detectron2 (max_dets_per_image is not applied)
        coco_eval = RotatedCOCOeval(coco_gt, coco_dt, iouType="bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = list(img_ids)
        with contextlib.redirect_stdout(io.StringIO()) as summary:
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        logger.info("RotatedCOCOeval:\n%s", summary.getvalue().rstrip())
        return coco_eval
