"""`pneumolab-cache list | clear [--downloads | --images] [--dir DIR]`: what data/cache.py keeps, shown or freed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumolab.cli.exits import side_command
from pneumolab.config import cache_root
from pneumolab.data import cache


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumolab-cache", description=cache.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="the cache folder (default: $PNEUMOLAB_DATA, else ~/.cache/pneumolab)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="what the cache holds, with sizes")
    clear = commands.add_parser("clear", help="delete the cached files (all of them, or one kind)")
    only = clear.add_mutually_exclusive_group()
    only.add_argument("--downloads", action="store_true", help="only the PneumoniaMNIST downloads")
    only.add_argument("--images", action="store_true", help="only the decoded images of data=folder")
    return parser.parse_args(argv)


@side_command("pneumolab-cache")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = cache_root(str(args.dir) if args.dir else None)
    if args.command == "list":
        print(cache.list_cache(root))
    else:
        kinds = ("downloads",) if args.downloads else ("images",) if args.images else tuple(cache.KINDS)
        print(cache.clear_cache(root, kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
