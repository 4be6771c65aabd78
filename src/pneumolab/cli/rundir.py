"""Output directories that no two processes share.

Default run and sweep directories end in a suffix of their own (`${pneumolab_unique:}`:
the pid and a random token), so two processes started in the same second never meet.
A directory the user names may still be named twice: the process that writes into it
holds a lock on `.pneumolab.lock` inside it (an flock, which the kernel drops when the
process ends however it ends, so no stale lock outlives a killed run), and a second
process refuses before Hydra writes a file there.

A run refused before it trains (a bad value, a missing data folder, a sweep SLURM does not
take) leaves its output directory as it found it: `undo_start()` removes what the start
wrote there (Hydra's `.hydra/`, `multirun.yaml`, the log, submitit's files, the lock), and the
directory itself when this start created it; a directory the user named and that existed
gets its earlier `.hydra/`, `multirun.yaml` and log back.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pneumolab.errors import PneumolabError

log = logging.getLogger("pneumolab")

LOCK_NAME = ".pneumolab.lock"


def unique_suffix() -> str:
    """Unique among the live processes of one machine (the pid), and across machines (the token)."""
    return f"{os.getpid()}-{secrets.token_hex(2)}"


# Cached like Hydra's own ${now:}: one value per config, copied with it into every sweep job.
# Registered on import, as Hydra resolves the directories before any code of ours runs again
# in a launcher's worker process, which imports this module with pneumolab.cli.main.
if not OmegaConf.has_resolver("pneumolab_unique"):
    OmegaConf.register_new_resolver("pneumolab_unique", unique_suffix, use_cache=True)


class DirectoryInUse(PneumolabError):
    pass


class DirectoryClaim:
    """An exclusive, non-blocking claim on a directory, held until release() or the end of the process."""

    def __init__(self, directory: Path, key: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_NAME
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self.path.read_text(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                # A filesystem without locks (some network mounts): go on unguarded rather than not at all.
                log.warning("cannot lock %s (%s): nothing stops another process from writing there too",
                            self.path, exc)
                return
            raise DirectoryInUse(
                f"The output directory {directory} is in use by {holder}, which is still running; "
                "two processes writing there would mix their files. Wait for it to end, or give this "
                f"run a directory of its own ({key}=...), or leave {key} unset for a fresh one."
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            # The file stays: removing it would let a process that opened it just before lock a deleted file.
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


class ClaimOutputDirectory(Callback):
    """Claim the run directory (a plain run) or the sweep directory (a multirun, in the launching
    process) before Hydra writes anything there; refuse with exit code 2 when another process holds it."""

    def __init__(self) -> None:
        self.claim: DirectoryClaim | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.take(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.take(Path(config.hydra.sweep.dir), "hydra.sweep.dir")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.release()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.release()

    def take(self, directory: Path, key: str) -> None:
        global _start
        before = DirectoryBefore.of(directory)  # before the claim's lock file is the first thing written
        try:
            self.claim = DirectoryClaim(directory, key)
        except DirectoryInUse as exc:
            print(f"pneumolab: error: {exc}", file=sys.stderr)
            sys.exit(2)
        _start = Start(before, self)

    def release(self) -> None:
        global _start
        if self.claim is not None:
            self.claim.release()
            self.claim = None
        if _start is not None and _start.claimer is self:
            _start = None


# What starting a run or a sweep writes into its directory before pneumolab's code runs, and
# nothing else: Hydra's config record, its sweep record, the log, submitit's submission files, the lock.
START_DIRS = (".hydra", ".submitit")
START_FILES = ("multirun.yaml", LOCK_NAME)
LOG_SUFFIX = ".log"


def made_by_start(name: str) -> bool:
    return name in START_DIRS or name in START_FILES or name.endswith(LOG_SUFFIX)


@dataclass
class DirectoryBefore:
    """An output directory as it was before this process started a run or sweep there."""

    directory: Path
    created_from: Path | None  # the highest folder that did not exist yet (None: the directory existed)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (mtime_ns, size), top level
    contents: dict[str, bytes] = field(default_factory=dict)  # .hydra/* and multirun.yaml, to put back
    names: dict[str, set[str]] = field(default_factory=dict)  # .submitit's entries

    @classmethod
    def of(cls, directory: Path) -> "DirectoryBefore":
        directory = directory.expanduser().absolute()
        created_from = None
        for folder in (directory, *directory.parents):
            if folder.exists():
                break
            created_from = folder
        before = cls(directory, created_from)
        if created_from is not None or not directory.is_dir():
            return before
        for entry in directory.iterdir():
            stat = entry.lstat()
            before.stats[entry.name] = (stat.st_mtime_ns, stat.st_size)
        for name in ("multirun.yaml", *(f".hydra/{p.name}" for p in (directory / ".hydra").glob("*"))):
            path = directory / name
            if path.is_file() and not path.is_symlink():
                before.contents[name] = path.read_bytes()
        if (directory / ".submitit").is_dir():
            before.names[".submitit"] = {p.name for p in (directory / ".submitit").iterdir()}
        return before


@dataclass
class Start:
    before: DirectoryBefore
    claimer: ClaimOutputDirectory


_start: Start | None = None


def undo_start() -> bool:
    """Leave the output directory of the run or sweep this process started as it was before the start.

    For a run or sweep refused before it trained. Does nothing (False) when anything besides what the
    start writes was added or changed there: then the directory holds results and is kept whole.
    The claim is released either way.
    """
    global _start
    start, _start = _start, None
    if start is None:
        return False
    before, claim = start.before, start.claimer.claim
    directory = before.directory
    try:
        if not directory.is_dir() or not _only_start_files(before):
            return False
        for entry in directory.iterdir():
            if entry.name in before.stats:
                _put_back(before, entry)
            elif entry.name != LOCK_NAME:
                _remove(entry)
        if claim is not None and LOCK_NAME not in before.stats:
            claim.path.unlink(missing_ok=True)  # while still held: no other process can have locked it
    except OSError as exc:
        log.debug("could not tidy %s: %s", directory, exc)
        return False
    finally:
        start.claimer.release()
    if before.created_from is not None:
        for folder in (directory, *directory.parents):
            try:
                os.rmdir(folder)  # only when empty: another run's folder beside this one stays
            except OSError:
                break
            if folder == before.created_from:
                break
    return True


def _only_start_files(before: DirectoryBefore) -> bool:
    for entry in before.directory.iterdir():
        stat = entry.lstat()
        if not made_by_start(entry.name) and before.stats.get(entry.name) != (stat.st_mtime_ns, stat.st_size):
            return False
    return True


def _put_back(before: DirectoryBefore, entry: Path) -> None:
    """An entry that existed before the start: what the start changed in it is undone."""
    if entry.name == ".hydra" and entry.is_dir() and not entry.is_symlink():
        for path in entry.iterdir():
            kept = before.contents.get(f".hydra/{path.name}")
            if kept is None:
                _remove(path)
            elif path.read_bytes() != kept:
                path.write_bytes(kept)
    elif entry.name == ".submitit" and entry.is_dir() and not entry.is_symlink():
        for path in entry.iterdir():
            if path.name not in before.names.get(".submitit", set()):
                _remove(path)
    elif entry.name == "multirun.yaml" and entry.name in before.contents:
        if entry.read_bytes() != before.contents[entry.name]:
            entry.write_bytes(before.contents[entry.name])
    elif entry.name.endswith(LOG_SUFFIX) and entry.is_file():
        size = before.stats[entry.name][1]
        if entry.stat().st_size > size:
            os.truncate(entry, size)  # the lines this start appended


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
