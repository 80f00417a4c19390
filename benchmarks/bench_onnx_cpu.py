"""CPU inference of Mask R-CNN R50-FPN exported to ONNX: onnxruntime against eager
PyTorch, same run.

The model (zoo `mask_rcnn_R_50_FPN_1x.yaml`, random weights with batch norms calibrated by
one forward pass, score threshold 0, 100 detections) is exported by `heron.export` in the
deployment form (postprocessing outside the graph: boxes, scores, classes and 28x28 mask
probabilities). Eager mode runs `heron.export.api.export_model_outputs`, the exact function
that was exported, so both sides do the same work. Timings alternate between the two
(median of --runs after --warmup), on one 480x640 image; both use --threads threads.

    .venv/bin/python benchmarks/bench_onnx_cpu.py [--runs 10] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cpu_inference import calibrate_norms

HEIGHT, WIDTH = 480, 640


def main() -> None:
    import onnxruntime as ort

    from heron.config import get_cfg
    from heron.export import export_onnx
    from heron.export.api import export_model_outputs
    from heron.model_zoo import get_config_file
    from heron.modeling import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    model = build_model(cfg).eval()
    image = torch.rand(3, HEIGHT, WIDTH) * 255

    def eager():
        with torch.no_grad():
            return len(export_model_outputs(model, image, "outside")["boxes"])

    calibrate_norms(model, eager)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, image, os.path.join(tmp, "mask_rcnn.onnx"), cfg=cfg)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}

    def onnx():
        return len(session.run(None, feed)[0])

    runs = {"onnxruntime": onnx, "eager": eager}
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts = {}
    for i in range(args.warmup + args.runs):
        for name, run in runs.items():
            start = time.perf_counter()
            counts[name] = run()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"Mask R-CNN R50-FPN, CPU, {HEIGHT}x{WIDTH}, {args.threads} threads, {args.runs} runs")
    for name in runs:
        print(f"  {name:12s} median {med[name] * 1000:8.1f} ms  detections {counts[name]:3d}")
    print(f"  time ratio onnxruntime / eager: {med['onnxruntime'] / med['eager']:.3f}")


if __name__ == "__main__":
    main()
