"""A job's outputs on disk: results.json, metrics.csv, and reading them back.

results.json is written last and atomically, so its presence means the job
finished; a sweep re-run treats a results.json with the same config as done.
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.version import __version__
from pneumolab.config import CLASSES
from pneumolab.files import atomic_open, atomic_write_text
from pneumolab.record.bootstrap import bootstrap_seed_mean
from pneumolab.record.metric_table import METRICS, SUMMARY_KEYS
from pneumolab.record.metrics import BINARY_METRICS, binary_metrics, ensemble_log_odds, summarize
from pneumolab.record.names import FAILURE, METRICS_CSV, RESULTS, WEIGHTS
from pneumolab.record.seed_run import HISTORY_KEYS, SeedRun

CSV_COLUMNS = ("seed", *HISTORY_KEYS)
# What summarize() gives each metric over seeds.
SUMMARY_STATS = ("mean", "std", "ci95_low", "ci95_high", "n")
DECISION_RULE = ("a seed predicts PNEUMONIA when its P(pneumonia) > 0.5 (log-odds > 0); the seed ensemble "
                 "predicts PNEUMONIA when the mean of the seeds' P(pneumonia) > 0.5")


def seed_entry(run: SeedRun, test_labels: np.ndarray) -> dict[str, Any]:
    entry: dict[str, Any] = {"seed": run.seed}
    if run.diverged:
        metrics = dict.fromkeys(BINARY_METRICS)
    else:
        metrics = binary_metrics(test_labels, run.test_scores, run.test_predictions)
    for key in BINARY_METRICS:
        entry[f"test_{key}"] = metrics[key]
    entry.update(val_acc=run.val_acc, val_balanced_acc=run.val_balanced_acc, val_auc=run.val_auc, epochs_run=run.epochs_run, best_epoch=run.best_epoch, diverged=run.diverged)
    return entry


def versions() -> dict[str, str]:
    import hydra
    import torch

    return {
        "pneumolab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "hydra": hydra.__version__,
    }


def build_results(config: dict, overrides: list[str], runs: list[SeedRun], test_labels: np.ndarray, data: dict[str, Any],
                  inference: dict[str, Any], wall_seconds: float, device: str) -> dict[str, Any]:
    """results.json, assembled here alone: `data` is what was trained on (source and summary), `inference`
    what applying the saved seeds needs (`inference_record`)."""
    per_seed = [seed_entry(run, test_labels) for run in runs]
    return {
        "config": config,
        "overrides": overrides,
        "seeds": [run.seed for run in runs],
        "per_seed": per_seed,
        "summary": build_summary(per_seed, runs, test_labels),
        "ensemble": build_ensemble(runs, test_labels),
        "n_diverged": sum(run.diverged for run in runs),
        "data": data["source"],
        "wall_seconds": round(wall_seconds, 3),
        "device": device,
        "versions": versions(),
        "data_summary": data["summary"],
        "inference": inference,
    }


def inference_record(model: dict, head: str, in_shape: tuple[int, ...], resize: str, stats: tuple[float, float],
                     runs: list[SeedRun]) -> dict[str, Any]:
    return {
        "weights": WEIGHTS,
        "model": model,
        "head": head,
        "input_shape": list(in_shape),
        "resize": resize,
        "pixel_mean": stats[0],
        "pixel_std": stats[1],
        "classes": list(CLASSES),
        "decision_rule": DECISION_RULE,
        "seeds": [run.seed for run in runs if run.weights is not None],
        "left_out": [{"seed": run.seed, "reason": "diverged"} for run in runs if run.weights is None],
    }


def build_summary(per_seed: list[dict[str, Any]], runs: list[SeedRun], test_labels: np.ndarray) -> dict[str, Any]:
    """Each metric of the metric table over seeds; the test metrics also get the bootstrap over test images."""
    summary = {key: summarize([entry[key] for entry in per_seed]) for key in SUMMARY_KEYS}
    scores, predictions = converged_outputs(runs)
    for key, interval in bootstrap_seed_mean(test_labels, scores, predictions).items():
        summary[key].update(interval)
    return summary


def build_ensemble(runs: list[SeedRun], test_labels: np.ndarray) -> dict[str, Any] | None:
    """The test metrics of the mean probability over the seeds that did not diverge (None if all did)."""
    scores, _ = converged_outputs(runs)
    if scores.shape[0] == 0:
        return None
    log_odds = ensemble_log_odds(scores)
    metrics = binary_metrics(test_labels, log_odds, log_odds > 0)
    return {"n_seeds": scores.shape[0], **{f"test_{key}": value for key, value in metrics.items()}}


def converged_outputs(runs: list[SeedRun]) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, images) test log-odds and predictions of the seeds that did not diverge."""
    kept = [run for run in runs if not run.diverged]
    if not kept:
        return np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64)
    return (np.stack([np.asarray(r.test_scores, dtype=np.float64) for r in kept]),
            np.stack([np.asarray(r.test_predictions) for r in kept]))


def write_results(job_dir: Path, results: dict[str, Any]) -> None:
    atomic_write_text(job_dir / RESULTS, json.dumps(results, indent=2, allow_nan=False) + "\n")


def write_failure(job_dir: Path, config: dict, overrides: list[str], error: str) -> None:
    failure = {"config": config, "overrides": overrides, "error": error}
    atomic_write_text(job_dir / FAILURE, json.dumps(failure, indent=2) + "\n")


def write_metrics_csv(job_dir: Path, runs: list[SeedRun]) -> None:
    with atomic_open(job_dir / METRICS_CSV, "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for run in runs:
            for i in range(len(run.history["epoch"])):
                writer.writerow([run.seed, *(run.history[k][i] for k in CSV_COLUMNS[1:])])


def read_json(path: Path) -> tuple[Any, str | None]:
    """(parsed content, None), or (None, why it cannot be read); (None, None) when absent."""
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    except ValueError as exc:  # truncated or not JSON at all (UnicodeDecodeError is one too)
        return None, f"is not valid JSON ({exc})"


def results_problem(results: Any) -> str | None:
    """What keeps `results` from being a results.json a summary can use; None when nothing does."""
    if not isinstance(results, dict):
        return f"holds a JSON {type(results).__name__}, not an object with per_seed and summary"
    per_seed, summary = results.get("per_seed"), results.get("summary")
    if not isinstance(per_seed, list) or not all(
            isinstance(e, dict) and {"seed", "test_acc", "diverged"} <= e.keys() for e in per_seed):
        return "has no per_seed list of seeds with seed, test_acc and diverged"
    if not isinstance(summary, dict):
        return "has no summary"
    for metric in METRICS:
        entry = summary.get(metric.key)
        if entry is None and not metric.always_recorded:
            continue
        if not isinstance(entry, dict) or not set(SUMMARY_STATS) <= entry.keys():
            return f"has no summary of {metric.key} with {', '.join(SUMMARY_STATS)}"
    if not isinstance(results.get("overrides", []), list) or not isinstance(results.get("config", {}), dict):
        return "has overrides or config of the wrong type"
    return None


def read_metrics_csv(path: Path) -> list[dict[str, list[float]]]:
    """metrics.csv back into one history per seed, the shape the curve plots take."""
    histories: dict[int, dict[str, list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            seed = int(row["seed"])
            history = histories.setdefault(seed, {"seed": seed, **{k: [] for k in CSV_COLUMNS[1:]}})
            for key in CSV_COLUMNS[1:]:
                history[key].append(float(row[key]))
    return list(histories.values())
