"""`pneumolab-cache list|clear`: what the download and decoded-image caches hold, and emptying them.

The cache folder is data.cache_dir, else $PNEUMOLAB_DATA, else ~/.cache/pneumolab. It holds
- downloads: `pneumoniamnist*.npz`, the MedMNIST files (data=pneumoniamnist);
- decoded images: `folder/<key>.npz`, one per image folder, image size, data.resize and file list (data=folder);
and the temp files of writes that were cut short. Beside each cached npz, `<name>.source` names
where it came from (the download's URL; the image folder, image size and data.resize), one
line per source; `list` shows it. Only these are listed or deleted: a cache folder pointed at
a folder of one's own loses nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from pneumolab.config import cache_root
from pneumolab.files import atomic_write_text

log = logging.getLogger("pneumolab")

# What each kind of cache file is, and where it lies under the cache folder.
KINDS = {
    "downloads": ("PneumoniaMNIST downloads (data=pneumoniamnist)", ("pneumoniamnist*.npz", ".pneumoniamnist*.part")),
    "images": ("decoded images (data=folder)", ("folder/*.npz", "folder/.*.tmp")),
}
# Beside a cached npz: where its contents came from.
SOURCE_SUFFIX = ".source"
# Above this, every job mentions the cache once at its start.
LARGE_CACHE_BYTES = 2 * 10**9


@dataclass(frozen=True)
class CacheFile:
    kind: str
    path: Path
    size: int
    modified: datetime


def cache_files(root: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> list[CacheFile]:
    """pneumolab's files under `root`, by kind then name."""
    found = []
    for kind in kinds:
        for pattern in KINDS[kind][1]:
            for path in sorted(root.glob(pattern)):
                if path.is_file():
                    stat = path.stat()
                    found.append(CacheFile(kind, path, stat.st_size, datetime.fromtimestamp(stat.st_mtime)))
    return found


def human_size(n_bytes: float) -> str:
    """Decimal units, as disks are sold and `df -H` prints them."""
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def npz_contents(path: Path) -> str:
    """What an npz holds, from its array headers only: `train 5216x28x28, test 624x28x28`."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = []
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, _ = read_header(member)
                shapes.append(f"{name.removesuffix('.npy')} {'x'.join(map(str, shape))}")
    except (OSError, ValueError, zipfile.BadZipFile):
        return "unreadable (clear removes it)"
    return ", ".join(shapes)


def source_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(SOURCE_SUFFIX)


def note_source(cache_file: Path, source: str) -> None:
    """Record beside a cache file where its contents came from (a URL, an image folder).

    Never fails a run: the cache works without the record, and `list` then says it is not recorded.
    """
    sidecar = source_file(cache_file)
    try:
        known = sidecar.read_text(encoding="utf-8").splitlines() if sidecar.is_file() else []
        if source not in known:  # copies of one folder (same names, sizes and times) share a cache file
            atomic_write_text(sidecar, "".join(f"{line}\n" for line in [*known, source]))
    except (OSError, UnicodeError) as exc:
        log.debug("could not record the source of %s (%s)", cache_file, exc)


def recorded_source(cache_file: Path) -> str:
    try:
        sources = [line for line in source_file(cache_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeError):
        sources = []
    return f"from {'; '.join(sources)}" if sources else "source not recorded (cached by an older pneumolab)"


def list_cache(root: Path) -> str:
    files = cache_files(root)
    lines = [f"pneumolab cache: {root} (moved with $PNEUMOLAB_DATA or data.cache_dir)"]
    for kind, (title, _) in KINDS.items():
        mine = [f for f in files if f.kind == kind]
        lines.append(f"  {title}: {len(mine)} file{'s' if len(mine) != 1 else ''}, {human_size(sum(f.size for f in mine))}")
        for f in mine:
            if f.path.suffix == ".npz":
                contents = f"{npz_contents(f.path)}  {recorded_source(f.path)}"
            else:
                contents = "left by an interrupted write"
            lines.append(f"    {f.path.relative_to(root)}  {human_size(f.size)}  {f.modified:%Y-%m-%d %H:%M}  {contents}")
    lines.append(f"  total {human_size(sum(f.size for f in files))}; `pneumolab-cache clear` deletes it all")
    return "\n".join(lines)


def clear_cache(root: Path, kinds: tuple[str, ...]) -> str:
    files = cache_files(root, kinds)
    for f in files:
        f.path.unlink(missing_ok=True)  # a concurrent clear may have got there first
        if f.path.suffix == ".npz":
            source_file(f.path).unlink(missing_ok=True)
    for kind in kinds:  # the records of npz files deleted by hand
        for pattern in KINDS[kind][1]:
            if pattern.endswith(".npz"):
                for sidecar in root.glob(pattern.removesuffix(".npz") + SOURCE_SUFFIX):
                    if not sidecar.with_suffix(".npz").exists():
                        sidecar.unlink(missing_ok=True)
    return f"pneumolab cache: deleted {len(files)} file{'s' if len(files) != 1 else ''}, {human_size(sum(f.size for f in files))}, from {root}"


def mention_large_cache(root: Path) -> None:
    """One log line when the cache has grown past a few GB: the decoded-image cache never shrinks by itself."""
    total = sum(f.size for f in cache_files(root))
    if total > LARGE_CACHE_BYTES:
        log.warning("the cache %s holds %s; `pneumolab-cache list` shows what, `pneumolab-cache clear` frees it",
                    root, human_size(total))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pneumolab-cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="the cache folder (default: $PNEUMOLAB_DATA, else ~/.cache/pneumolab)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="what the cache holds, with sizes")
    clear = commands.add_parser("clear", help="delete the cached files (all of them, or one kind)")
    only = clear.add_mutually_exclusive_group()
    only.add_argument("--downloads", action="store_true", help="only the PneumoniaMNIST downloads")
    only.add_argument("--images", action="store_true", help="only the decoded images of data=folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = cache_root(str(args.dir) if args.dir else None)
    if args.command == "list":
        print(list_cache(root))
    else:
        kinds = ("downloads",) if args.downloads else ("images",) if args.images else tuple(KINDS)
        print(clear_cache(root, kinds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
