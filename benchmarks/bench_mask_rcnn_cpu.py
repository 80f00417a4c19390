"""CPU inference of Mask R-CNN R50-FPN: Heron against torchvision, same run.

Both models get random weights, a 480x640 input, score threshold 0 and 100 detections
per image, so both run the full box and mask heads on 100 instances. Random weights with
identity batch-norm statistics make ResNet activations explode (every proposal then
collapses onto the image border), so before timing, one forward pass sets each
batch-norm's statistics to the batch statistics it sees (a data-dependent init, applied
the same way to both models). Timings alternate
between the two models (median of --runs after --warmup); peak memory is each model's
peak resident set size in its own fresh subprocess.

    .venv/bin/python benchmarks/bench_mask_rcnn_cpu.py [--runs 10] [--threads N]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cpu_inference import calibrate_norms, main

HEIGHT, WIDTH = 480, 640


def build_heron():
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    model = build_model(cfg).eval()
    image = torch.rand(3, HEIGHT, WIDTH) * 255

    def run():
        out = model([{"image": image, "height": HEIGHT, "width": WIDTH}])
        return len(out[0]["instances"])

    calibrate_norms(model, run)
    return run


def build_torchvision():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        box_score_thresh=0.0,
        box_detections_per_img=100,
        min_size=HEIGHT,
        max_size=WIDTH,
    ).eval()
    image = torch.rand(3, HEIGHT, WIDTH)

    def run():
        return len(model([image])[0]["boxes"])

    calibrate_norms(model, run)
    return run


BUILDERS = {"heron": build_heron, "torchvision": build_torchvision}


if __name__ == "__main__":
    main(__file__, BUILDERS, f"Mask R-CNN R50-FPN, CPU, {HEIGHT}x{WIDTH}", __doc__)
