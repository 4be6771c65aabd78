"""Experiment trackers: after training, a job's histories, results and figures go to TensorBoard or MLflow.

A tracker reads only what the job produced (its seed runs, the results dict and the files
in the job directory), so training knows nothing of it. A tracker that fails is reported
once as a warning; the job's own files are complete by then and its exit status stands.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumolab.extras import require_extra

if TYPE_CHECKING:
    from pneumolab.record.seed_run import SeedRun

log = logging.getLogger("pneumolab")

# logger.name -> the module whose record(logger, job) sends a job to that tracker.
TRACKERS = {
    "tensorboard": "pneumolab.outputs.tracking.tensorboard_tracker",
    "mlflow": "pneumolab.outputs.tracking.mlflow_tracker",
}


def check_tracker_installed(logger: Any) -> None:
    """Before training: a PneumolabError naming the pip command when the tracker's packages are missing."""
    if logger.name in TRACKERS:
        require_extra(logger.name, f"logger={logger.name}")


def track_job(logger: Any, job_dir: Path, runs: list["SeedRun"], results: dict[str, Any]) -> None:
    """Send a finished job to the configured tracker; a failure is one warning, never an error."""
    if logger.name not in TRACKERS:
        return
    from pneumolab.outputs.tracking.job import TrackedJob

    try:
        tracker = importlib.import_module(TRACKERS[logger.name])
        tracker.record(logger, TrackedJob.collect(job_dir, runs, results))
    except Exception as exc:  # noqa: BLE001 - the job's own files are written; tracking must not fail it
        # The first line only: a database error goes on with the SQL it ran.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning("logger=%s could not record this job (%s: %s); its own files in %s are complete.",
                    logger.name, type(exc).__name__, reason, job_dir)
