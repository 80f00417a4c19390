"""`heron zoo list` and `heron zoo download`: the model-zoo configs shipped with Heron and
the checkpoints Detectron2 published for them."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Any

__all__ = ["add_parser", "zoo_download", "zoo_list"]


def add_parser(subparsers: Any) -> None:
    """Register the `zoo` verb and its `list` and `download` actions."""
    parser = subparsers.add_parser(
        "zoo",
        help="list the model-zoo configs, download published checkpoints",
        description="Lists the configs under heron/model_zoo/configs, by the names "
        "--config-file and heron.model_zoo.get_config_file accept, and downloads the "
        "checkpoints Detectron2 published for them into $HERON_CACHE (default "
        "~/.cache/heron; $HERON_MODEL_ZOO_URL names a mirror).",
    )
    actions = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list shipped configs")
    listing.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'COCO-Detection/*'"
    )
    listing.add_argument("--urls", action="store_true", help="show each published checkpoint's URL")
    listing.set_defaults(handler=zoo_list)
    fetch = actions.add_parser("download", help="download a config's published checkpoint")
    fetch.add_argument("name", help="a config name, e.g. COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    fetch.add_argument("--force", action="store_true", help="download again even if cached")
    fetch.set_defaults(handler=zoo_download)


def zoo_list(args: argparse.Namespace) -> int:
    """Print the shipped config names matching the pattern (and URLs with --urls)."""
    from heron.model_zoo import get_checkpoint_url, list_config_files

    names = [n for n in list_config_files() if fnmatch.fnmatch(n, args.pattern)]
    if not names:
        print(f"no shipped config matches {args.pattern!r}")
        return 1
    trained = 0
    for name in names:
        try:
            url = get_checkpoint_url(name)
            trained += 1
        except KeyError:
            url = ""
        print(f"{name}  {url}".rstrip() if args.urls else name)
    print(f"\n{len(names)} configs, {trained} with a published checkpoint")
    return 0


def zoo_download(args: argparse.Namespace) -> int:
    """Download one checkpoint into the cache and print its path."""
    from heron.model_zoo import download_checkpoint

    try:
        path = download_checkpoint(args.name, force=args.force)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        print(f"heron zoo download: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
