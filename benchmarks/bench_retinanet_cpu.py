"""CPU inference of RetinaNet R50-FPN: Heron against torchvision, same run.

Both models get random weights (batch norms calibrated by one forward pass, see
_cpu_inference.calibrate_norms), a 480x640 input, score threshold 0, 1000 candidates per
level before NMS at IoU 0.5, and 100 detections per image, so both do the full per-level
top-k, decoding and batched NMS. Timings alternate between the two models (median of
--runs after --warmup); peak memory is each model's peak resident set size in its own
fresh subprocess.

One architectural difference remains: Detectron2's (and Heron's) P6 is a stride-2 conv on
C5 (2048 channels), torchvision's on P5 (256 channels); at 480x640 that conv's output is
8x10, so Heron does (2048 - 256) x 256 x 9 x 80 = 0.33 G more multiply-adds.

    .venv/bin/python benchmarks/bench_retinanet_cpu.py [--runs 10] [--threads N]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cpu_inference import calibrate_norms, main

HEIGHT, WIDTH = 480, 640


def build_heron():
    import heron.modeling.meta_arch.retinanet  # noqa: F401  (registers RetinaNet)
    from heron.config import get_cfg
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    model = build_model(cfg).eval()
    image = torch.rand(3, HEIGHT, WIDTH) * 255

    def run():
        out = model([{"image": image, "height": HEIGHT, "width": WIDTH}])
        return len(out[0]["instances"])

    calibrate_norms(model, run)
    return run


def build_torchvision():
    from torchvision.models.detection import retinanet_resnet50_fpn

    model = retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        score_thresh=0.0,
        topk_candidates=1000,
        nms_thresh=0.5,
        detections_per_img=100,
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
    main(__file__, BUILDERS, f"RetinaNet R50-FPN, CPU, {HEIGHT}x{WIDTH}", __doc__)
