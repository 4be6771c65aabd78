"""Files: atomic writes (a reader sees the old file or the whole new one, never half of it) and disk room.

The bytes go to a hidden temp file beside the target, which is renamed over it once
complete. A writer killed on the way leaves its temp file behind; readers never look at
hidden files, and a later write into the same folder deletes it once it is an hour old.
Files that belong together (a summary's csv, md and png) are written inside `written_together`.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from pneumolab.workers import stop_signals_held

# A writer touches its temp file every few seconds at most (downloads time out after a
# minute without data), so one untouched for this long was left by a killed process.
ABANDONED_AFTER_S = 3600.0
# `.<target name>.<12 hex digits><suffix>`, as create_temp_beside names them.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.(?:tmp|part)")
# (temp file, target) of the writes whose renames `written_together` holds back; None outside it.
_held_renames: list[tuple[Path, Path]] | None = None


def create_temp_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new temp file `.<name>.<random><suffix>` in path's folder, open for writing; suffix .tmp or .part.

    Hidden and suffixed, so no reader mistakes it for the real file. It gets the mode the
    umask allows, like any new file (mkstemp's 0600 would make shared caches and results
    unreadable to the rest of a group once renamed). Temp files that killed writers left
    in the folder are removed first, so they cannot pile up.
    """
    remove_abandoned_temps(path.parent)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def remove_abandoned_temps(folder: Path, older_than_s: float = ABANDONED_AFTER_S) -> None:
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
        except OSError:
            pass  # another process removed it first, or it is not ours to remove


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit flush, fsync and rename it over `path`.

    An OSError that names no file (a full disk) or the temp file names `path`: the file the user asked for.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_beside(path, ".tmp")
        try:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            if _held_renames is None:
                os.replace(tmp, path)
            else:
                _held_renames.append((tmp, path))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.filename is None or _TEMP_NAME.fullmatch(Path(exc.filename).name):
            exc.filename = str(path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def human_size(n_bytes: float) -> str:
    """Decimal units, as disks are sold and `df -H` prints them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def nearest_existing(path: Path) -> Path:
    """`path` itself, or the closest of its parents that exists (what a mkdir would write into)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(path: Path, need_bytes: int) -> str | None:
    """Why `path` (a folder, created if missing) cannot take `need_bytes` more, or None."""
    existing = nearest_existing(path)
    missing = "" if existing == path.expanduser().absolute() else "it does not exist and cannot be created: "
    if not existing.is_dir():
        return f"{missing}{existing} is a file, not a folder"
    stats = os.statvfs(existing)
    if stats.f_flag & os.ST_RDONLY:
        return f"{missing}{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{missing}{existing} is not writable for this user"
    free = stats.f_bavail * stats.f_frsize
    if free < need_bytes:
        return f"its disk has {human_size(free)} free and about {human_size(need_bytes)} are needed"
    if stats.f_files and not stats.f_favail:
        return "its disk has no free inodes left (no new file can be created)"
    return None


@contextmanager
def written_together() -> Iterator[None]:
    """The files written atomically inside this block appear together at its end, never some new and some old.

    Each is written to its temp file as usual; the renames wait for the block to finish, then run in the
    order written with Ctrl-C and SIGTERM held, so that no stop lands between two of them (they take
    microseconds). A block that raises renames nothing and deletes its temp files: the old files stay.
    Inside another such block, the outer one renames.
    """
    global _held_renames
    if _held_renames is not None:
        yield
        return
    _held_renames = held = []
    try:
        yield
    except BaseException:
        for tmp, _ in held:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _held_renames = None
    with stop_signals_held():
        for tmp, path in held:
            os.replace(tmp, path)
