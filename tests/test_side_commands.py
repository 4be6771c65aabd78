"""The side commands (pneumolab-predict, -eval, -summarize, -report, -cache) end as `pneumolab` does:
Ctrl-C and SIGTERM with one line and exit 130 / 143, their worker and child processes stopped; a bad input
or a full, read-only folder with one paragraph and exit 2; files that belong together (summary.csv and
summary.md, a sweep's eval.csv and its points' eval.json) never disagree after a stop. And pneumolab-eval
on a sweep lists every point, as pneumolab-summarize does.

Real commands in subprocesses, real signals, real images (../shared), real file systems (a tmpfs).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import pneumolab_command, subprocess_env
from test_disk import fill, remount_read_only, small_disk  # noqa: F401 - small_disk is a fixture
from test_interruptions import TEMP_NAME, children, ended_by, is_gone

pytestmark = pytest.mark.slow  # trains a run and sweeps to work on

BIN = Path(sys.executable).parent
TINY = ["trainer.epochs=1", "trainer.seeds=[0,1]"]
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])


def run(cwd: Path, *args, tool: str = "pneumolab") -> subprocess.CompletedProcess:
    command = pneumolab_command() if tool == "pneumolab" else [str(BIN / tool)]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)


def start(cwd: Path, tool: str, *args) -> subprocess.Popen:
    # A session of its own, like a terminal's foreground job: Ctrl-C reaches every process in it.
    return subprocess.Popen([str(BIN / tool), *map(str, args)], cwd=cwd, env=subprocess_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 300  # a safety net for a broken build, not a measurement
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"it ended, or never got busy, before it could be stopped: {proc.communicate()[1]}")
        time.sleep(0.002)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def decoder_workers(pid: int) -> list[int]:
    """The children forked from `pid` that stay (a decoder pool's workers): not the programs its imports run,
    which carry its command line only between their fork and their exec."""
    forked = [child for child in children(pid) if cmdline(child) == cmdline(pid)]
    if forked:
        time.sleep(0.3)  # the workers are past their start, decoding
    return [child for child in forked if child in children(pid) and cmdline(child) == cmdline(pid)]


def stop(proc: subprocess.Popen, signum: int) -> str:
    """Send `signum` as a terminal (Ctrl-C: the whole session) or `kill` (SIGTERM: the process) does; its stderr."""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    return ended_by(proc, signum)


def check_stop_line(stderr: str, tool: str, signum: int) -> None:
    """The stop is one line, the last (progress lines such as "Decoding 5840 images" may come before it)."""
    *_, line = stderr.strip().splitlines()
    assert stderr.count("stopped by") == 1, stderr
    assert line == (f"{tool}: stopped by {SIGNAL_NAMES[signum]}; the files it had finished are whole and those it "
                    "had not are left as they were. Run the same command again to finish."), line


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def points_in_markdown(path: Path) -> int:
    """The rows of summary.md's table of points (its first table)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| point |"))
    return len(list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))) - 2  # header, rule


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if TEMP_NAME.fullmatch(p.name))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("side")


