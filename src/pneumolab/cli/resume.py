"""Whether a job directory's results.json can stand for the job about to run (a sweep re-run skips it),
and the rule that keeps a finished point from ever being overwritten.

Only a results object of the same config, written by the same pneumolab version, is reused;
a damaged or unreadable file, or one from another pneumolab version for the same overrides,
is recomputed and the log says why. The reader never trusts the file's shape: it may be
another program's JSON, a half-edited file, or an older version's results.

A finished point of *another* configuration is never recomputed over: a sweep folder only
grows. A sweep that would train over another sweep's finished points is refused when it
starts, before anything is written or trained (`ProtectFinishedPoints`, a Hydra callback
in conf/config.yaml: one paragraph naming the folder, the points and the fix, exit 2); a
single run into a named directory holding another run likewise. Sweepers that choose their
points as they go (Optuna) cannot be checked ahead: there `reusable_results` refuses the
one point (PointTaken), which the sweep records as failed while it goes on, and leaves
its results.json and model.safetensors untouched. A point that failed or was refused
(error.json, no results.json) holds nothing to lose and may be retried by any sweep.
"""

from __future__ import annotations

import copy
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from pneumolab.version import __version__
from pneumolab.errors import PneumolabError
from pneumolab.record.names import RESULTS
from pneumolab.record.results import read_json, results_problem

log = logging.getLogger("pneumolab")

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SHOWN_POINTS = 3  # a refusal names this many of the points it would overwrite, then counts the rest
# The fix a refusal offers for adding a sweep's points to a folder beside the points already there.
BESIDE = "hydra.sweep.subdir=more/${hydra.job.num}"


class PointTaken(PneumolabError):
    """The job directory holds the finished results of another configuration: refused, never overwritten."""


def reusable_results(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The results in `path` when they were made from `config` by this pneumolab; else None (and why, logged).

    PointTaken when `path` holds a finished point of another configuration: it is never recomputed over.
    """
    results, unreadable = read_json(path)
    if unreadable:
        log.info("recomputing: %s %s", path, unreadable)
    if results is None:
        return None
    difference = other_point(results, config, current_overrides())
    if difference:
        raise PointTaken(
            f"{path.parent} already holds the finished results of another configuration ({difference}), and "
            "pneumolab never overwrites a finished point: its results.json and model.safetensors are left as they "
            "are. Run this job in a directory of its own (leave hydra.run.dir and hydra.sweep.dir unset for a fresh "
            f"one, or name another), or move {path.parent} away first."
        )
    reason = why_not_reusable(results, config)
    if reason:
        log.info("recomputing: %s %s", path, reason)
        return None
    return results


def other_point(results: Any, config: dict[str, Any], overrides: list[str] | None) -> str | None:
    """How a results.json differs from the job about to run, when it is a finished point of another
    configuration (never to be overwritten); None when it is this job's own earlier result, or no point at all.

    Its own earlier result: the same config, or (written by another pneumolab version, whose configs may
    have other keys) the same overrides, which a re-run after an upgrade recomputes as it always did.
    """
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict) or results["config"] == config:
        return None
    versions = results.get("versions")
    written_by = versions.get("pneumolab") if isinstance(versions, dict) else None
    if written_by != __version__ and overrides is not None and results.get("overrides") == overrides:
        return None
    return describe_difference(results["config"], config)


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`first difference at data.batch_size: 16 there, 64 here`."""
    key = first_difference(old, new)
    there, here = (value_at(c, key) for c in (old, new))
    return f"first difference at {key}: {there} there, {here} here"


def value_at(config: dict[str, Any], dotted: str) -> str:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "absent"
        node = node[part]
    text = json.dumps(node, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def current_overrides() -> list[str] | None:
    """The running Hydra job's overrides, None outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def why_not_reusable(results: Any, config: dict[str, Any]) -> str | None:
    # The shape every reader of results.json checks, then what a finished job's own results hold besides.
    problem = results_problem(results)
    missing = [key for key in ("config", "n_diverged", "versions") if key not in results] if not problem else []
    if problem or missing or not isinstance(results["versions"], dict):
        return f"{problem or 'lacks ' + (', '.join(missing) or 'well-formed versions')} (written by an older " \
               "pneumolab, or not by pneumolab)"
    written_by = results["versions"].get("pneumolab")
    if written_by != __version__:
        return f"was written by pneumolab {written_by}, this is pneumolab {__version__}"
    if results["config"] != config:
        return f"holds another config (first difference at {first_difference(results['config'], config)})"
    return None


def first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The dotted key where two configs first differ, e.g. `trainer.epochs`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the top level"


# --- before a run or sweep starts: refuse what would overwrite a finished point -------------------------


class ProtectFinishedPoints(Callback):
    """Refuse, before Hydra writes or trains anything, a run or sweep whose jobs would land on finished
    points of another configuration. Registered in conf/config.yaml after the output-folder claim."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        difference = taken_by_another(job_dir, lambda: task_config(config), lambda: task_overrides(config))
        if difference:
            refuse(f"The run directory {job_dir} already holds the finished results of another configuration "
                   f"({difference}), and pneumolab never overwrites a finished run. Give this run a directory of its "
                   f"own: leave hydra.run.dir unset for a fresh one, or name another; or move {job_dir} away first. "
                   "Nothing was written.")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        if not any(sweep_dir.rglob(RESULTS)):
            return  # a new or empty folder: nothing to protect
        try:
            jobs = planned_jobs(config)
        except Exception as exc:  # noqa: BLE001 - Hydra reports a bad sweep itself, once the sweeper parses it
            log.debug("could not list the sweep's jobs ahead (%s); each job checks its own folder", exc)
            return
        conflicts = []
        for num, overrides in jobs:
            job = JobAhead(config, num, overrides, sweep_dir)
            difference = taken_by_another(job.dir, job.config, lambda: overrides)
            if difference:
                conflicts.append((job.dir, overrides, difference))
        if conflicts:
            refuse(sweep_refusal(sweep_dir, conflicts, len(jobs)))


def refuse(message: str) -> None:
    # Hydra turns a callback's exceptions into warnings and goes on; only an exit stops it.
    print(f"pneumolab: error: {message}", file=sys.stderr)
    sys.exit(2)


def taken_by_another(job_dir: Path, config, overrides) -> str | None:
    """How the finished point in `job_dir` differs from the job about to run there (None: nothing to protect).

    `config` and `overrides` are called only when job_dir holds a results.json; a config that cannot be
    worked out ahead is left to the job's own check (reusable_results)."""
    results, _ = read_json(job_dir / RESULTS)
    if results is None:
        return None  # absent, or unreadable: recomputed, as before
    try:
        new_config = config()
    except Exception as exc:  # noqa: BLE001
        log.debug("could not compose the job of %s ahead (%s); it checks its own folder", job_dir, exc)
        return None
    return other_point(results, new_config, overrides())


def task_config(config: DictConfig) -> dict[str, Any]:
    """The job's config as pneumolab's run_job sees it: everything but the hydra node, resolved."""
    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
    return OmegaConf.to_container(task, resolve=True)


def task_overrides(config: DictConfig) -> list[str]:
    return list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])


