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

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

HEIGHT, WIDTH = 480, 640


def calibrate_norms(model: torch.nn.Module, run) -> None:
    """Set every batch-norm's running mean/var to the per-channel statistics of its input
    in one forward pass, so activations keep unit scale through the random network."""
    from torchvision.ops import FrozenBatchNorm2d as TVFrozenBN

    from heron.layers import FrozenBatchNorm2d

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-5)

    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d, TVFrozenBN)
    hooks = [
        m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, norms)
    ]
    assert hooks, "no batch-norm found to calibrate"
    with torch.inference_mode():
        run()
    for h in hooks:
        h.remove()


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


def peak_rss_child(name: str, threads: int) -> None:
    """Run one model a few times and print its peak RSS in MiB (child process)."""
    torch.set_num_threads(threads)
    run = BUILDERS[name]()
    with torch.inference_mode():
        for _ in range(3):
            run()
    print(json.dumps({"peak_rss_mib": _vm_hwm_mib()}))


def _vm_hwm_mib() -> float:
    """Peak resident set size of this process (VmHWM). ru_maxrss is no good here: Linux
    carries it across exec, so a child would inherit the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--verbose", action="store_true", help="print every timing")
    parser.add_argument("--child", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(args.child, args.threads)
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = {name: build() for name, build in BUILDERS.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts = {}
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            for name, run in runs.items():
                start = time.perf_counter()
                counts[name] = run()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    memory = {}
    for name in runs:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]

    med = {name: statistics.median(t) for name, t in times.items()}
    if args.verbose:
        print({name: [round(x, 3) for x in t] for name, t in times.items()})
    print(f"Mask R-CNN R50-FPN, CPU, {HEIGHT}x{WIDTH}, {args.threads} threads, {args.runs} runs")
    for name in runs:
        print(
            f"  {name:12s} median {med[name] * 1000:8.1f} ms  detections {counts[name]:3d}  peak RSS {memory[name]:7.0f} MiB"
        )
    print(f"  time ratio heron / torchvision: {med['heron'] / med['torchvision']:.3f}")
    print(f"  peak-RSS ratio heron / torchvision: {memory['heron'] / memory['torchvision']:.3f}")


if __name__ == "__main__":
    main()
