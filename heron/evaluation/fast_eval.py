"""Glue to faster-coco-eval, the fast COCO metrics backend of ``COCOEvaluator``.

Detectron2 ships a compiled ``COCOeval_opt`` (``detectron2/evaluation/fast_eval_api.py``);
Heron has no compiled code of its own and uses faster-coco-eval's ``COCOeval_faster``
instead. That package has its own ``COCO`` class, so the ground truth is indexed a second
time from the same dataset dict. Its summary keeps pycocotools' layout for the first 12
(box/mask) or 10 (keypoint) statistics, which are the ones Heron reads.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from faster_coco_eval import COCO as FastCOCO
from faster_coco_eval import COCOeval_faster

__all__ = ["COCOeval_opt", "fast_coco_from_dataset"]

logger = logging.getLogger(__name__)


class COCOeval_opt(COCOeval_faster):
    """faster-coco-eval's ``COCOeval_faster``, printing its summary through ``logging``.

    Takes faster-coco-eval ``COCO`` objects (see `fast_coco_from_dataset`), not
    pycocotools ones. ``stats``, ``eval["precision"]`` (T, R, K, A, M) and
    ``eval["recall"]`` (T, K, A, M) mean what they mean in pycocotools.
    """

    def __init__(self, cocoGt: Any = None, cocoDt: Any = None, iouType: str = "segm") -> None:
        super().__init__(cocoGt, cocoDt, iouType, print_function=logger.debug)


def fast_coco_from_dataset(dataset: dict) -> FastCOCO:
    """Index a COCO-format dict (``images``, ``annotations``, ``categories``) for the fast backend.

    The dict is deep-copied first: faster-coco-eval normalizes ids in place.
    """
    return FastCOCO(copy.deepcopy(dataset), print_function=logger.debug)
