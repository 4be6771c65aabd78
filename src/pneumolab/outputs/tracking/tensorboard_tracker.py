"""logger=tensorboard: event files under <job dir>/tensorboard, read by `tensorboard --logdir`.

seed_<k>/ is one run per seed (the per-epoch curves); job/ holds the summary metrics, the
figures and the job's config as an HParams session, so the HParams tab has one row per sweep
point. No experiment summary is written: TensorBoard then builds the HParams table from every
session it finds, where one job's experiment summary would hide the other points' settings.
"""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from tensorboard.plugins.hparams import summary_v2 as hparams_v2
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from pneumolab.outputs.tracking.job import EPOCH_METRICS, SeedHistory, TrackedJob
from pneumolab.record.names import FIGURES

FOLDER = "tensorboard"
JOB_RUN = "job"


def record(logger: Any, job: TrackedJob) -> None:
    root = job.job_dir / FOLDER
    # A rerun of this point (a changed config) replaces what the earlier run logged here.
    shutil.rmtree(root, ignore_errors=True)
    with quiet_writer_threads():
        for seed in job.seeds:
            write_seed(root / f"seed_{seed.seed}", seed)
        write_job(root / JOB_RUN, job)


@contextmanager
def quiet_writer_threads() -> Iterator[None]:
    """Keep TensorBoard's writer thread from printing a traceback of its own when a write fails (a full
    disk, a file too large): the thread keeps the error, the next write or close raises it here, and
    track_job reports it as its one warning."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def write_seed(run_dir: Path, seed: SeedHistory) -> None:
    with SummaryWriter(str(run_dir)) as writer:
        for i, epoch in enumerate(seed.history["epoch"]):
            for name in EPOCH_METRICS:
                writer.add_scalar(name, seed.history[name][i], epoch)


def write_job(run_dir: Path, job: TrackedJob) -> None:
    with SummaryWriter(str(run_dir)) as writer:
        writer.file_writer.add_summary(hparams_v2.hparams_pb(job.params, trial_id=job.name))
        for name, value in job.metrics.items():
            writer.add_scalar(name, value, 0)
        for path in job.files(FIGURES):
            with Image.open(path) as image:
                writer.add_image(path.stem, np.asarray(image.convert("RGB")), 0, dataformats="HWC")
        # TensorBoard's own session-end writer needs TensorFlow; torch's builds the same record.
        _, _, session_end = hparams_summaries({}, {})
        writer.file_writer.add_summary(session_end)
