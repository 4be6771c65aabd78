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
from PIL import Image

from conftest import pneumolab_command, subprocess_env
from pneumolab.files import ABANDONED_AFTER_S, atomic_write_text
from pneumolab.results import CSV_COLUMNS
from test_cli import copy_tiny_xray

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
        if path.is_dir() or ".hydra" in path.parts or path.name == "cli.log":
            continue  # Hydra's own files
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
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
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
