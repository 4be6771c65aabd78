"""logger=mlflow: one experiment per sweep (or run directory), a parent run per job, a child run per seed.

Writes go through MlflowClient, not mlflow's module-level active run, so jobs that share
a process (the basic launcher runs a sweep's jobs one after another) never see each
other's runs.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, ContextManager, Iterator

from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from sqlalchemy.engine import make_url

from pneumolab.record.results import RESULTS
from pneumolab.outputs.tracking.job import EPOCH_METRICS, SeedHistory, TrackedJob
from pneumolab.record.names import FIGURES, WEIGHTS

# How long a job waits for the other jobs of a sweep to finish writing to the same SQLite file.
LOCK_TIMEOUT_S = 300.0
ARTIFACTS = "mlartifacts"


def record(logger: Any, job: TrackedJob) -> None:
    # The store's start-up notes (creating tables, migrations) are not news to a user.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    database = sqlite_file(logger.tracking_uri)
    with store_lock(database):
        client = MlflowClient(tracking_uri=logger.tracking_uri)
        artifacts = (database.parent / ARTIFACTS).resolve().as_uri() if database else None
        experiment = experiment_id(client, logger.experiment_name or default_experiment_name(job), artifacts)
        parent = client.create_run(experiment, run_name=job.name, tags={"job_dir": str(job.job_dir)}).info.run_id
        with failed_on_error(client, parent):
            log_parent(client, parent, job, logger.log_model)
            for seed in job.seeds:
                log_seed(client, experiment, parent, seed)
        client.set_terminated(parent)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (its folder created), else None."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = Path(make_url(tracking_uri).database)
    database.parent.mkdir(parents=True, exist_ok=True)
    return database


def store_lock(database: Path | None) -> ContextManager:
    """One job at a time writes a SQLite store: parallel jobs would race to create its tables,
    and a writer kept waiting past SQLite's busy timeout fails with 'database is locked'."""
    if database is None:
        return nullcontext()
    return FileLock(f"{database}.lock", timeout=LOCK_TIMEOUT_S)


def default_experiment_name(job: TrackedJob) -> str:
    """The sweep directory for a multirun job, else the job's own run directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return str(job.job_dir)


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # another job of the sweep created it first (a tracking server has no lock file)
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


@contextmanager
def failed_on_error(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Mark a run FAILED when logging into it raises, so the UI does not show it running forever."""
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the store may be what failed; the original error is the one to report
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise


def log_parent(client: MlflowClient, run_id: str, job: TrackedJob, log_model: bool) -> None:
    now = timestamp_ms()
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in job.metrics.items()],
                     params=[Param(k, str(v)) for k, v in job.params.items()])
    for path in job.files(FIGURES + (RESULTS,) + ((WEIGHTS,) if log_model else ())):
        client.log_artifact(run_id, str(path))


def log_seed(client: MlflowClient, experiment: str, parent: str, seed: SeedHistory) -> None:
    run_id = client.create_run(experiment, run_name=f"seed {seed.seed}", tags={MLFLOW_PARENT_RUN_ID: parent}).info.run_id
    with failed_on_error(client, run_id):
        now = timestamp_ms()
        epochs = [Metric(name, float(seed.history[name][i]), now, int(epoch))
                  for i, epoch in enumerate(seed.history["epoch"]) for name in EPOCH_METRICS]
        final = [Metric(name, value, now, 0) for name, value in seed.metrics.items()]
        client.log_batch(run_id, metrics=epochs + final, params=[Param("seed", str(seed.seed))])
    client.set_terminated(run_id)


def timestamp_ms() -> int:
    return int(time.time() * 1000)
