"""A job killed at any moment leaves only whole files behind, and the next run goes on from them.

Every output and cache goes through pneumolab.files: written to a hidden temp file
(`.<name>.<random>.tmp`, `.part` for downloads) and renamed over the real name. A kill
can leave such a temp file behind; no reader looks at hidden files, and the next write
into the same folder removes those that nobody has touched for an hour.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from conftest import pneumolab_command, subprocess_env
from pneumolab.files import ABANDONED_AFTER_S, atomic_write_text
from pneumolab.record.results import CSV_COLUMNS

pytestmark = pytest.mark.slow  # runs and sweeps stopped by signals
from pneumolab.cli.rundir import LOCK_NAME
from test_cli import copy_tiny_xray

EPOCH_LINE = re.compile(r"epoch \d+/\d+")
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{12}\.(tmp|part)")

# Writes half a JSON document into the temp file, says so, then waits to be killed.
HALF_WRITER = """
import sys, time
from pneumolab.files import atomic_open

with atomic_open(sys.argv[1]) as fh:
    fh.write('{"new": ')
    fh.flush()
    print("half written", flush=True)
    time.sleep(120)
    fh.write("true}")
"""


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if TEMP_NAME.fullmatch(p.name))


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, '{"old": true}\n')
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "half written\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()

    assert json.loads(target.read_text()) == {"old": True}
    (abandoned,) = temp_files(tmp_path)
    assert abandoned.read_text() == '{"new": '

    # The next write in the folder clears hour-old leftovers, whatever file they were for,
    # but not the temp file of a writer that may still be busy.
    other = tmp_path / ".metrics.csv.abcdefabcdef.tmp"
    other.write_text("seed,ep")
    busy = tmp_path / ".results.json.0123456789ab.tmp"
    busy.write_text("{")
    old = time.time() - ABANDONED_AFTER_S - 60
    for path in (abandoned, other):
        os.utime(path, (old, old))
    atomic_write_text(target, '{"newer": true}\n')
    assert json.loads(target.read_text()) == {"newer": True}
    assert temp_files(tmp_path) == [busy]


def check_whole_files(folder: Path) -> None:
    """Every file that pneumolab wrote under `folder` parses completely; leftovers are only temp files."""
    for path in folder.rglob("*"):
        if path.is_dir() or ".hydra" in path.parts or path.name in ("cli.log", LOCK_NAME):
            continue  # Hydra's own files, and the lock that keeps a second process out
        if TEMP_NAME.fullmatch(path.name):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows[0] == list(CSV_COLUMNS) and len(rows) > 1, path
            assert all(len(row) == len(CSV_COLUMNS) for row in rows), path
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                assert sorted(npz.files) == ["test", "train", "val"], path
                for key in npz.files:
                    assert npz[key].dtype == np.uint8, path
        elif path.suffix == ".safetensors":
            assert safetensors.numpy.load_file(path), path
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".txt" and path.parent.name == "sources":  # where a cache file came from
            lines = path.read_text(encoding="utf-8").splitlines()
            assert lines and all(line.strip() for line in lines) and path.read_text().endswith("\n"), path
        else:
            raise AssertionError(f"unexpected file {path}")


Trigger = Callable[[Path, Path, float], bool]  # (job dir, cache dir, seconds since start) -> kill now?


def appears(pattern: str, where: str) -> Trigger:
    return lambda job, cache, _: any((job if where == "job" else cache).glob(pattern))


def after(seconds: float) -> Trigger:
    return lambda job, cache, elapsed: elapsed >= seconds


def test_jobs_killed_at_any_point_leave_only_whole_files(tmp_path, shared_xray):
    root = tmp_path / "xray"
    copy_tiny_xray(shared_xray, root, per_class=6)
    common = ["data=folder", f"data.root={root}", "trainer.epochs=2", "trainer.seeds=[0,1]", "data.batch_size=4"]

    def start(name: str) -> tuple[subprocess.Popen, Path, Path]:
        job, cache = tmp_path / name / "run", tmp_path / name / "cache"
        proc = subprocess.Popen([*pneumolab_command(), *common, f"data.cache_dir={cache}", f"hydra.run.dir={job}"],
                                cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return proc, job, cache

    def finish(name: str) -> Path:
        proc, job, _ = start(name)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr.decode()
        return job

    def kill(name: str, trigger: Trigger) -> None:
        proc, job, cache = start(name)
        began = time.monotonic()
        while proc.poll() is None and not trigger(job, cache, time.monotonic() - began):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"{name}: the job ended before it could be killed"
        check_whole_files(job)
        check_whole_files(cache)

    began = time.monotonic()
    reference = finish("reference")
    duration = time.monotonic() - began

    # Right after each stage's output appears (the next one is then being computed or
    # written), and at a moment that falls wherever this machine's speed puts it: half the
    # undisturbed run, so that a killed job would have to run twice as fast to escape.
    triggers: dict[str, Trigger] = {
        "cache-built": appears("folder/*.npz", "cache"),
        "metrics-written": appears("metrics.csv", "job"),
        "curves-written": appears("curves.png", "job"),
        "halfway": after(0.5 * duration),
    }
    # Two at a time, one per core of a small CI machine. The slowdown does not matter: most
    # triggers watch the files, and the clock one only comes earlier in the job.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(kill, triggers.keys(), triggers.values()))

    # A killed job run again in place finishes, with the numbers of an undisturbed run.
    job = finish("curves-written")
    check_whole_files(job)
    per_seed = [json.loads((j / "results.json").read_text())["per_seed"] for j in (job, reference)]
    assert per_seed[0] == per_seed[1]


# --- Ctrl-C and SIGTERM: one line, exit 130 / 143, worker processes stopped ---------------

# Small phantom data, four seeds (two forked processes on a two-core machine), epochs enough to be busy.
BUSY = ["data.n_train=400", "data.n_val=100", "data.n_test=100", "trainer.seeds=[0,1,2,3]", "trainer.processes=2"]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; only the reaping is left (to whoever adopted it)


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    # A session of its own, like a terminal's foreground job: Ctrl-C reaches every process in it.
    return subprocess.Popen([*pneumolab_command(), *args], cwd=tmp_path, env=subprocess_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_workers(proc: subprocess.Popen, log: Path) -> list[int]:
    """The forked seed processes, once the job has logged training epochs with them.

    Not at the moment they appear: a signal that reaches a child in the instant of its fork,
    before the interpreter in it is set up, is dropped there.
    """
    deadline = time.monotonic() + 120  # a safety net for a broken build, not a measurement
    while proc.poll() is None and time.monotonic() < deadline:
        workers = children(proc.pid)
        if log.is_file() and EPOCH_LINE.search(log.read_text()) and workers:
            return workers
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the job ended or never trained before it could be interrupted: {proc.communicate()[1]}")


def ended_by(proc: subprocess.Popen, signum: int) -> str:
    """The stderr of `proc`, which must end with exit 128 + signum and no traceback."""
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # leave no stray processes behind
        raise
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def check_stopped(proc: subprocess.Popen, signum: int, workers: list[int]) -> str:
    stderr = ended_by(proc, signum)
    (line,) = stderr.strip().splitlines()
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert line.startswith(f"pneumolab: stopped by {name}"), line
    assert all(is_gone(pid) for pid in workers), [Path(f"/proc/{p}/stat").read_text() for p in workers if not is_gone(p)]
    return line


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_ends_with_one_line(tmp_path, signum):
    job = tmp_path / "run"
    proc = start(tmp_path, *BUSY, "trainer.epochs=100000", f"hydra.run.dir={job}")
    workers = wait_for_workers(proc, job / "cli.log")
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # what a terminal does on Ctrl-C
    else:
        os.kill(proc.pid, signum)  # what `kill`, a scheduler or a container stop does: the parent only
    line = check_stopped(proc, signum, workers)
    assert f"the run in {job} has no results" in line and "Run the same command again" in line
    assert not (job / "results.json").exists() and temp_files(job) == []
    check_whole_files(job)


def test_a_stopped_sweep_says_how_to_resume_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    # Points 0 and 1 finish at once; point 2 is still training when Ctrl-C comes.
    args = ["-m", *BUSY, "trainer.epochs=1,2,100000", f"hydra.sweep.dir={sweep}"]
    proc = start(tmp_path, *args)
    workers = wait_for_workers(proc, sweep / "2" / "cli.log")
    os.killpg(proc.pid, signal.SIGINT)
    line = check_stopped(proc, signal.SIGINT, workers)
    assert f"during the sweep in {sweep}; its 2 finished point(s) are kept" in line
    resume = line.split("Resume with the same command plus ", 1)[1].split(":")[0]
    assert resume == f"hydra.sweep.dir={sweep}"
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == ["0", "1"]
    finished = {p: p.read_bytes() for p in sweep.glob("*/results.json")}

    # The same command plus the hint (with a short point 2, to finish in seconds) skips the finished points.
    args[-2] = "trainer.epochs=1,2,3"
    done = subprocess.run([*pneumolab_command(), *args, resume], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(path.read_bytes() == content for path, content in finished.items())
    assert json.loads((sweep / "2" / "results.json").read_text())["config"]["trainer"]["epochs"] == 3
