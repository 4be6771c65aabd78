"""What every tracker logs of a job, in tracker-neutral form: names, params, metrics, figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pneumolab.record.results import CSV_COLUMNS

if TYPE_CHECKING:
    from pneumolab.record.seed_run import SeedRun

# Per seed and epoch: the columns of metrics.csv after seed and epoch.
EPOCH_METRICS = tuple(c for c in CSV_COLUMNS if c not in ("seed", "epoch"))
# Config keys that say how a job is recorded, not what it trains.
NOT_PARAMS = ("logger",)


@dataclass(frozen=True)
class SeedHistory:
    seed: int
    history: dict[str, list]  # epoch and EPOCH_METRICS, one entry per epoch
    metrics: dict[str, float]  # this seed's test and validation numbers from results.json


@dataclass(frozen=True)
class TrackedJob:
    job_dir: Path
    name: str  # the job's overrides, or its directory name when it has none
    params: dict[str, bool | int | float | str]  # the resolved config, flattened to dotted keys
    metrics: dict[str, float]  # summary and ensemble metrics, e.g. test_acc/mean, ensemble/test_auc
    seeds: list[SeedHistory]

    @classmethod
    def collect(cls, job_dir: Path, runs: list["SeedRun"], results: dict[str, Any]) -> "TrackedJob":
        config = {k: v for k, v in results["config"].items() if k not in NOT_PARAMS}
        # The seed counts (test_acc/n, ...) are left out: n_diverged says what they would.
        metrics = {k: v for k, v in numeric_leaves(results["summary"]) if not k.endswith("/n")}
        metrics.update(numeric_leaves(results.get("ensemble") or {}, "ensemble/"))
        metrics["n_diverged"] = float(results["n_diverged"])
        seeds = [SeedHistory(run.seed, run.history, seed_metrics(entry)) for run, entry in zip(runs, results["per_seed"])]
        return cls(job_dir, " ".join(results["overrides"]) or job_dir.name, dict(flat_params(config)), metrics, seeds)

    def files(self, names: tuple[str, ...]) -> list[Path]:
        """The job's files of those names that exist (a job whose every seed diverged has no weights)."""
        return [self.job_dir / name for name in names if (self.job_dir / name).is_file()]


def seed_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """A seed's numbers from results.json; its val_acc is left out, as the per-epoch val_acc curve holds it."""
    return {k: v for k, v in numeric_leaves(entry) if k not in ("seed", *EPOCH_METRICS)}


def flat_params(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, bool | int | float | str]]:
    """Dotted keys and scalar values; a list or null becomes its text, as a user would type it."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat_params(value, f"{prefix}{key}.")
        elif isinstance(value, (bool, int, float, str)):
            yield f"{prefix}{key}", value
        else:
            yield f"{prefix}{key}", "null" if value is None else str(value)


def numeric_leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Slash-joined keys of the numbers in a nested dict; lists (a confusion matrix) and nulls are left out."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from numeric_leaves(value, f"{prefix}{key}/")
        elif isinstance(value, (bool, int, float)):
            yield f"{prefix}{key}", float(value)
