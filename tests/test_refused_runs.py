"""A run refused before it trains leaves no run folder (or a folder the user named as it was), lock released.

Real `pneumolab` processes for what a user types; pneumolab.cli.rundir.undo_start in-process for what it
must keep (a folder that holds results).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import pneumolab_command, subprocess_env
from pneumolab.cli import rundir
from pneumolab.cli.rundir import LOCK_NAME, ClaimOutputDirectory, undo_start
from test_launcher_failures import check_paragraph, tree


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env() | {"HOME": str(cwd)}  # ~/chest_xrays below is tmp_path's
    return subprocess.run([*pneumolab_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("args", "needle"), [
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data=folder", "data.root=~/chest_xrays"], "does not exist"),
], ids=["bad_value", "missing_data_folder"])
def test_a_refused_run_leaves_no_run_folder(tmp_path, args, needle):
    proc = run(tmp_path, *args)
    check_paragraph(proc, needle)
    assert not (tmp_path / "outputs").exists(), tree(tmp_path / "outputs")


def test_a_refused_run_in_a_named_folder_that_held_a_run_leaves_it_as_it_was(tmp_path):
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("the earlier run's config\n")
    (job / ".hydra" / "overrides.yaml").write_text("[]\n")
    (job / "cli.log").write_text("the earlier run's log\n")
    (job / "results.json").write_text("{}")
    (job / LOCK_NAME).write_text("")
    before, stamp = tree(job), (job / "results.json").stat().st_mtime_ns
    proc = run(tmp_path, "data.batch_size=0", f"hydra.run.dir={job}")
    check_paragraph(proc, "data.batch_size=0")
    assert tree(job) == before and (job / "results.json").stat().st_mtime_ns == stamp


def test_a_refused_run_keeps_a_named_empty_folder_and_removes_a_named_new_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_paragraph(run(tmp_path, "data.batch_size=0", f"hydra.run.dir={empty}"), "data.batch_size=0")
    assert empty.is_dir() and tree(empty) == {}
    check_paragraph(run(tmp_path, "data.batch_size=0", "hydra.run.dir=new/deeper/job"), "data.batch_size=0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.slow
def test_a_refused_sweep_point_is_recorded_and_the_last_line_is_absolute(tmp_path):
    """Only single runs tidy up: a sweep point refused for its value is a failed row with its error.json."""
    proc = run(tmp_path, "-m", "debug=smoke", "data.batch_size=0,8", "hydra.sweep.dir=outputs/sw")
    assert proc.returncode == 1, proc.stderr
    sweep = tmp_path / "outputs" / "sw"
    assert "data.batch_size=0" in json.loads((sweep / "0" / "error.json").read_text())["error"]
    assert (sweep / "1" / "results.json").is_file() and (sweep / "summary.md").is_file()
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith(f"sweep summary of 2 points: {sweep / 'summary.md'}"), last


# --- undo_start itself -------------------------------------------------------------------------


def start_in(directory: Path) -> ClaimOutputDirectory:
    """What Hydra's on_run_start does, then what it writes before pneumolab's code runs."""
    claimer = ClaimOutputDirectory()
    claimer.take(directory, "hydra.run.dir")
    (directory / ".hydra").mkdir(exist_ok=True)
    (directory / ".hydra" / "config.yaml").write_text("this run\n")
    with open(directory / "cli.log", "a") as log:
        log.write("this run's log line\n")
    return claimer


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_undo_removes_what_the_start_made_and_the_folders_it_created(tmp_path):
    start_in(tmp_path / "runs" / "day" / "job")
    assert undo_start() is True
    assert list(tmp_path.iterdir()) == []
    assert undo_start() is False  # once


def test_undo_keeps_a_folder_that_holds_results_and_releases_the_lock(tmp_path):
    job = tmp_path / "job"
    claimer = start_in(job)
    (job / "results.json").write_text("{}")  # e.g. every seed diverged: an error, but results to keep
    assert undo_start() is False
    assert {"results.json", ".hydra", "cli.log", LOCK_NAME} <= {p.name for p in job.iterdir()}
    assert claimer.claim is None and lock_is_free(job / LOCK_NAME) and rundir._start is None


def test_undo_keeps_a_folder_whose_earlier_results_changed(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "metrics.csv").write_text("old\n")
    start_in(job)
    (job / "metrics.csv").write_text("new, longer\n")
    assert undo_start() is False
    assert (job / "metrics.csv").read_text() == "new, longer\n" and (job / ".hydra").is_dir()
