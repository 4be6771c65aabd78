"""Forked seed workers: results in order, errors raised in the parent, no child outlives its job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumolab.errors import PneumolabError
from pneumolab.workers import call_side_by_side


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; it only waits for its parent to read its exit status.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_the_first_call_runs_here_the_others_in_children_and_results_keep_their_order():
    results = call_side_by_side([lambda: ("first", os.getpid()), lambda: ("second", os.getpid()),
                                 lambda: ("third", os.getpid())])
    assert [name for name, _ in results] == ["first", "second", "third"]
    pids = [pid for _, pid in results]
    assert pids[0] == os.getpid() and len(set(pids)) == 3


def test_a_child_sees_the_parents_data_without_it_being_sent():
    big = bytearray(200 * 2**20)  # 200 MB: pickled through a pipe this would take seconds
    big[-1] = 7
    start = time.perf_counter()
    assert call_side_by_side([lambda: big[-1], lambda: big[-1] + 1]) == [7, 8]
    assert time.perf_counter() - start < 5


def test_a_childs_pneumolab_error_is_raised_as_itself():
    def fail():
        raise PneumolabError("The test split of x is empty. Add images to it.")

    with pytest.raises(PneumolabError, match="The test split of x is empty"):
        call_side_by_side([lambda: 1, fail])


def test_a_childs_crash_is_raised_with_its_traceback():
    def crash():
        return {}["missing key"]

    with pytest.raises(RuntimeError, match=r"(?s)in a seed worker process: KeyError: 'missing key'.*Traceback"):
        call_side_by_side([lambda: 1, crash])


def test_a_child_that_dies_is_reported_with_its_exit_code():
    with pytest.raises(RuntimeError, match="exit code 3"):
        call_side_by_side([lambda: 1, lambda: os._exit(3)])


def test_children_are_stopped_when_the_parents_own_call_fails(tmp_path):
    pid_file = tmp_path / "child.pid"

    def child():
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    def parent():
        assert wait_until(pid_file.exists)
        raise ValueError("the parent's seeds failed")

    with pytest.raises(ValueError, match="the parent's seeds failed"):
        call_side_by_side([parent, child])
    assert not alive(int(pid_file.read_text()))


PARENT_SCRIPT = """
import os, sys, time
from pathlib import Path
from pneumolab.workers import call_side_by_side

def child():
    Path(sys.argv[1]).write_text(str(os.getpid()))
    time.sleep(60)

call_side_by_side([lambda: time.sleep(60), child])
"""


def test_a_child_exits_by_itself_when_its_parent_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(pid_file)])
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text())
        child = int(pid_file.read_text())
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not alive(child), seconds=5), "the orphaned child kept running"
    finally:
        if parent.poll() is None:
            parent.kill()
