"""How a `pneumolab` process, or one of its side commands, ends when it does not finish: never with a traceback.

- An input problem, Hydra's own included (a misspelt key, a wrong type, an unknown
  option, an override it cannot parse), and a full, read-only or forbidden folder: one
  paragraph on stderr, exit 2.
- Ctrl-C (SIGINT) and SIGTERM: one line saying what was stopped, what is kept and how
  to go on, exit 130 / 143. Forked worker processes (seed groups, image decoders)
  inherit the handler and leave at once; the parent stops them and removes its temp files.

`handled(command)` does this for every command (`side_command` wraps a side command's main).
Hydra reports its errors itself and calls sys.exit(1), unless HYDRA_FULL_ERROR is set: then
it raises them. `hydra_raises` sets it around the app, so the exceptions themselves arrive here.
"""

from __future__ import annotations

import errno
import functools
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumolab.errors import PneumolabError
from pneumolab.cli.guards import check_output_dir
from pneumolab.cli.rundir import undo_start
from pneumolab.outputs.tracking import check_tracker_reachable

MAIN = "pneumolab"
INPUT_PROBLEM = 2
# Set for a `pneumolab` started by a side command (pneumolab-report): that command prints the one line of a stop.
PARENT_REPORTS_STOPS = "PNEUMOLAB_PARENT_REPORTS_STOPS"
# Seconds an interrupted process has to stop its workers and clean up before it is ended outright.
GRACE_S = 10.0
SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
# Lines of Hydra's messages that list its search path: nothing a user can act on.
HYDRA_NOISE = ("Config search path:", "provider=", "object_type=", "reference_type=")
HYDRA_FIX = ("Check the spelling and type against `pneumolab --help` (the config groups and their options) "
             "and `pneumolab --cfg job` (every key with its value); add a new key with +key=value.")


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main process so that every `finally` and cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class Whereabouts:
    """What this process is running: which command, and the sweep or job Hydra's callbacks report."""

    command: str = MAIN
    sweep_dir: Path | None = None
    job_dir: Path | None = None


_now = Whereabouts()
_main_pid = os.getpid()


