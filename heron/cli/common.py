"""Arguments and setup shared by the `heron` verbs that run a model from a config.

A verb calls :func:`add_model_arguments` on its sub-parser, then :func:`load_config` on the
parsed arguments. The config is a YAML file (Detectron2's CfgNode format, ``_BASE_``
inheritance, Heron's defaults for missing keys), a model-zoo name such as
"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", or a shipped demo config.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

__all__ = ["add_model_arguments", "load_config", "resolve_config_file"]

logger = logging.getLogger("heron.cli")


def add_model_arguments(parser: argparse.ArgumentParser, *, weights_required: bool = False) -> None:
    """Add --config-file, --weights, --device and trailing KEY VALUE overrides to `parser`."""
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a YAML config file, or a model-zoo config name (see `heron zoo list`)",
    )
    parser.add_argument(
        "--weights",
        required=weights_required,
        default=None,
        metavar="PATH",
        help="checkpoint to load (.pth or .pkl); sets MODEL.WEIGHTS",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N; sets MODEL.DEVICE (default: the config's, or cpu when it "
        "names CUDA and none is available)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.3",
    )


def resolve_config_file(name: str) -> str:
    """A path to the config `name`: an existing file, else a shipped model-zoo config.

    Raises:
        FileNotFoundError: neither a file nor a shipped config has that name.
    """
    if os.path.isfile(name):
        return name
    from heron.model_zoo import get_config_file

    try:
        return get_config_file(name)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--config-file {name!r} is not a file, and {e}") from None


def load_config(args: argparse.Namespace, *, freeze: bool = True) -> Any:
    """The CfgNode of --config-file with --weights, --device and the overrides applied.

    Without --device, a config asking for CUDA on a machine without it runs on the CPU,
    with a warning (Detectron2's default MODEL.DEVICE is "cuda")."""
    from heron.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(resolve_config_file(args.config_file))
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    cfg.merge_from_list(opts)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    if args.device is not None:
        cfg.MODEL.DEVICE = args.device
    elif cfg.MODEL.DEVICE.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            logger.warning(
                "MODEL.DEVICE is %r but CUDA is not available: running on the CPU "
                "(pass --device to choose)",
                cfg.MODEL.DEVICE,
            )
            cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg
