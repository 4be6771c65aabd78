"""`hydra/launcher=slurm` when SLURM cannot take the sweep: one paragraph, exit 2, nothing half-written.

Real `pneumolab` processes: with a `sbatch` that cannot reach its controller (a script that says
so, as SLURM's own does), with no SLURM on PATH, and, on a running cluster
(scripts/local_slurm.sh), with submissions SLURM refuses (a partition that does not exist,
more CPUs than a node has).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import pneumolab_command, slurm_unavailable, subprocess_env

CONTROLLER_DOWN = "sbatch: error: Unable to contact slurm controller (connect failure)"
SWEEP = ["-m", "hydra/launcher=slurm", "head=bce,ce", "debug=smoke"]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below root with its bytes (None for a folder): what 'as it was' compares."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def fake_slurm(tmp_path: Path) -> Path:
    """A bin folder whose sbatch fails as SLURM's does with slurmctld down (srun only has to exist)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\necho '{CONTROLLER_DOWN}' >&2\nexit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def run(cwd: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env() | ({"PATH": path} if path is not None else {})
    return subprocess.run([*pneumolab_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def check_paragraph(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    message = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "\n" not in message, proc.stderr
    assert message.startswith("pneumolab: error: "), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_an_unreachable_controller_is_one_paragraph_and_leaves_no_sweep_folder(tmp_path):
    proc = run(tmp_path, *SWEEP, path=str(fake_slurm(tmp_path)))
    message = check_paragraph(proc, CONTROLLER_DOWN, "cannot reach the SLURM controller", "scontrol ping",
                              "scripts/local_slurm.sh start", "without hydra/launcher=slurm", "Nothing was submitted")
    assert "submitit" not in message
    assert not (tmp_path / "outputs").exists(), tree(tmp_path / "outputs")


def test_an_unreachable_controller_leaves_a_named_sweep_folder_as_it_was(tmp_path):
    """A sweep folder the user names and resumes: its earlier files stay, nothing of this start is added."""
    sweep = tmp_path / "sweep"
    (sweep / ".submitit" / "1234_0").mkdir(parents=True)
    (sweep / ".submitit" / "1234_0" / "1234_0_log.err").write_text("an earlier job's log\n")
    (sweep / "multirun.yaml").write_text("the earlier sweep's record\n")
    (sweep / "notes.txt").write_text("mine\n")
    before = tree(sweep)
    proc = run(tmp_path, *SWEEP, f"hydra.sweep.dir={sweep}", path=str(fake_slurm(tmp_path)))
    check_paragraph(proc, CONTROLLER_DOWN)
    assert tree(sweep) == before


def test_no_sbatch_on_path_is_one_paragraph(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = run(tmp_path, *SWEEP, path=str(empty))
    check_paragraph(proc, "`sbatch` and `srun` are not on PATH", "not a SLURM login node", "hydra/launcher=joblib",
                    "Nothing was submitted")
    assert not (tmp_path / "outputs").exists()


def real_slurm() -> None:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


def jobs_named(name: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                          timeout=60).stdout.split()


@pytest.mark.slow
def test_a_partition_slurm_does_not_have_is_one_paragraph_naming_the_setting(tmp_path):
    real_slurm()
    proc = run(tmp_path, *SWEEP, "hydra.launcher.partition=nope")
    check_paragraph(proc, "SLURM refused the sweep's jobs (hydra.launcher.partition=nope)", "invalid partition",
                    "Batch job submission failed", "sinfo -s", "hydra.launcher.partition=null", "none was submitted")
    assert not (tmp_path / "outputs").exists(), tree(tmp_path / "outputs")


@pytest.mark.slow
def test_more_cpus_than_a_node_has_is_one_paragraph_and_no_job_is_left_waiting(tmp_path):
    """sbatch refuses this where EnforcePartLimits is set; by default (NO) it queues jobs that never start
    (pending reason PartitionConfig), which pneumolab cancels instead of waiting forever."""
    real_slurm()
    name = f"pneumolab-test-cpus-{os.getpid()}"
    proc = run(tmp_path, *SWEEP, "hydra.launcher.cpus_per_task=999", f"hydra.launcher.name={name}")
    message = check_paragraph(proc, "hydra.launcher.cpus_per_task=999", "lower hydra.launcher.cpus_per_task",
                              "sinfo -o '%P %c'")
    assert "can never start them" in message or "SLURM refused the sweep's jobs" in message, message
    assert jobs_named(name) == []
    assert not (tmp_path / "outputs").exists(), tree(tmp_path / "outputs")


# --- sbatch's and squeue's words, classified (no cluster needed) -------------------------------

PARAMS = {"partition": None, "cpus_per_task": 999, "mem_gb": 4, "gpus_per_node": 0, "timeout_min": 60}


@pytest.mark.parametrize(("said", "needle"), [
    ("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid "
     "partition name specified", "(hydra.launcher.partition=null)"),
    ("sbatch: error: CPU count per node can not be satisfied\nsbatch: error: Batch job submission failed: "
     "Requested node configuration is not available", "(hydra.launcher.cpus_per_task=999)"),
    ("sbatch: error: Memory specification can not be satisfied", "(hydra.launcher.mem_gb=4)"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "(hydra.launcher.timeout_min=60)"),
    ("sbatch: error: Invalid generic resource (gres) specification", "(hydra.launcher.gpus_per_node=0)"),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
     "cannot reach the SLURM controller"),
    ("sbatch: error: something new", "sinfo -o '%P %c %m %G %l'"),
], ids=["partition", "cpus", "memory", "time", "gpus", "controller", "unknown"])
def test_sbatchs_refusal_names_the_setting_to_change(said, needle):
    from hydra_plugins.pneumolab_slurm.slurm_launcher import submission_refused

    message = str(submission_refused(said, PARAMS))
    assert needle in message and "\n" not in message and said.splitlines()[-1] in message, message


def test_jobs_queued_with_a_reason_that_never_clears_are_one_paragraph(monkeypatch):
    from hydra_plugins.pneumolab_slurm import slurm_launcher as launcher

    monkeypatch.setattr(launcher, "beyond_every_node", lambda params: "cpus_per_task")
    monkeypatch.setattr(launcher, "squeue_reasons", lambda job: {"Resources", "Priority"})
    assert launcher.never_starting("7", PARAMS) is None  # waiting for room: the sweep waits
    monkeypatch.setattr(launcher, "squeue_reasons", lambda job: {"PartitionConfig"})
    message = str(launcher.never_starting("7", PARAMS))
    assert message.startswith("SLURM queued the sweep's jobs but can never start them: they wait with reason "
                              "PartitionConfig") and "hydra.launcher.cpus_per_task=999" in message
    assert message.endswith("they were cancelled (job 7).")
    monkeypatch.setattr(launcher, "squeue_reasons", lambda job: {"QOSMaxCpuPerJobLimit"})
    assert "per-job limit" in str(launcher.never_starting("7", PARAMS))
