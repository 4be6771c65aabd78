"""Output directories that no two processes share.

Default run and sweep directories end in a suffix of their own (`${pneumolab_unique:}`:
the pid and a random token), so two processes started in the same second never meet.
A directory the user names may still be named twice: the process that writes into it
holds a lock on `.pneumolab.lock` inside it (an flock, which the kernel drops when the
process ends however it ends, so no stale lock outlives a killed run), and a second
process refuses before Hydra writes a file there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import socket
import sys
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
# in a launcher's worker process, which imports this module with pneumolab.cli.
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
        try:
            self.claim = DirectoryClaim(directory, key)
        except DirectoryInUse as exc:
            print(f"pneumolab: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None
