"""`hydra/launcher=slurm`: the submitit SLURM launcher, made to outlive jobs that die.

A point that fails inside pneumolab records its error.json itself. A job that SLURM ends
(scancel, its time limit, out of memory, a lost node) leaves nothing, and the plugin's
launcher then raises on the first such job, so the sweep ends without a summary though
other points finished. This launcher waits for every job and writes each dead job's
error.json with the state SLURM gives it (from sacct), so the summary lists it as a failed
point, the sweep exits 1, and re-running the same command trains only what is missing.

A sweep SLURM does not take (no sbatch/srun on PATH, the controller unreachable, a submission
sbatch refuses, or jobs queued with a pending reason that never clears, e.g. more CPUs than a
node has) ends with one paragraph naming the cause and the fix, exit 2; queued jobs are
cancelled and the sweep folder is left as it was (pneumolab.cli.rundir.undo_start).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger("pneumolab")

# What to change when SLURM ended a job in this state (sacct's State, e.g. "CANCELLED by 1000").
ADVICE = {
    "TIMEOUT": "raise hydra.launcher.timeout_min (it was {timeout_min})",
    "OUT_OF_MEMORY": "raise hydra.launcher.mem_gb (it was {mem_gb})",
    "CANCELLED": "it was cancelled",
}


# How to fix a request SLURM cannot meet, per key of hydra.launcher.
FIXES = {
    "partition": "use a partition that `sinfo -s` lists (hydra.launcher.partition=NAME), or "
                 "hydra.launcher.partition=null for the cluster's default",
    "cpus_per_task": "lower hydra.launcher.cpus_per_task to at most the CPUs of one node (`sinfo -o '%P %c'` shows "
                     "them)",
    "mem_gb": "lower hydra.launcher.mem_gb to what a node has (`sinfo -o '%P %m'` shows it in MB)",
    "timeout_min": "lower hydra.launcher.timeout_min to the partition's time limit (`sinfo -o '%P %l'` shows it)",
    "gpus_per_node": "set hydra.launcher.gpus_per_node=0, or pick a partition with GPUs "
                     "(hydra.launcher.partition=NAME; `sinfo -o '%P %G'` shows them)",
    None: "check hydra.launcher's settings against what the cluster offers (`sinfo -o '%P %c %m %G %l'`), "
          "or ask the cluster's admins",
}
# What sbatch says when it refuses a submission (SLURM 20-23), and the key of hydra.launcher to change.
REFUSALS = (
    (("invalid partition",), "partition"),
    (("cpu count per node", "more processors requested", "cpus per task"), "cpus_per_task"),
    (("memory specification", "mem-per-"), "mem_gb"),
    (("time limit",), "timeout_min"),
    (("gres", "gpu"), "gpus_per_node"),
)
# squeue's reasons for a pending job that never starts unless the job or the cluster changes: with
# EnforcePartLimits=NO (SLURM's default) sbatch queues a job that asks for more than a partition
# allows, and the sweep would wait forever. Also every (QOS|Assoc)Max...PerJob... limit.
NEVER_STARTS = {
    "PartitionConfig": "they ask for more than the partition's nodes or limits allow",
    "PartitionNodeLimit": "they ask for more nodes than the partition allows",
    "PartitionTimeLimit": "they ask for a longer time limit than the partition allows",
    "BadConstraints": "no node meets their constraints",
    "InvalidQOS": "their QOS is not valid",
    "InvalidAccount": "their account is not valid",
}
PER_JOB_LIMIT = re.compile(r"^(QOS|Assoc)Max\w*PerJob\w*$")
UNREACHABLE = ("unable to contact slurm controller", "connection refused", "socket timed out",
               "slurm_persist_conn_open", "zero bytes were transmitted")
SETTINGS = ("partition", "cpus_per_task", "mem_gb", "gpus_per_node", "timeout_min")


def check_slurm_commands() -> None:
    """SLURM's commands must be on PATH; submitit would otherwise end in a traceback."""
    from pneumolab.errors import PneumolabError

    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        raise PneumolabError(
            f"hydra/launcher=slurm cannot submit the sweep: SLURM's {' and '.join(f'`{c}`' for c in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH, so this machine is not a SLURM login node. "
            "Run the command on one (where `sbatch --version` works, e.g. after `module load slurm`), or add "
            "SLURM's bin folder to PATH; or run the sweep on this machine without hydra/launcher=slurm "
            "(hydra/launcher=joblib runs its points side by side). Nothing was submitted.")


def submission_refused(said: str, params: Any) -> Exception:
    """sbatch's refusal as one paragraph with the fix (a PneumolabError: exit 2, no traceback)."""
    from pneumolab.errors import PneumolabError

    quoted = "; ".join(line.strip() for line in said.splitlines() if line.strip()) or "no message"
    lowered = quoted.lower()
    if any(needle in lowered for needle in UNREACHABLE):
        return PneumolabError(
            f"hydra/launcher=slurm cannot submit the sweep: sbatch cannot reach the SLURM controller ({quoted}). "
            "Check that slurmctld is running and reachable from this machine (`scontrol ping` says; ask the "
            "cluster's admins, or on the one-node cluster of this repository run `sudo scripts/local_slurm.sh "
            "start`), then run the same command again; or run the sweep on this machine without "
            "hydra/launcher=slurm. Nothing was submitted.")
    key = next((key for needles, key in REFUSALS if any(n in lowered for n in needles)), None)
    if key is None and "requested node configuration is not available" in lowered:
        key = beyond_every_node(params)
    setting = f" (hydra.launcher.{key}={typed(params.get(key))})" if key in params else ""
    return PneumolabError(
        f"SLURM refused the sweep's jobs{setting}: {quoted}. To fix it, {FIXES[key]}; then run the same command "
        f"again. The jobs asked for {asked_for(params)}; none was submitted.")


