"""Small R-CNN configs and synthetic images for fast CPU tests of the modeling stack."""

from __future__ import annotations

import torch

from heron.config import get_cfg
from heron.structures.boxes import Boxes
from heron.structures.instances import Instances
from heron.structures.keypoints import Keypoints
from heron.structures.masks import BitMasks


def small_rcnn_cfg(*, mask: bool = False, keypoint: bool = False, cascade: bool = False):
    """A ResNet-18 FPN R-CNN, narrow enough to train a few steps on CPU in seconds."""
    cfg = get_cfg()
    m = cfg.MODEL
    m.DEVICE = "cpu"
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.BACKBONE.NAME = "build_resnet_fpn_backbone"
    m.BACKBONE.FREEZE_AT = 0
    m.RESNETS.DEPTH = 18
    m.RESNETS.RES2_OUT_CHANNELS = 64
    m.RESNETS.NORM = "BN"
    m.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    m.FPN.OUT_CHANNELS = 32
    m.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    m.RPN.PRE_NMS_TOPK_TRAIN = m.RPN.PRE_NMS_TOPK_TEST = 200
    m.RPN.POST_NMS_TOPK_TRAIN = m.RPN.POST_NMS_TOPK_TEST = 50
    m.RPN.BATCH_SIZE_PER_IMAGE = 64
    m.ROI_HEADS.NAME = "CascadeROIHeads" if cascade else "StandardROIHeads"
    m.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    m.ROI_HEADS.NUM_CLASSES = 2
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    m.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    m.ROI_BOX_HEAD.NUM_FC = 2
    m.ROI_BOX_HEAD.FC_DIM = 64
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = cascade
    m.MASK_ON = mask
    m.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    m.ROI_MASK_HEAD.NUM_CONV = 2
    m.ROI_MASK_HEAD.CONV_DIM = 32
    m.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    m.KEYPOINT_ON = keypoint
    m.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 4
    m.ROI_KEYPOINT_HEAD.CONV_DIMS = [32, 32]
    m.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
    m.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
    return cfg


# (x0, y0, x1, y1, class) of the objects drawn in each synthetic image
OBJECTS = [
    [(10, 12, 60, 50, 0), (70, 60, 118, 120, 1)],
    [(30, 20, 100, 70, 1), (8, 80, 48, 124, 0)],
]
COLORS = {0: (220.0, 40.0, 40.0), 1: (40.0, 200.0, 60.0)}


def synthetic_batch(size: int = 128) -> list[dict]:
    """Two images with two filled rectangles each, and their full annotations."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for objects in OBJECTS:
        image = torch.rand(3, size, size, generator=g) * 60
        boxes, classes, masks, keypoints = [], [], [], []
        for x0, y0, x1, y1, cls in objects:
            image[:, y0:y1, x0:x1] = torch.tensor(COLORS[cls]).view(3, 1, 1)
            mask = torch.zeros(size, size, dtype=torch.bool)
            mask[y0:y1, x0:x1] = True
            boxes.append([x0, y0, x1, y1])
            classes.append(cls)
            masks.append(mask)
            # four visible keypoints: the corners, inset by one pixel
            keypoints.append(
                [[x0 + 1, y0 + 1, 2], [x1 - 1, y0 + 1, 2], [x1 - 1, y1 - 1, 2], [x0 + 1, y1 - 1, 2]]
            )
        instances = Instances(
            (size, size),
            gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
            gt_classes=torch.tensor(classes),
            gt_masks=BitMasks(torch.stack(masks)),
            gt_keypoints=Keypoints(torch.tensor(keypoints, dtype=torch.float32)),
        )
        batch.append({"image": image, "height": size, "width": size, "instances": instances})
    return batch
