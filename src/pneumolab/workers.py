"""Run a job's groups of seeds side by side in forked worker processes, one core each.

A second intra-op thread barely helps matrices this small and stalls whenever the
other core is busy; independent processes neither wait for each other nor share a
lock. They are forked rather than started afresh: a child inherits the imported
torch and the dataset's tensors (shared copy-on-write), so it is training within
milliseconds instead of spending seconds on imports and loading. The caller keeps
fork safe: `train.fit` sets one intra-op thread before forking, so no child reaches
for the parent's OpenMP threads, which a fork does not copy.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from pneumolab.errors import PneumolabError

T = TypeVar("T")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def fork_available() -> bool:
    # Elsewhere fork is missing (Windows) or unsafe once system frameworks are loaded (macOS).
    return sys.platform.startswith("linux")


def call_side_by_side(calls: list[Callable[[], T]]) -> list[T]:
    """Each call's result, in order: calls[0] runs in this process, every other call in a forked child.

    An exception in a child is raised here (a PneumolabError as itself, anything else
    with the child's traceback in its message). Children never outlive this call: they
    are stopped when it raises, and a child whose parent died exits on its own.
    """
    context = multiprocessing.get_context("fork")
    # Output still buffered at the fork would be written once by each process.
    sys.stdout.flush()
    sys.stderr.flush()
    children = []
    try:
        for call in calls[1:]:
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_run_child, args=(call, sender, os.getpid()), name="pneumolab-seeds")
            with stop_signals_held():
                child.start()
            sender.close()
            children.append((child, receiver))
        results = [calls[0]()]
        for child, receiver in children:
            try:
                ok, value = receiver.recv()
            except EOFError:
                child.join()
                raise RuntimeError(
                    f"A seed worker process ended without a result (exit code {child.exitcode}); "
                    "if the machine ran out of memory, set trainer.processes=1."
                ) from None
            if not ok:
                raise value
            results.append(value)
        return results
    finally:
        for child, receiver in children:
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
            if child.is_alive():
                child.kill()
            child.join()
            receiver.close()


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a child is forked, so that none lands in a half-made child."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _run_child(call: Callable[[], T], sender, parent_pid: int) -> None:
    # A stop signal ends a child at once; the parent, which handles it, reports and cleans up.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        outcome = (True, call())
    except PneumolabError as exc:
        outcome = (False, exc)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent reports it
        outcome = (False, RuntimeError(f"in a seed worker process: {type(exc).__name__}: {exc}\n"
                                       f"{traceback.format_exc()}"))
    try:
        sender.send(outcome)
    except (BrokenPipeError, OSError):
        pass  # the parent is gone or stopped listening; nobody is left to tell


def _exit_when_orphaned(parent_pid: int) -> None:
    # A parent killed mid-job (SIGKILL, out of memory) cannot stop its children; they notice here.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
