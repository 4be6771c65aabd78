"""`pneumolab-cache list|clear`: what the download and decoded-image caches hold, and emptying them.

The cache folder is data.cache_dir, else $PNEUMOLAB_DATA, else ~/.cache/pneumolab. It holds
- downloads: `pneumoniamnist*.npz`, the MedMNIST files (data=pneumoniamnist);
- decoded images: `folder/<key>.npz`, one per image folder, image size, data.resize and file list (data=folder);
and the temp files of writes that were cut short. For each cached npz, `sources/<name>.txt` names
where it came from (the download's URL; the image folder, image size and data.resize), one
line per source; `list` shows it. Only these are listed or deleted: a cache folder pointed at
a folder of one's own loses nothing else.

A file counts as pneumolab's only by what no file of a user's can share by chance: decoded
images and temp files by their names (a 64-digit SHA-256 key, a 12-digit random token), a
download by its content (the MD5 of the official release, which pneumolab checks before it
keeps one). A user's `pneumoniamnist.npz` or `folder/scan.npz` is listed as not
pneumolab's and never deleted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from pneumolab.data.release import MD5, size_suffix
from pneumolab.files import atomic_write_text, human_size

log = logging.getLogger("pneumolab")

# What each kind of cache file is, and where it lies under the cache folder.
KINDS = {
    "downloads": ("PneumoniaMNIST downloads (data=pneumoniamnist)", ("pneumoniamnist*.npz", ".pneumoniamnist*.part")),
    "images": ("decoded images (data=folder)", ("folder/*.npz", "folder/.*.tmp")),
}
# The names pneumolab gives each kind's files (the globs above only find candidates): a download as the
# release names it (its content is checked too, see `is_pneumolab_file`), decoded images by their SHA-256
# key, and temp files as files.create_temp_beside names them, with their 12-hex-digit token.
NAMES = {
    "downloads": (re.compile(r"pneumoniamnist(?:_(?P<size>[1-9][0-9]*))?\.npz"),
                  re.compile(r"\.pneumoniamnist(?:_[1-9][0-9]*)?\.npz\.[0-9a-f]{12}\.part")),
    "images": (re.compile(r"folder/[0-9a-f]{64}\.npz"), re.compile(r"folder/\.[0-9a-f]{64}\.npz\.[0-9a-f]{12}\.tmp")),
}
# Where each cached npz came from, one small text file per npz in this sub-folder of the cache folder
# (apart from the npz files: folder/ holds nothing but decoded images).
SOURCES = "sources"
# Above this, every job mentions the cache once at its start.
LARGE_CACHE_BYTES = 2 * 10**9


@dataclass(frozen=True)
class CacheFile:
    kind: str
    path: Path
    size: int
    modified: datetime


def candidate_files(root: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> list[CacheFile]:
    """The files under `root` whose names look like a cache file of `kinds`, by kind then name."""
    found = []
    for kind in kinds:
        for pattern in KINDS[kind][1]:
            for path in sorted(root.glob(pattern)):
                try:
                    if path.is_file():
                        stat = path.stat()
                        found.append(CacheFile(kind, path, stat.st_size, datetime.fromtimestamp(stat.st_mtime)))
                except OSError:  # deleted meanwhile (a concurrent clear), or unreadable: not listed
                    pass
    return found


def cache_files(root: Path, kinds: tuple[str, ...] = tuple(KINDS), check_contents: bool = True) -> list[CacheFile]:
    """pneumolab's files under `root`, by kind then name. check_contents=False trusts a download's name
    (for a size estimate only: never to delete by)."""
    return [f for f in candidate_files(root, kinds) if is_pneumolab_file(root, f, check_contents)]


def not_pneumolabs(root: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> list[CacheFile]:
    """Files with a cache-like name that pneumolab did not write: never deleted, named by list and clear."""
    return [f for f in candidate_files(root, kinds) if not is_pneumolab_file(root, f, True)]


def is_pneumolab_file(root: Path, f: CacheFile, check_contents: bool) -> bool:
    name = f.path.relative_to(root).as_posix()
    final, temp = NAMES[f.kind]
    if temp.fullmatch(name):
        return True
    match = final.fullmatch(name)
    if match is None:
        return False
    if f.kind != "downloads":
        return True
    size = int(match["size"] or 28)
    return official_release_name(size) == name and (not check_contents or is_official_release(f.path, size))


def official_release_name(size: int) -> str | None:
    return f"pneumoniamnist{size_suffix(size)}.npz" if size in MD5 else None


def is_official_release(path: Path, size: int) -> bool:
    """Whether `path` is byte for byte the MedMNIST release pneumolab downloads (its MD5 is the release's)."""
    try:
        stat = path.stat()
        return file_md5(path, stat.st_size, stat.st_mtime_ns) == MD5[size]
    except OSError:
        return False


@functools.lru_cache(maxsize=16)
def file_md5(path: Path, size: int, mtime_ns: int) -> str:
    """MD5 of a file, remembered per path, size and modification time (list, then clear, read it once)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_not_pneumolabs(root: Path, files: list[CacheFile]) -> str:
    names = ", ".join(f.path.relative_to(root).as_posix() for f in files)
    return (f"{len(files)} file{'s' if len(files) != 1 else ''} with a cache file's name that pneumolab did not "
            f"write (not its naming, or a download whose MD5 is not the official release's): {names}")


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


def source_file(root: Path, cache_file: Path) -> Path:
    """sources/pneumoniamnist_64.npz.txt for a download, sources/folder-<key>.npz.txt for decoded images."""
    return root / SOURCES / f"{cache_file.relative_to(root).as_posix().replace('/', '-')}.txt"


def cache_file_of(sidecar: Path) -> Path:
    """The npz a file of sources/ describes."""
    name = sidecar.name.removesuffix(".txt")
    root = sidecar.parent.parent
    return root / "folder" / name.removeprefix("folder-") if name.startswith("folder-") else root / name


def note_source(root: Path, cache_file: Path, source: str) -> None:
    """Record where a file of the cache folder `root` came from (a URL, an image folder).

    Never fails a run: the cache works without the record, and `list` then says it is not recorded.
    """
    sidecar = source_file(root, cache_file)
    try:
        sidecar.parent.mkdir(exist_ok=True)
        known = sidecar.read_text(encoding="utf-8").splitlines() if sidecar.is_file() else []
        if source not in known:  # copies of one folder (same names, sizes and times) share a cache file
            atomic_write_text(sidecar, "".join(f"{line}\n" for line in [*known, source]))
    except (OSError, UnicodeError) as exc:
        log.debug("could not record the source of %s (%s)", cache_file, exc)


def recorded_source(root: Path, cache_file: Path) -> str:
    try:
        sources = [line for line in source_file(root, cache_file).read_text(encoding="utf-8").splitlines() if line.strip()]
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
                contents = f"{npz_contents(f.path)}  {recorded_source(root, f.path)}"
            else:
                contents = "left by an interrupted write"
            lines.append(f"    {f.path.relative_to(root)}  {human_size(f.size)}  {f.modified:%Y-%m-%d %H:%M}  {contents}")
    lines.append(f"  total {human_size(sum(f.size for f in files))}; `pneumolab-cache clear` deletes it all")
    foreign = not_pneumolabs(root)
    if foreign:
        lines.append(f"  {describe_not_pneumolabs(root, foreign)}; clear leaves them")
    return "\n".join(lines)


def clear_cache(root: Path, kinds: tuple[str, ...]) -> str:
    files = cache_files(root, kinds)
    for f in files:
        f.path.unlink(missing_ok=True)  # a concurrent clear may have got there first
        if f.path.suffix == ".npz":
            source_file(root, f.path).unlink(missing_ok=True)
    for sidecar in root.glob(f"{SOURCES}/*.npz.txt"):  # the records of npz files deleted by hand
        if is_source_record(root, sidecar) and not cache_file_of(sidecar).exists():
            sidecar.unlink(missing_ok=True)
    for temp in root.glob(f"{SOURCES}/.*.tmp"):  # records whose write was cut short
        if SOURCE_TEMP.fullmatch(temp.name) and is_source_record(root, temp.parent / temp.name[1:].rsplit(".", 2)[0]):
            temp.unlink(missing_ok=True)
    try:
        (root / SOURCES).rmdir()
    except OSError:  # not there, or still records files of the kind not cleared
        pass
    deleted = (f"pneumolab cache: deleted {len(files)} file{'s' if len(files) != 1 else ''}, "
               f"{human_size(sum(f.size for f in files))}, from {root}")
    foreign = not_pneumolabs(root, kinds)
    return f"{deleted}; kept {describe_not_pneumolabs(root, foreign)}" if foreign else deleted


# A record's temp file, as files.create_temp_beside names it.
SOURCE_TEMP = re.compile(r"\..+\.npz\.txt\.[0-9a-f]{12}\.tmp")


def is_source_record(root: Path, sidecar: Path) -> bool:
    """Whether a file of sources/ is named as note_source names the record of a pneumolab cache file."""
    name = cache_file_of(sidecar).relative_to(root).as_posix()
    return any(NAMES[kind][0].fullmatch(name) for kind in KINDS)


def mention_large_cache(root: Path) -> None:
    """One log line when the cache has grown past a few GB: the decoded-image cache never shrinks by itself."""
    total = sum(f.size for f in cache_files(root, check_contents=False))  # no MD5 of every download at each start
    if total > LARGE_CACHE_BYTES:
        log.warning("the cache %s holds %s; `pneumolab-cache list` shows what, `pneumolab-cache clear` frees it",
                    root, human_size(total))
