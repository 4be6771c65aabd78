"""How a `pneumolab` process ends when it does not finish: never with a traceback.

- An input problem, Hydra's own included (a misspelt key, a wrong type, an unknown
  option, an override it cannot parse), and a full or read-only output folder: one
  paragraph on stderr, exit 2.
- Ctrl-C (SIGINT) and SIGTERM: one line saying what was stopped, what is kept and how
  to go on, exit 130 / 143. Forked worker processes (seed groups, image decoders)
  inherit the handler and leave at once; the parent stops them and removes its temp files.

Hydra reports its errors itself and calls sys.exit(1), unless HYDRA_FULL_ERROR is set: then
it raises them. `handled` sets it for the call, so the exceptions themselves arrive here.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pneumolab.errors import PneumolabError
from pneumolab.guards import check_output_dir
from pneumolab.rundir import undo_start
from pneumolab.tracking import check_tracker_reachable

INPUT_PROBLEM = 2
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
    """What this process is running, as Hydra's callbacks report it."""

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
            check_tracker_reachable(config.logger)
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
    print(interruption_line(signum), file=sys.stderr, flush=True)
    os._exit(128 + signum)


def interruption_line(signum: int) -> str:
    stopped = f"pneumolab: stopped by {SIGNALS.get(signum, f'signal {signum}')}"
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


def fail(message: str) -> None:
    print(f"pneumolab: error: {message}", file=sys.stderr)
    sys.exit(INPUT_PROBLEM)


@contextmanager
def handled() -> Iterator[None]:
    """Run the app with input problems and stop signals turned into their one paragraph and exit code.

    A user who set HYDRA_FULL_ERROR=1 asked for Hydra's tracebacks and gets them.
    """
    global _main_pid
    _main_pid = os.getpid()
    user_wants_tracebacks = bool(os.environ.get("HYDRA_FULL_ERROR"))
    previous = {signum: signal.signal(signum, _on_signal) for signum in SIGNALS}
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except Interrupted as exc:
        print(interruption_line(exc.signum), file=sys.stderr)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        print(interruption_line(signal.SIGINT), file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except PneumolabError as exc:
        undo_start()  # refused before anything trained (e.g. SLURM took no job): the folder goes, or is as it was
        fail(str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        if user_wants_tracebacks:
            raise
        undo_start()
        fail(hydra_paragraph(exc))
    finally:
        if not user_wants_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
