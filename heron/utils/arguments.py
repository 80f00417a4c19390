"""Command-line arguments shared by training entry points (kept free of heavy imports so
that `heron --help` stays fast)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_training_arguments"]


def add_training_arguments(parser: argparse.ArgumentParser, *, lazy: bool = False) -> None:
    """Add the arguments of :func:`default_argument_parser` to ``parser`` (used by the
    ``heron train`` verbs). ``lazy`` words the overrides as ``key=value``."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last checkpoint in the output folder (else start from the "
        "config's weights)",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    # A port derived from the user id, so that two users on one machine do not collide.
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    parser.add_argument(
        "--dist-url",
        default=f"tcp://127.0.0.1:{port}",
        help="initialization URL for torch.distributed ('auto' picks a free local port)",
    )
    overrides = (
        'config overrides "path.key=value" at the end of the command, e.g. optimizer.lr=0.01'
        if lazy
        else 'config overrides "KEY VALUE" pairs at the end of the command, e.g. '
        "SOLVER.BASE_LR 0.01"
    )
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help=overrides)