def asked_for(params: Any) -> str:
    return ", ".join(f"{name}={typed(params.get(name))}" for name in SETTINGS if name in params)


def typed(value: Any) -> str:
    """A value as it is typed in an override: null, not None."""
    return "null" if value is None else str(value)


def squeue_reasons(job_id: str) -> set[str]:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "PD", "-o", "%r"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return set()  # no answer: the sweep waits as it always did
    return set(out.stdout.split()) if out.returncode == 0 else set()


def beyond_every_node(params: Any) -> str | None:
    """The key of hydra.launcher that asks for more than any node of the partition has (sinfo), if one does."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %c %m"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    partition, cpus, memory = params.get("partition"), [], []
    for line in out.splitlines():
        fields = line.split()
        ours = fields and (fields[0].rstrip("*") == partition or (partition is None and fields[0].endswith("*")))
        if len(fields) < 3 or not ours:
            continue
        cpus.append(int(re.sub(r"\D.*", "", fields[1]) or 0))
        memory.append(int(re.sub(r"\D.*", "", fields[2]) or 0))
    if cpus and (params.get("cpus_per_task") or 1) > max(cpus):
        return "cpus_per_task"
    if memory and (params.get("mem_gb") or 0) * 1024 > max(memory):
        return "mem_gb"
    return None


def never_starting(job_id: str, params: Any) -> Exception | None:
    """A paragraph when SLURM queued the jobs with a pending reason that never clears, else None."""
    from pneumolab.errors import PneumolabError

    stuck = sorted(reason for reason in squeue_reasons(job_id) if reason in NEVER_STARTS or PER_JOB_LIMIT.match(reason))
    if not stuck:
        return None
    reason = stuck[0]
    key = {"PartitionTimeLimit": "timeout_min"}.get(reason) or beyond_every_node(params)
    setting = f"; hydra.launcher.{key}={typed(params.get(key))}" if key in params else ""
    meaning = NEVER_STARTS.get(reason, "they ask for more than a per-job limit of the account or QOS allows")
    return PneumolabError(
        f"SLURM queued the sweep's jobs but can never start them: they wait with reason {reason} ({meaning}{setting}). "
        f"To fix it, {FIXES[key]}; then run the same command again. The jobs asked for {asked_for(params)}; "
        f"they were cancelled (job {job_id}).")


class SlurmLauncher(SubmititSlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs in the SLURM job: end when SLURM ends the job, rather than train on unheard."""
        # submitit ignores SIGTERM, so a cancelled or timed-out job trained on until SLURM's SIGKILL.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # submitit's warning before the time limit (USR2) raises into training; a point cannot be
        # saved half-way, so it trains on and SLURM's own ending (TIMEOUT) is what gets recorded.
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's launch, except that each job's result is collected on its own."""
        import submitit
        from submitit.core.utils import FailedJobError

        assert self.config is not None
        check_slurm_commands()
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]})
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items()
                                      if key not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("SLURM sweep of %d points into %s", len(job_overrides), sweep_dir)
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for number, overrides in zip(numbers, job_overrides):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        said = io.StringIO()
        try:
            # submitit prints sbatch's complaint to stderr before it raises; the paragraph below quotes it.
            with contextlib.redirect_stderr(said):
                jobs = executor.map_array(self, [list(o) for o in job_overrides], ["hydra.sweep.dir"] * len(numbers),
                                          list(numbers), [f"job_id_for_{n}" for n in numbers], [state] * len(numbers))
        except (FailedJobError, OSError) as exc:
            raise submission_refused(str(exc) or said.getvalue(), self.params) from None
        array_id = str(jobs[0].job_id).split("_")[0]
        stuck = never_starting(array_id, self.params)
        if stuck is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["scancel", array_id], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            raise stuck
        return [self.collect(job, list(overrides), number)
                for job, overrides, number in zip(jobs, job_overrides, numbers)]

    def collect(self, job: Any, overrides: list[str], number: int) -> JobReturn:
        """The job's return, or, when it ended without one, a failed point recorded on disk."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError:
            reason = self.describe_dead_job(job)
        except FailedJobError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            reason = f"SLURM job {job.job_id} failed outside pneumolab: {lines[-1] if lines else 'no message'}"
        return self.record_failure(overrides, number, reason)

    def describe_dead_job(self, job: Any) -> str:
        state = job.state
        advice = next((text for prefix, text in ADVICE.items() if state.startswith(prefix)), "")
        advice = advice.format(**self.params) + "; " if advice else ""
        return (f"SLURM ended job {job.job_id} before it finished (state {state}): {advice}"
                f"re-run the same command to train this point; its log is {job.paths.stderr}")

    def record_failure(self, overrides: list[str], number: int, reason: str) -> JobReturn:
        from pneumolab.record.results import write_failure  # not at the top: Hydra imports this module in every app

        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = number
        job_dir = Path(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir))
        task_overrides = list(sweep_config.hydra.overrides.task)
        task_config = OmegaConf.to_container(sweep_config, resolve=False)
        task_config.pop("hydra")
        write_failure(job_dir, task_config, task_overrides, reason)
        log.error("point %d (%s): %s", number, " ".join(task_overrides), reason)
        # Completed with no value, as a point that fails inside pneumolab returns: the Optuna
        # sweeper counts it as a failed trial and goes on.
        return JobReturn(overrides=task_overrides, cfg=OmegaConf.create(task_config), hydra_cfg=sweep_config,
                         working_dir=str(job_dir), status=JobStatus.COMPLETED, _return_value=None)
