"""Experiment trackers: after training, a job's histories, results and figures go to TensorBoard or MLflow.

A tracker reads only what the job produced (its seed runs, the results dict and the files
in the job directory), so training knows nothing of it. A tracker that fails is reported
once as a warning; the job's own files are complete by then and its exit status stands.
"""

from __future__ import annotations

import http.client
import importlib
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumolab.errors import PneumolabError
from pneumolab.extras import require_extra

if TYPE_CHECKING:
    from pneumolab.record.seed_run import SeedRun

log = logging.getLogger("pneumolab")

# One plain GET of a tracking server's health page before training, no retry: MLflow's own client retries
# a server that does not answer for about four minutes, in every job of a sweep.
CONNECT_TIMEOUT_S = 5.0
# Statuses of a server that answers: 401 and 403 are an MLflow server behind a login, which the client handles.
ANSWERING = (200, 401, 403)

def check_tracker_installed(logger: Any) -> None:
    """Before training: a PneumolabError naming the pip command when the tracker's packages are missing."""
    if logger.tracker:
        require_extra(logger.name, f"logger={logger.name}")


def check_tracker_reachable(logger: Any) -> None:
    """Before training: a PneumolabError when the logger names a tracking server (logger=mlflow with an
    http(s) URI) that does not answer its health page within CONNECT_TIMEOUT_S (refused, silent, or not HTTP)."""
    url = logger.health_url()
    if url is None:
        return
    uri = str(logger.tracking_uri)
    problem = health_problem(url)
    if problem:
        raise PneumolabError(
            f"logger=mlflow cannot reach the tracking server logger.tracking_uri={uri}: {problem} (one try, "
            f"{CONNECT_TIMEOUT_S:g} s). Start it (mlflow server --host HOST --port PORT), correct the URI, or log "
            "to a local file instead with logger.tracking_uri=sqlite:///outputs/mlflow.db; nothing was trained."
        )


def health_problem(url: str) -> str | None:
    """Why `url` gives no answer a tracking server would give; None when it does."""
    try:
        with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except urllib.error.URLError as exc:  # refused, unknown host: the reason is the socket's error
        return f"no connection ({exc.reason})"
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except (http.client.HTTPException, OSError) as exc:  # connected, but what came back is no HTTP
        return f"the answer is not HTTP ({type(exc).__name__}: {exc})"
    return None if status in ANSWERING else f"{url} answered HTTP {status}"


def track_job(logger: Any, job_dir: Path, runs: list["SeedRun"], results: dict[str, Any]) -> None:
    """Send a finished job to the configured tracker; a failure is one warning, never an error."""
    if not logger.tracker:
        return
    from pneumolab.outputs.tracking.job import TrackedJob

    try:
        tracker = importlib.import_module(logger.tracker)
        tracker.record(logger, TrackedJob.collect(job_dir, runs, results))
    except Exception as exc:  # noqa: BLE001 - the job's own files are written; tracking must not fail it
        # The first line only: a database error goes on with the SQL it ran.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning("logger=%s could not record this job (%s: %s); its own files in %s are complete.",
                    logger.name, type(exc).__name__, reason, job_dir)
