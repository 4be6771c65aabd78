"""How many CPU cores this process may use: the smallest of every limit placed on it.

- the affinity mask (taskset, a container's cpuset, SLURM with task/affinity or task/cgroup);
- `SLURM_CPUS_PER_TASK`, set inside a SLURM job: clusters that do not pin jobs to their
  CPUs still give a 1-CPU job the whole node's mask;
- the cgroup CPU quota (v1 `cpu.cfs_quota_us`, v2 `cpu.max`), which docker --cpus and
  systemd CPUQuota set: a process may run on every core yet only use so many of them.

Written here rather than taken from loky's cpu_count, which reads only the root cgroup's
quota, not the one of the cgroup this process is in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """Cores this process may keep busy, at least 1."""
    limits = [affinity_cores(), slurm_cores(), cgroup_quota_cores()]
    return max(1, min(limit for limit in limits if limit is not None))


def affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def slurm_cores() -> int | None:
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def cgroup_quota_cores() -> int | None:
    """The tightest CPU quota on this process's cgroup or any cgroup above it, in whole cores (rounded up)."""
    quotas = [quota for directory in own_cgroup_dirs() for quota in [read_quota(directory)] if quota is not None]
    return math.ceil(min(quotas)) if quotas else None


def own_cgroup_dirs(controller: str = "cpu") -> list[Path]:
    """The cgroup directories (v2, and v1's `controller`) this process is in, with their parents."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    dirs = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mounts = [CGROUP_ROOT, CGROUP_ROOT / "unified"]  # v2: the whole tree, or the hybrid layout's part
        elif controller in controllers.split(","):
            mounts = list(dict.fromkeys([CGROUP_ROOT / controllers, CGROUP_ROOT / controller]))
        else:
            continue
        relative = Path(path.lstrip("/"))
        for mount in mounts:
            # The cgroup and every one above it: a limit on a parent binds its children too.
            dirs += [mount / parent for parent in (relative, *relative.parents)]
    return dirs


def read_quota(directory: Path) -> float | None:
    """The CPU quota set on one cgroup, in cores; None when it has none (or the file is not there)."""
    try:
        if (directory / "cpu.max").is_file():
            quota, period = (directory / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 else None
