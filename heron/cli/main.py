"""Entry point of the `heron` command (also `python -m heron`).

Each verb lives in its own module under heron/cli and registers an argparse sub-parser;
`main` dispatches to it. Verbs that need heavy imports (torch models, data) import them
inside their handler so `heron --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from heron import __version__

# heron/cli modules with an `add_parser(subparsers)` that registers their verbs.
_VERB_MODULES = (
    "demo",
    "evaluate",
    "predict",
    "visualize",
    "analyze",
    "benchmark",
    "export",
    "zoo",
    "serve",
)


def _cmd_env(args: argparse.Namespace) -> int:
    from heron.utils.env import collect_env_info

    print(collect_env_info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb."""
    parser = argparse.ArgumentParser(
        prog="heron",
        description="Heron: detection and segmentation on PyTorch with Detectron2's API.",
    )
    parser.add_argument("--version", action="version", version=f"heron {__version__}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = verbs.add_parser("env", help="print versions of Heron, PyTorch and friends, and devices")
    env.set_defaults(handler=_cmd_env)
    from heron.cli.train import add_train_parsers

    add_train_parsers(verbs)
    for module in _VERB_MODULES:
        importlib.import_module(f"heron.cli.{module}").add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) and run the chosen verb; returns the exit code.

    A missing file, an unknown dataset or an invalid value (FileNotFoundError, KeyError,
    ValueError) is printed as one line naming the verb, with exit code 2; set HERON_DEBUG=1
    to get the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (FileNotFoundError, KeyError, ValueError) as e:
        if os.environ.get("HERON_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"heron {args.command}: error: {message}", file=sys.stderr)
        return 2
