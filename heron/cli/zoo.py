"""`heron zoo list`: the model-zoo configs shipped with Heron."""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any

__all__ = ["add_parser", "zoo_list"]


def add_parser(subparsers: Any) -> None:
    """Register the `zoo` verb and its `list` action."""
    parser = subparsers.add_parser(
        "zoo",
        help="list the model-zoo configs shipped with Heron",
        description="Lists the configs under heron/model_zoo/configs, by the names "
        "--config-file and heron.model_zoo.get_config_file accept.",
    )
    actions = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list shipped configs")
    listing.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'COCO-Detection/*'"
    )
    listing.set_defaults(handler=zoo_list)


def zoo_list(args: argparse.Namespace) -> int:
    """Print the shipped config names matching the pattern, grouped by folder."""
    from heron.model_zoo import list_config_files

    names = [n for n in list_config_files() if fnmatch.fnmatch(n, args.pattern)]
    if not names:
        print(f"no shipped config matches {args.pattern!r}")
        return 1
    for name in names:
        print(name)
    print(f"\n{len(names)} configs")
    return 0
