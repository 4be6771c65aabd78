"""A process's usable cores: the smallest of its affinity mask, SLURM_CPUS_PER_TASK and its cgroup
CPU quota. Each case runs in a fresh interpreter under the real limit (taskset, a real cgroup)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import subprocess_env

PRINT_CORES = "from pneumolab.cores import usable_cores; print(usable_cores())"
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
ALL_CORES = len(os.sched_getaffinity(0))


def cores_in_child(slurm_cpus: str | None = None, prefix: tuple[str, ...] = ()) -> int:
    """usable_cores() in a fresh interpreter started by `prefix`, with SLURM_CPUS_PER_TASK as given."""
    env = subprocess_env()
    env.pop("SLURM_CPUS_PER_TASK", None)
    if slurm_cpus is not None:
        env["SLURM_CPUS_PER_TASK"] = slurm_cpus
    out = subprocess.run([*prefix, sys.executable, "-c", PRINT_CORES], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    return int(out.stdout)


def test_without_limits_every_core_of_the_mask_counts():
    assert cores_in_child() == ALL_CORES


@pytest.mark.skipif(ALL_CORES < 2, reason="needs two cores to see a limit below the machine's")
def test_the_affinity_mask_limits():
    one_core = min(os.sched_getaffinity(0))
    limited = cores_in_child(prefix=(sys.executable, "-c",
                                     f"import os, sys; os.sched_setaffinity(0, {{{one_core}}}); "
                                     "os.execv(sys.argv[1], sys.argv[1:])"))
    assert limited == 1


@pytest.mark.parametrize("value, expected", [("1", 1), ("999", ALL_CORES), ("", ALL_CORES), ("x", ALL_CORES)])
def test_slurm_cpus_per_task_limits_when_set(value, expected):
    assert cores_in_child(slurm_cpus=value) == expected


@pytest.fixture
def cpu_cgroup():
    """A fresh cgroup v1 `cpu` directory; the test moves its child process into it."""
    if not os.access(CPU_CGROUP, os.W_OK) or not (CPU_CGROUP / "cpu.cfs_quota_us").exists():
        pytest.skip(f"no writable cgroup v1 cpu controller at {CPU_CGROUP} (needs root)")
    group = CPU_CGROUP / f"pneumolab-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here: {exc}")
    yield group
    group.rmdir()


@pytest.mark.parametrize("quota_us, expected", [(100_000, 1), (150_000, 2), (-1, ALL_CORES)])
def test_the_cgroup_quota_limits_rounded_up(cpu_cgroup, quota_us, expected):
    (cpu_cgroup / "cpu.cfs_period_us").write_text("100000")
    (cpu_cgroup / "cpu.cfs_quota_us").write_text(str(quota_us))
    # The shell joins the cgroup, then becomes the Python that counts its cores.
    join = ("sh", "-c", f'echo $$ > {cpu_cgroup}/cgroup.procs && exec "$@"', "sh")
    assert cores_in_child(prefix=join) == min(expected, ALL_CORES)