@pytest.fixture(scope="module")
def phantom_run(work) -> Path:
    """A finished run on phantom data (28 px, two seeds)."""
    job = work / "run"
    proc = run(work, *TINY, "data.limit_per_class=12", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    return job


@pytest.fixture(scope="module")
def sweep(work) -> Path:
    """A sweep in a folder below one named `eval`: two data sizes, each with a learning rate that trains and one
    whose every seed diverges (a failed point, with error.json beside its results.json)."""
    sweep_dir = work / "eval" / "mysweep"
    proc = run(work, "-m", "data.limit_per_class=10,20", "optimizer.lr=1e-3,1e30", *TINY,
               f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 1, proc.stderr  # the diverged points failed
    return sweep_dir


@pytest.fixture
def sweep_copy(sweep, tmp_path) -> Path:
    copy = tmp_path / "eval" / "mysweep"
    shutil.copytree(sweep, copy)
    return copy


# --- pneumolab-eval on a sweep ---------------------------------------------------------------


def test_eval_of_a_sweep_lists_every_point_each_on_its_own_data(sweep_copy, work):
    # Point 3's error.json gone: its results.json (every seed diverged) is read, and it has no weights to apply.
    (sweep_copy / "3" / "error.json").unlink()
    proc = run(work, sweep_copy, tool="pneumolab-eval")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = read_csv(sweep_copy / "eval" / "phantom" / "eval.csv")
    assert [(r["point"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed"), ("2", "ok"), ("3", "failed")]
    assert "Every seed diverged" in rows[1]["error"] and "Lower optimizer.lr" in rows[1]["error"]
    assert f"Every seed of {sweep_copy.resolve() / '3'} diverged, so it saved no weights" in rows[3]["error"]
    assert rows[1]["overrides"].startswith("data.limit_per_class=10 optimizer.lr=1e+30")
    assert rows[1]["test_acc_mean"] == "" and rows[1]["data"] == ""
    # Each point on its own data: 10 and 20 images per class of the test split, as it was trained.
    for row, n_test in ((rows[0], 20), (rows[2], 40)):
        report = json.loads((sweep_copy / row["point"] / "eval" / "phantom" / "eval.json").read_text())
        assert report["n_test"] == n_test and report["data_config"]["limit_per_class"] == n_test // 2
        assert float(row["test_acc_mean"]) == report["summary"]["test_acc"]["mean"]
        results = json.loads((sweep_copy / row["point"] / "results.json").read_text())
        assert report["summary"]["test_acc"] == results["summary"]["test_acc"]
    assert not (sweep_copy / "1" / "eval").exists() and not (sweep_copy / "3" / "eval").exists()
    for row in rows[1::2]:
        assert f"failed point {row['point']} ({row['overrides']}): Every seed" in proc.stderr


def test_eval_overrides_without_data_say_where_they_start(sweep, work, tmp_path):
    proc = run(work, sweep / "0", "data.limit_per_class=5", "--out", tmp_path / "five", tool="pneumolab-eval")
    assert proc.returncode == 0, proc.stderr
    note = "Data overrides start from pneumolab's default data config (data=phantom), not from the run's own"
    assert note in proc.stderr
    assert json.loads((tmp_path / "five" / "eval.json").read_text())["n_test"] == 10
    # A key the default data config lacks: the paragraph says why it was looked for there.
    line = one_line(run(work, sweep / "0", "data.root=/x", tool="pneumolab-eval"), 2)
    assert line.startswith("pneumolab-eval: error: Unknown config key data.root") and note in line
    proc = run(work, sweep / "0", "data=phantom", "data.limit_per_class=5", "--out", tmp_path / "d",
               tool="pneumolab-eval")
    assert proc.returncode == 0 and "Data overrides start" not in proc.stderr, proc.stderr


def test_eval_of_a_run_without_a_config_is_one_paragraph(sweep, tmp_path, work):
    job = tmp_path / "noconfig"
    shutil.copytree(sweep / "0", job)
    results = json.loads((job / "results.json").read_text())
    del results["config"]
    (job / "results.json").write_text(json.dumps(results))
    line = one_line(run(work, job, tool="pneumolab-eval"), 2)
    assert line == (f"pneumolab-eval: error: {job / 'results.json'} records no data config (config.data), so the "
                    f"run's own test data is unknown. Name the data to evaluate on (e.g. pneumolab-eval {job} "
                    "data=folder data.root=DIR), or re-run the job to write its results.json again.")
    assert not (job / "eval").exists()
    # With the data named, the run is evaluated.
    assert run(work, job, "data=phantom", "data.limit_per_class=10", tool="pneumolab-eval").returncode == 0


# --- Ctrl-C and SIGTERM ------------------------------------------------------------------------


@SIGNALS
def test_predict_stopped_while_decoding_stops_its_pool(phantom_run, shared_xray, tmp_path, signum):
    out = tmp_path / "predictions.csv"
    proc = start(tmp_path, "pneumolab-predict", phantom_run, shared_xray / "train", "--out", out)
    wait_until(proc, lambda: bool(decoder_workers(proc.pid)))  # the decoder pool is at work on 5,216 images
    workers = decoder_workers(proc.pid)
    check_stop_line(stop(proc, signum), "pneumolab-predict", signum)
    assert all(is_gone(pid) for pid in workers)
    assert not out.exists() and temp_files(tmp_path) == []


@SIGNALS
def test_eval_stopped_while_decoding_writes_nothing(phantom_run, shared_xray, tmp_path, signum):
    out = tmp_path / "eval"
    proc = start(tmp_path, "pneumolab-eval", phantom_run, "data=folder", f"data.root={shared_xray}",
                 f"data.cache_dir={tmp_path / 'cache'}", "--out", out)
    wait_until(proc, lambda: bool(decoder_workers(proc.pid)))  # 5,840 images
    workers = decoder_workers(proc.pid)
    check_stop_line(stop(proc, signum), "pneumolab-eval", signum)
    assert all(is_gone(pid) for pid in workers)
    assert not out.exists()
    assert not list((tmp_path / "cache").rglob("*.npz"))  # no half-decoded cache either


def test_a_stopped_sweep_eval_leaves_eval_csv_and_the_points_agreeing(sweep_copy, work):
    folder = sweep_copy / "eval" / "phantom"
    done = run(work, sweep_copy, "data.limit_per_class=5", tool="pneumolab-eval")
    assert done.returncode == 1, done.stderr  # the diverged points
    before = {p: p.read_bytes() for p in [*sweep_copy.glob("*/eval/phantom/eval.json"), folder / "eval.csv"]}
    # Another size of the same data: the new eval.json of point 0 is written, and it is stopped before the end.
    proc = start(work, "pneumolab-eval", sweep_copy, "data.limit_per_class=7")
    wait_until(proc, lambda: bool(temp_files(sweep_copy / "0" / "eval")))
    check_stop_line(stop(proc, signal.SIGTERM), "pneumolab-eval", signal.SIGTERM)
    assert {p: p.read_bytes() for p in before} == before  # all as they were, none half new
    assert temp_files(sweep_copy) == []
    for row in read_csv(folder / "eval.csv"):
        if row["status"] == "ok":
            report = json.loads((sweep_copy / row["point"] / "eval" / "phantom" / "eval.json").read_text())
            assert report["n_test"] == 10 and float(row["test_acc_mean"]) == report["summary"]["test_acc"]["mean"]


@SIGNALS
def test_a_stopped_summary_never_disagrees_with_itself(sweep_copy, work, signum):
    assert run(work, sweep_copy, tool="pneumolab-summarize").returncode == 1  # 4 points, 2 failed
    shutil.rmtree(sweep_copy / "3")  # the next summary has 3 points
    csv_file = sweep_copy / "summary.csv"
    old = csv_file.read_bytes()
    proc = start(work, "pneumolab-summarize", sweep_copy)
    # Stopped between files: summary.csv is written (to its temp file, or in place), summary.md not yet.
    wait_until(proc, lambda: bool(temp_files(sweep_copy)) or csv_file.read_bytes() != old)
    check_stop_line(stop(proc, signum), "pneumolab-summarize", signum)
    assert len(read_csv(csv_file)) == points_in_markdown(sweep_copy / "summary.md") == 4  # both as they were
    assert temp_files(sweep_copy) == []
    assert run(work, sweep_copy, tool="pneumolab-summarize").returncode == 1
    assert len(read_csv(csv_file)) == points_in_markdown(sweep_copy / "summary.md") == 3


def pneumolab_processes(marker: str) -> list[int]:
    """Processes whose command line names `marker` (a folder unique to one test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()) and not is_gone(int(entry.name)):
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass  # ended meanwhile
    return found


@SIGNALS
def test_a_stopped_report_stops_its_sweep(tmp_path, signum):
    out = tmp_path / "report"
    proc = start(tmp_path, "pneumolab-report", "--out", out, "--epochs", "100000", "--seeds", "1", "--launcher",
                 "basic", "--", "data.limit_per_class=10")
    log = out / "runs" / "0" / "cli.log"
    wait_until(proc, lambda: log.is_file() and re.search(r"epoch \d+/", log.read_text()) is not None)
    assert pneumolab_processes(str(out))  # the sweep, a child process of its own
    check_stop_line(stop(proc, signum), "pneumolab-report", signum)  # the sweep's own line is not printed
    deadline = time.monotonic() + 10
    while pneumolab_processes(str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the sweep exits as its parent does; it is reaped by init
    assert pneumolab_processes(str(out)) == []
    assert not (out / "REPORT.md").exists()


# --- bad input and disk problems ----------------------------------------------------------------


def test_full_and_read_only_output_folders_are_one_paragraph(phantom_run, sweep, work, small_disk):  # noqa: F811
    image = work / "scan.png"
    shutil.copy(next((phantom_run).glob("*.png")), image)
    full = small_disk / "full"
    full.mkdir()
    fill(small_disk)
    line = one_line(run(work, phantom_run, image, "--out", full / "p.csv", tool="pneumolab-predict"), 2)
    assert line == (f"pneumolab-predict: error: cannot use {full / 'p.csv'}: No space left on device. The disk is "
                    "full: free some space, or choose an output folder on another disk (--out).")
    line = one_line(run(work, phantom_run, "--out", full / "e", tool="pneumolab-eval"), 2)
    assert line.startswith("pneumolab-eval: error: cannot use ") and "The disk is full" in line
    (small_disk / "filler").unlink()
    remount_read_only(small_disk)
    line = one_line(run(work, sweep, "--out", full, tool="pneumolab-summarize"), 2)
    assert line == (f"pneumolab-summarize: error: cannot use {full / 'summary.csv'}: Read-only file system. The "
                    "file system is read-only: choose an output folder on a writable disk (--out).")
    assert [p for p in full.rglob("*") if p.is_file()] == []  # no file half-written, no temp file left


def test_a_cache_that_cannot_be_cleared_is_one_paragraph(tmp_path, small_disk):  # noqa: F811
    (small_disk / "folder").mkdir()
    cached = small_disk / "folder" / f"{'a' * 64}.npz"
    cached.write_bytes(b"x")
    remount_read_only(small_disk)
    line = one_line(run(tmp_path, "--dir", small_disk, "clear", tool="pneumolab-cache"), 2)
    assert line.startswith(f"pneumolab-cache: error: cannot use {cached}: Read-only file system.")
    assert cached.exists()
