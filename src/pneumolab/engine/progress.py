"""One progress line per job, covering every seed, from every seed process.

Seed processes other than the first send their epochs through a queue; the first
process reads it whenever its own seeds finish an epoch (they keep pace with each
other), so one line shows epoch, mean train loss, mean and range of validation
accuracy, epoch time and the estimated time left, for all seeds of the job.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import sys
import time

log = logging.getLogger("pneumolab")

# Off a terminal, log every this many epochs (and the last).
LOG_EVERY = 5


class EpochReport:
    """The job's line: updated in place on a terminal, a log line every few epochs otherwise."""

    def __init__(self, seeds: list[int], job_tag: str = "") -> None:
        self.tty = sys.stderr.isatty()
        self.tag = f"[{job_tag}] " if job_tag else ""
        self.latest: dict[int, tuple[int, float, float]] = {}  # seed -> (epoch, train loss, val acc)
        self.n_seeds = len(seeds)
        self.start = time.perf_counter()
        self.inbox: multiprocessing.queues.Queue | None = None

    def relay(self):
        """A callback for a forked seed process: sends its epochs to this report."""
        if self.inbox is None:
            self.inbox = multiprocessing.get_context("fork").Queue()
        inbox = self.inbox

        def send(epoch: int, epochs: int, seeds: list[int], values: dict[str, list[float]]) -> None:
            inbox.put((epoch, epochs, seeds, values))

        return send

    def __call__(self, epoch: int, epochs: int, seeds: list[int], values: dict[str, list[float]]) -> None:
        self.note(seeds, values)
        self.read_inbox()
        if self.tty:
            print(f"\r{self.line(epoch, epochs)}", end="", file=sys.stderr, flush=True)
        elif epoch % LOG_EVERY == 0 and epoch < epochs:
            log.info("%s", self.line(epoch, epochs))

    def finish(self, runs) -> None:
        """The job's last line, from every seed's history once all processes are done."""
        for run in runs:
            rows = [i for i, loss in enumerate(run.history["train_loss"]) if math.isfinite(loss)]
            last = rows[-1] if rows else -1
            self.latest[run.seed] = (run.epochs_run, run.history["train_loss"][last] if rows else math.nan,
                                     run.history["val_acc"][last] if rows else math.nan)
        epochs = max(len(run.history["epoch"]) for run in runs)
        if self.tty:
            print(f"\r{self.line(epochs, epochs)}", file=sys.stderr, flush=True)
        else:
            log.info("%s", self.line(epochs, epochs))

    def note(self, seeds: list[int], values: dict[str, list[float]]) -> None:
        for s, seed in enumerate(seeds):
            self.latest[seed] = (int(values["epoch"][s]), values["train_loss"][s], values["val_acc"][s])

    def read_inbox(self) -> None:
        while self.inbox is not None:
            try:
                _, _, seeds, values = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.note(seeds, values)

    def line(self, epoch: int, epochs: int) -> str:
        losses = [v[1] for v in self.latest.values() if math.isfinite(v[1])]
        accs = [v[2] for v in self.latest.values() if math.isfinite(v[2])]
        per_epoch = (time.perf_counter() - self.start) / epoch
        text = f"{self.tag}epoch {epoch}/{epochs} | {len(self.latest)}/{self.n_seeds} seeds"
        if losses:
            text += f" | train loss {sum(losses) / len(losses):.3f}"
        if accs:
            # Percent with one decimal, as every number a person reads; the range is over seeds.
            text += f" | val acc {100 * sum(accs) / len(accs):.1f} % ({100 * min(accs):.1f}-{100 * max(accs):.1f})"
        return text + f" | {per_epoch:.2f} s/epoch, ETA {per_epoch * (epochs - epoch):.0f} s"
