"""Real sweeps on a real SLURM cluster through `hydra/launcher=slurm`.

The cluster is the one-node one of scripts/local_slurm.sh (`.ci/run` starts it; by hand:
`sudo scripts/local_slurm.sh start`). Without it these tests skip and say why; in CI
(CI=true) they fail instead, so they cannot go quietly unrun.

Every sweep is tiny and all of them are submitted at the start, so their jobs share the
node's cores. The 2-CPU job goes first, alone: it needs the whole (2-core) node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import slurm_unavailable
from test_rundir import epochs_in
from test_sweep import read_csv
from test_sweep_cli import Sweep, start_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.limit_per_class=10", "trainer.epochs=2"]
FOUR_SEEDS = "trainer.seeds=[0,1,2,3]"
TIMEOUT_S = 400

pytestmark = pytest.mark.slow  # real SLURM jobs


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    reason = slurm_unavailable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM tests, but {reason}")
    if reason:
        pytest.skip(reason)


def slurm_args(name: str, *args: str) -> list[str]:
    # A job name of its own, so the test can find this sweep's jobs in the queue.
    return ["hydra/launcher=slurm", f"hydra.launcher.name=pneumolab-test-{name}-{os.getpid()}", *args]


def job_id_of(name: str, point: int, states: str = "R") -> str | None:
    """The SLURM job id of `point` of sweep `name` while it is in one of `states`."""
    out = subprocess.run(["squeue", "-h", "-n", f"pneumolab-test-{name}-{os.getpid()}", "-t", states, "-o", "%i"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return next((job for job in out if job.endswith(f"_{point}")), None)


def wait_for_job(sweep: Sweep, name: str, point: int, states: str) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while (job := job_id_of(name, point, states)) is None:
        assert sweep.proc.poll() is None, sweep.wait()[1]
        assert time.monotonic() < deadline, f"point {point} of {name} never reached {states}"
        time.sleep(0.1)
    return job


CANCELLED = ["head=bce,ce", *TINY, "trainer.seeds=[0,1]"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Iterator[dict[str, Sweep]]:
    root = tmp_path_factory.mktemp("slurm")
    started = {"two_cpus": start_sweep(root, "two_cpus", slurm_args("two_cpus", "hydra.launcher.cpus_per_task=2",
                                                                     "head=bce", *TINY, FOUR_SEEDS))}
    started["two_cpus"].proc.wait(timeout=TIMEOUT_S)  # seconds, and nothing else fits beside it
    started["timeout"] = start_sweep(root, "timeout", slurm_args(
        "timeout", "hydra.launcher.timeout_min=1", "trainer.epochs=2,1000000", "data.limit_per_class=10",
        "trainer.seeds=[0,1]"))
    started["cancelled"] = start_sweep(root, "cancelled", slurm_args("cancelled", *CANCELLED))
    # Cancelled the moment it runs, before it can write a result. Meanwhile the node's other
    # core trains the timeout sweep, so the sweeps below lose nothing by starting after it.
    subprocess.run(["scancel", wait_for_job(started["cancelled"], "cancelled", 1, "R")], check=True, timeout=30)
    started["grid"] = start_sweep(root, "grid", slurm_args("grid", "head=bce,ce", "data.batch_size=16,32", *TINY,
                                                           FOUR_SEEDS))
    started["failing"] = start_sweep(root, "failing", slurm_args("failing", "data.batch_size=16,0", *TINY,
                                                                 "trainer.seeds=[0,1]"))
    yield started
    subprocess.run(["scancel", "-n", ",".join(f"pneumolab-test-{name}-{os.getpid()}" for name in started)],
                   timeout=30)
    for sweep in started.values():
        if sweep.proc.poll() is None:
            sweep.proc.kill()
            sweep.proc.wait()


def check_no_traceback(output: str) -> None:
    assert "Traceback" not in output and "UncompletedJobError" not in output, output


def test_a_2x2_sweep_writes_every_result_and_the_summary(sweeps):
    rc, output = sweeps["grid"].wait()
    assert rc == 0, output
    sweep_dir = sweeps["grid"].dir
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["head"], r["data.batch_size"], r["status"]) for r in rows] == [
        ("bce", "16", "ok"), ("bce", "32", "ok"), ("ce", "16", "ok"), ("ce", "32", "ok")]
    for row in rows:
        results = json.loads((sweep_dir / row["point"] / "results.json").read_text())
        assert results["config"]["data"]["batch_size"] == int(row["data.batch_size"])
        assert [e["seed"] for e in results["per_seed"]] == [0, 1, 2, 3]
        assert float(row["test_acc_mean"]) == pytest.approx(results["summary"]["test_acc"]["mean"], abs=1e-12)
        # One CPU per job (the launcher's default): four seeds, one process.
        assert "device cpu, 1 process\n" in (sweep_dir / row["point"] / "cli.log").read_text()
    assert (sweep_dir / "summary.md").is_file() and (sweep_dir / "summary.png").is_file()


def test_a_2_cpu_job_trains_in_two_processes(sweeps):
    rc, output = sweeps["two_cpus"].wait()
    assert rc == 0, output
    log = (sweeps["two_cpus"].dir / "0" / "cli.log").read_text()
    assert "device cpu, 2 processes" in log


def test_a_point_failing_on_a_bad_value_is_a_failed_row_and_the_sweep_exits_1(sweeps):
    rc, output = sweeps["failing"].wait()
    assert rc == 1, output
    check_no_traceback(output)
    rows = read_csv(sweeps["failing"].dir / "summary.csv")
    assert [(r["data.batch_size"], r["status"]) for r in rows] == [("16", "ok"), ("0", "failed")]
    assert rows[1]["error"] == "Invalid config value data.batch_size=0: use a batch size of at least 1."


def test_a_job_killed_at_its_time_limit_is_a_failed_row_with_slurms_reason(sweeps):
    rc, output = sweeps["timeout"].wait()
    assert rc == 1, output
    check_no_traceback(output)
    rows = read_csv(sweeps["timeout"].dir / "summary.csv")
    assert [(r["trainer.epochs"], r["status"]) for r in rows] == [("2", "ok"), ("1000000", "failed")]
    assert "(state TIMEOUT): raise hydra.launcher.timeout_min (it was 1)" in rows[1]["error"]
    assert not (sweeps["timeout"].dir / "1" / "results.json").exists()


def test_a_cancelled_job_is_a_failed_row_and_the_same_command_trains_only_it(sweeps):
    sweep = sweeps["cancelled"]
    rc, output = sweep.wait()
    assert rc == 1, output
    check_no_traceback(output)
    rows = read_csv(sweep.dir / "summary.csv")
    assert [(r["head"], r["status"]) for r in rows] == [("bce", "ok"), ("ce", "failed")], "the cancel came too late"
    assert "(state CANCELLED" in rows[1]["error"] and "re-run the same command" in rows[1]["error"]
    first = sweep.dir / "0" / "results.json"
    before = (first.stat().st_mtime_ns, first.read_bytes())

    rc, output = start_sweep(sweep.dir.parent, sweep.dir.name, slurm_args("cancelled", *CANCELLED)).wait()
    assert rc == 0, output
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before
    assert (sweep.dir / "0" / "cli.log").read_text().count("skipped: done") == 1
    assert (sweep.dir / "1" / "cli.log").read_text().count("skipped: done") == 0
    assert epochs_in(sweep.dir / "1") == (2, 2)
    rows = read_csv(sweep.dir / "summary.csv")
    assert [(r["head"], r["status"]) for r in rows] == [("bce", "ok"), ("ce", "ok")]