class JobWatch(Callback):
    """Checks the output folder (and a sweep's tracking server) before Hydra writes into it, and notes
    which job is running.

    Registered in conf/config.yaml, first: Hydra calls on_run_start / on_multirun_start before
    it creates the folder and writes .hydra/, so a full disk never gets an empty config.yaml.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _now.sweep_dir = self.check(config, "hydra.sweep.dir")
        # A tracking server that does not answer would fail every point: the sweep stops once, before any.
        # (A sweep over the logger or its URI leaves them out of this config; each of its jobs checks its own.)
        try:
            check_tracker_reachable(OmegaConf.to_object(config.logger))  # its schema knows the server
        except PneumolabError as exc:
            fail(str(exc))

    @staticmethod
    def check(config: DictConfig, key: str) -> Path:
        # Hydra turns a callback's exceptions into warnings and goes on; only an exit stops it.
        try:
            directory = Path(OmegaConf.select(config, key)).absolute()
            check_output_dir(directory)
        except PneumolabError as exc:
            fail(str(exc))
        except OmegaConfBaseException as exc:  # e.g. an interpolation in the folder name that does not resolve
            fail(hydra_paragraph(exc))
        return directory

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _now.job_dir = Path(config.hydra.runtime.output_dir)


def _on_signal(signum: int, _frame: Any) -> None:
    if os.getpid() != _main_pid:
        # A forked worker: its parent reports, stops the others and cleans up.
        os._exit(128 + signum)
    # The exception can be lost: raised inside a __del__ or weakref callback it is only printed, and a
    # worker forked at the very moment of the signal never hears it. The clock makes sure the stop happens.
    clock = threading.Timer(GRACE_S, _force_exit, args=(signum,))
    clock.daemon = True  # a process that stops in time exits without waiting for it
    clock.start()
    raise Interrupted(signum)


def _force_exit(signum: int) -> None:
    for child in multiprocessing.active_children():
        child.kill()
    report_stop(signum)
    os._exit(128 + signum)


def report_stop(signum: int) -> None:
    if not os.environ.get(PARENT_REPORTS_STOPS):
        print(interruption_line(signum), file=sys.stderr, flush=True)


def interruption_line(signum: int) -> str:
    stopped = f"{_now.command}: stopped by {SIGNALS.get(signum, f'signal {signum}')}"
    if _now.command != MAIN:
        # Side commands write every output atomically, and several files that belong together at once.
        return (f"{stopped}; the files it had finished are whole and those it had not are left as they were. "
                "Run the same command again to finish.")
    if _now.sweep_dir is not None:
        done = sum(1 for _ in _now.sweep_dir.glob("*/results.json"))
        resume = shlex.quote(f"hydra.sweep.dir={_now.sweep_dir}")
        return (f"{stopped} during the sweep in {_now.sweep_dir}; its {done} finished point(s) are kept. "
                f"Resume with the same command plus {resume}: finished points are skipped.")
    if _now.job_dir is not None:
        if (_now.job_dir / "results.json").is_file():
            return f"{stopped} after the run finished; its results are complete in {_now.job_dir}."
        return (f"{stopped}; the run in {_now.job_dir} has no results (what it wrote is whole, downloads and "
                "image caches are kept). Run the same command again to start it over.")
    return f"{stopped} before any job started; nothing was written."


def hydra_paragraph(exc: BaseException) -> str:
    """Hydra's or OmegaConf's message (and its cause's) as one paragraph, with the fix."""
    parts = [str(exc)]
    if isinstance(exc.__cause__, OmegaConfBaseException) and str(exc.__cause__) not in parts[0]:
        parts.append(str(exc.__cause__))
    lines = []
    for line in "\n".join(parts).splitlines():
        line = line.strip()
        if line.startswith(HYDRA_NOISE[0]):
            break
        if line and not line.startswith(HYDRA_NOISE[1:]) and not line.startswith("schema_"):
            lines.append(line if line.endswith((".", ":")) else f"{line};")
    return f"{' '.join(lines).rstrip(';')}. {HYDRA_FIX}"


def disk_paragraph(exc: OSError) -> str:
    """A file the command could not read or write, why, and the fix."""
    what = f"{exc.filename}: {exc.strerror}" if exc.filename else (exc.strerror or str(exc))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "The disk is full: free some space, or choose an output folder on another disk (--out)."
    elif exc.errno == errno.EROFS:
        fix = "The file system is read-only: choose an output folder on a writable disk (--out)."
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = "Give yourself access to it (chmod, chown), or choose an output folder you may write to (--out)."
    else:
        fix = "Check that the path exists and its disk works, then run the command again."
    return f"cannot use {what}. {fix}"


def fail(message: str) -> None:
    print(f"{_now.command}: error: {message}", file=sys.stderr)
    sys.exit(INPUT_PROBLEM)


@contextmanager
def handled(command: str = MAIN) -> Iterator[None]:
    """Run `command` with input and disk problems and stop signals turned into their one paragraph or line
    and exit code.

    A user who set HYDRA_FULL_ERROR=1 asked for Hydra's tracebacks and gets them.
    """
    global _main_pid
    _main_pid = os.getpid()
    caller = (_now.command, _now.sweep_dir, _now.job_dir)
    _now.command, _now.sweep_dir, _now.job_dir = command, None, None
    user_wants_tracebacks = bool(os.environ.get("HYDRA_FULL_ERROR"))
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    try:
        yield
    except Interrupted as exc:
        report_stop(exc.signum)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        report_stop(signal.SIGINT)
        sys.exit(128 + signal.SIGINT)
    except PneumolabError as exc:
        undo_start()  # refused before anything trained (e.g. SLURM took no job): the folder goes, or is as it was
        fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        if user_wants_tracebacks:
            raise
        undo_start()
        fail(hydra_paragraph(exc))
    except OSError as exc:
        undo_start()
        fail(disk_paragraph(exc))
    finally:
        _now.command, _now.sweep_dir, _now.job_dir = caller  # a command run in-process leaves the next as it was
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def current_sweep_dir() -> Path | None:
    """The folder of the sweep this command started, once Hydra has begun it; None for a single run."""
    return _now.sweep_dir


@contextmanager
def hydra_raises() -> Iterator[None]:
    """Hydra raises its errors instead of printing them, so that `handled` reports them (see the top)."""
    user_set = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if not user_set:
            os.environ.pop("HYDRA_FULL_ERROR", None)


F = TypeVar("F", bound=Callable[..., Any])


def side_command(command: str) -> Callable[[F], F]:
    """A side command's main(argv), run under `handled(command)`."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            with handled(command):
                return main(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def run_child(command: list[str]) -> int:
    """Run a `pneumolab` command as a child process and return its exit code; a stop is passed on to it.

    The child has a session of its own, so a terminal's Ctrl-C reaches it once, from here, and a SIGTERM
    sent here reaches it too; it stops as `pneumolab` does, without its own line (this process prints the
    one line). A child still busy after GRACE_S is killed.
    """
    child = None
    try:
        child = subprocess.Popen(command, start_new_session=True, env={**os.environ, PARENT_REPORTS_STOPS: "1"})
        return child.wait()
    except KeyboardInterrupt as exc:
        if child is not None:  # else the signal came before the child existed
            child.send_signal(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
            try:
                child.wait(timeout=GRACE_S / 2)  # before this process's own clock (GRACE_S) ends it
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise
