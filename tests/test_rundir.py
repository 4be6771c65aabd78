"""Output directories no two processes share: default ones apart, a named one refused while in use.

The processes below are real `pneumolab` runs started together, so their start-up and
training overlap as they would for a user who starts two runs at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import pneumolab_command, subprocess_env
from pneumolab.cli.rundir import LOCK_NAME, DirectoryClaim, DirectoryInUse
from test_sweep import read_csv

TINY = ["data.limit_per_class=10", "trainer.seeds=[0,1]"]
TIMEOUT_S = 300


def start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*pneumolab_command(), *args, *TINY], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    outcomes = []
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT_S)
        outcomes.append((proc.returncode, err))
    return outcomes


def epochs_in(job_dir: Path) -> tuple[int, int]:
    """trainer.epochs as results.json and Hydra's .hydra/config.yaml of one job directory record it."""
    results = json.loads((job_dir / "results.json").read_text())
    saved = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
    return results["config"]["trainer"]["epochs"], saved["trainer"]["epochs"]


@pytest.mark.slow
def test_two_runs_started_together_keep_both_results(tmp_path):
    outcomes = finish([start(tmp_path, "trainer.epochs=2"), start(tmp_path, "trainer.epochs=3")])
    assert [rc for rc, _ in outcomes] == [0, 0], outcomes
    job_dirs = sorted(tmp_path.glob("outputs/runs/*/*"))
    assert len(job_dirs) == 2, job_dirs
    assert sorted(epochs_in(d) for d in job_dirs) == [(2, 2), (3, 3)]


@pytest.mark.slow
def test_two_sweeps_started_together_keep_all_results(tmp_path):
    outcomes = finish([start(tmp_path, "-m", "head=bce,ce", "trainer.epochs=2"),
                       start(tmp_path, "-m", "head=bce,ce", "trainer.epochs=3")])
    assert [rc for rc, _ in outcomes] == [0, 0], outcomes
    sweep_dirs = sorted(tmp_path.glob("outputs/multirun/*/*"))
    assert len(sweep_dirs) == 2, sweep_dirs
    epochs = set()
    for sweep_dir in sweep_dirs:
        rows = read_csv(sweep_dir / "summary.csv")
        assert [(r["head"], r["status"]) for r in rows] == [("bce", "ok"), ("ce", "ok")]
        (both,) = {epochs_in(sweep_dir / r["point"]) for r in rows}
        epochs.add(both)
    assert epochs == {(2, 2), (3, 3)}


@pytest.mark.slow
def test_two_configs_aimed_at_one_directory_one_trains_the_other_refuses(tmp_path):
    run_dir = tmp_path / "shared"
    # Long enough that the first to claim the directory is still training when the other arrives.
    epochs = {1500: start(tmp_path, f"hydra.run.dir={run_dir}", "trainer.epochs=1500"),
              1501: start(tmp_path, f"hydra.run.dir={run_dir}", "trainer.epochs=1501")}
    outcomes = dict(zip(epochs, finish(list(epochs.values()))))
    assert sorted(rc for rc, _ in outcomes.values()) == [0, 2], outcomes
    (winner,) = [e for e, (rc, _) in outcomes.items() if rc == 0]
    (loser,) = [e for e, (rc, _) in outcomes.items() if rc == 2]
    message = outcomes[loser][1]
    assert message.startswith(f"pneumolab: error: The output directory {run_dir} is in use by process ")
    assert "hydra.run.dir=" in message and "Traceback" not in message and message.count("\n") == 1
    assert epochs_in(run_dir) == (winner, winner)
    assert f"trainer.epochs={loser}" not in (run_dir / "cli.log").read_text()
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count(f"trainer.epochs={winner}") == 1


def test_a_sweep_refuses_a_sweep_directory_in_use(tmp_path):
    sweep_dir = tmp_path / "sweep"
    claim = DirectoryClaim(sweep_dir, "hydra.sweep.dir")
    try:
        proc = subprocess.run([*pneumolab_command(), "-m", "head=bce,ce", f"hydra.sweep.dir={sweep_dir}", *TINY],
                              cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        claim.release()
    assert proc.returncode == 2, proc.stderr
    assert f"is in use by process {os.getpid()} on " in proc.stderr and "hydra.sweep.dir=" in proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir()) == [LOCK_NAME]


HOLD = """
import sys, time
from pathlib import Path
from pneumolab.cli.rundir import DirectoryClaim
DirectoryClaim(Path(sys.argv[1]), "hydra.run.dir")
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_claim_ends_with_its_process_however_it_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "claimed\n"
        with pytest.raises(DirectoryInUse, match=f"in use by process {holder.pid} on "):
            DirectoryClaim(tmp_path, "hydra.run.dir")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim = DirectoryClaim(tmp_path, "hydra.run.dir")  # no stale lock left by the killed process
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"process {os.getpid()} on ")
    claim.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    DirectoryClaim(tmp_path, "hydra.run.dir").release()
