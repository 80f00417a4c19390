"""COCO 2017 panoptic data ("separated" format: instances plus a stuff-only semantic map)
for Panoptic FPN, evaluated for boxes/masks, semantic segmentation and panoptic quality."""

from heron.config import LazyCall as L
from heron.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

from .coco import dataloader

dataloader.train.dataset.names = "coco_2017_train_panoptic_separated"
# every image has stuff labels, so none is dropped for lacking instances
dataloader.train.dataset.filter_empty = False
dataloader.test.dataset.names = "coco_2017_val_panoptic_separated"

dataloader.evaluator = L(DatasetEvaluators)(
    evaluators=[
        L(COCOEvaluator)(dataset_name="${....test.dataset.names}"),
        L(SemSegEvaluator)(dataset_name="${....test.dataset.names}"),
        L(COCOPanopticEvaluator)(dataset_name="${....test.dataset.names}"),
    ]
)