def planned_jobs(config: DictConfig) -> list[tuple[int, list[str]]]:
    """(job number, overrides) of every job the sweep will launch, as Hydra's basic sweeper lists them.

    Empty for other sweepers (Optuna and the like choose their points as they go)."""
    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + task_overrides(config)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return list(enumerate(overrides for batch in batches for overrides in batch))


class JobAhead:
    """One job of a sweep before it is launched: its folder and (composed only when needed) its config."""

    def __init__(self, master: DictConfig, num: int, overrides: list[str], sweep_dir: Path) -> None:
        self.master, self.num, self.overrides = master, num, list(overrides)
        subdir = OmegaConf.to_container(master.hydra.sweep, resolve=False).get("subdir")
        if subdir == "${hydra.job.num}":
            self.dir = sweep_dir / str(num)  # Hydra's default: no need to compose the job to know its folder
        else:
            self.dir = sweep_dir / str(OmegaConf.select(self.composed(), "hydra.sweep.subdir"))

    def composed(self) -> DictConfig:
        if not hasattr(self, "_composed"):
            from hydra.core.global_hydra import GlobalHydra

            composed = GlobalHydra.instance().config_loader().load_sweep_config(self.master, self.overrides)
            with open_dict(composed):
                composed.hydra.job.id = self.num
                composed.hydra.job.num = self.num
            self._composed = composed
        return self._composed

    def config(self) -> dict[str, Any]:
        return task_config(self.composed())


def sweep_refusal(sweep_dir: Path, conflicts: list[tuple[Path, list[str], str]], n_jobs: int) -> str:
    shown = [f"{job_dir.relative_to(sweep_dir).as_posix() if job_dir.is_relative_to(sweep_dir) else job_dir} "
             f"({difference})" for job_dir, _, difference in conflicts]
    more = f" and {len(shown) - SHOWN_POINTS} more" if len(shown) > SHOWN_POINTS else ""
    n = len(conflicts)
    return (f"The sweep folder {sweep_dir} already holds finished points of another configuration, and {n} of this "
            f"sweep's {n_jobs} jobs would train over them: {'; '.join(shown[:SHOWN_POINTS])}{more}. A sweep folder "
            "only grows: pneumolab never overwrites a finished point. Give this sweep a folder of its own (leave "
            "hydra.sweep.dir unset for a fresh one, or name another), or add its points to this folder beside the "
            f"old ones, in sub-folders of their own: {shlex.quote(BESIDE)} (pneumolab-summarize {sweep_dir} then "
            "compares them all). Nothing was written.")
