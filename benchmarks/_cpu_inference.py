"""Shared pieces of the CPU inference benchmarks: batch-norm calibration of random
weights, peak-memory measurement in a child process, and the alternating timing loop."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

Run = Callable[[], int]  # one forward pass; returns the number of detections


def calibrate_norms(model: torch.nn.Module, run: Run) -> None:
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


def vm_hwm_mib() -> float:
    """Peak resident set size of this process (VmHWM). ru_maxrss is no good here: Linux
    carries it across exec, so a child would inherit the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def peak_rss_child(builders: dict[str, Callable[[], Run]], name: str, threads: int) -> None:
    """Run one model a few times and print its peak RSS in MiB (child process)."""
    torch.set_num_threads(threads)
    run = builders[name]()
    with torch.inference_mode():
        for _ in range(3):
            run()
    print(json.dumps({"peak_rss_mib": vm_hwm_mib()}))


def compare(
    script: str,
    builders: dict[str, Callable[[], Run]],
    title: str,
    *,
    runs: int,
    warmup: int,
    threads: int,
    verbose: bool,
) -> None:
    """Time the models alternately in this process (median of `runs` after `warmup`),
    measure each one's peak RSS in a fresh `script --child NAME` process, print both and
    the ratios of the first model to the second."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built = {name: build() for name, build in builders.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    counts = {}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for name, run in built.items():
                start = time.perf_counter()
                counts[name] = run()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    memory = {}
    for name in built:
        out = subprocess.run(
            [sys.executable, script, "--child", name, "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]

    med = {name: statistics.median(t) for name, t in times.items()}
    if verbose:
        print({name: [round(x, 3) for x in t] for name, t in times.items()})
    print(f"{title}, {threads} threads, {runs} runs")
    for name in built:
        print(
            f"  {name:12s} median {med[name] * 1000:8.1f} ms  detections {counts[name]:3d}  "
            f"peak RSS {memory[name]:7.0f} MiB"
        )
    first, second = list(built)
    print(f"  time ratio {first} / {second}: {med[first] / med[second]:.3f}")
    print(f"  peak-RSS ratio {first} / {second}: {memory[first] / memory[second]:.3f}")


def main(script: str, builders: dict[str, Callable[[], Run]], title: str, doc: str) -> None:
    """The command line of a comparison script: --runs, --warmup, --threads, --verbose
    (and the hidden --child NAME of the peak-memory subprocess)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--verbose", action="store_true", help="print every timing")
    parser.add_argument("--child", choices=sorted(builders), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(builders, args.child, args.threads)
        return
    compare(
        script,
        builders,
        title,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        verbose=args.verbose,
    )
