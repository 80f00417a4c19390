"""`heron export`: export a model to ONNX, torch.export or TorchScript and check it.

The model of --config-file (with --weights) is exported on a sample image resized as at
test time (ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)): --sample-image, or a seeded
random 480 x 640 image. The exported file is then run on the same image and the largest
absolute difference from eager mode is printed for every output. Exit code 0 when the
export and the check ran, 1 when the model cannot be exported to that format (the
exporter's reason is printed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import numpy as np

from heron.cli.common import add_model_arguments, load_config

__all__ = ["FORMATS", "add_parser", "export_main", "load_sample_image"]

logger = logging.getLogger("heron.cli.export")

# --format -> file name written under --output
FORMATS = {"onnx": "model.onnx", "torch-export": "model.pt2", "torchscript": "model.ts"}
# (height, width) of the generated sample image before the test-time resize
_GENERATED_SIZE = (480, 640)


def add_parser(subparsers: Any) -> None:
    """Register the `export` verb."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX, torch.export or TorchScript and compare with eager mode",
        description="Builds the model of --config-file, loads --weights, exports it on a "
        "sample image (after the test-time resize) to --output/"
        + ", ".join(f"{v} ({k})" for k, v in FORMATS.items())
        + ", runs the exported model on that image and prints the largest difference from "
        "eager mode per output. Put config overrides last, after `--`.",
    )
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="export format")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the file")
    parser.add_argument(
        "--sample-image",
        default=None,
        metavar="IMG",
        help="image to export and check with (default: a seeded random 480x640 image)",
    )
    parser.add_argument(
        "--postprocess",
        choices=("outside", "inside"),
        default="outside",
        help="outside: raw outputs at the resized input's size (the deploy form, default); "
        "inside: boxes clipped and masks pasted in the graph",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.set_defaults(handler=export_main)


def load_sample_image(cfg: Any, path: str | None) -> Any:
    """The (3, H, W) float32 sample: `path` (or a seeded random image) in INPUT.FORMAT,
    resized as at test time."""
    import torch

    from heron.data.detection_utils import read_image
    from heron.data.transforms.augmentation_impl import ResizeShortestEdge

    if path is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(*_GENERATED_SIZE, 3), dtype=np.uint8)
    else:
        image = read_image(path, format=cfg.INPUT.FORMAT)
    resize = ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)


def _build_model(cfg: Any) -> Any:
    from heron.checkpoint import DetectionCheckpointer
    from heron.modeling import build_model

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def export_main(args: argparse.Namespace) -> int:
    """Export, run the exported file on the sample and print the differences."""
    import torch

    from heron.export.api import (
        ExportError,
        export_model_outputs,
        export_onnx,
        export_torch_export,
        export_torchscript,
        run_exported,
    )

    cfg = load_config(args)
    model = _build_model(cfg)
    image = load_sample_image(cfg, args.sample_image).to(model.pixel_mean.device)
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, FORMATS[args.format])
    try:
        if args.format == "onnx":
            export_onnx(model, image, path, opset=args.opset, postprocess=args.postprocess, cfg=cfg)
        elif args.format == "torch-export":
            export_torch_export(model, image, path, postprocess=args.postprocess)
        else:
            export_torchscript(model, image, path, postprocess=args.postprocess)
    except ExportError as e:
        print(f"heron export: {e}", file=sys.stderr)
        return 1
    with torch.no_grad():
        expected = export_model_outputs(model, image, args.postprocess)
    actual = run_exported(path, image.cpu())
    print(f"exported {type(model).__name__} to {path}")
    print(f"checked on a {tuple(image.shape[1:])} image (height, width)")
    for name, want in expected.items():
        got = torch.as_tensor(actual[name])
        if got.shape != want.shape:
            print(f"  {name}: shape {tuple(got.shape)} != eager {tuple(want.shape)}")
            continue
        diff = (got.float() - want.cpu().float()).abs()
        largest = diff.max().item() if diff.numel() else 0.0
        print(f"  {name} {tuple(want.shape)}: max abs difference {largest:.3g}")
    return 0
