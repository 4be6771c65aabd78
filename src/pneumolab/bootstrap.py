"""Test-set uncertainty: a bootstrap over test images of the seed-mean metrics.

The seeds' t interval (`metrics.summarize`) says how much another set of training
seeds would move a number on these very test images. This interval says how much
another test set of the same size and class balance would move it: each resample
draws the normal and the pneumonia images again, with replacement and as many of
each as the test set holds (stratified, so sensitivity, specificity and AUC stay
defined), and every seed is scored on the same resample, as the seed mean is.
Percentile intervals of fractions stay inside [0, 1] by construction.

Resamples are multinomial counts per image, so one matrix product scores every
resample of every seed at once.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from pneumolab.metric_table import TEST_SET_KEYS
from pneumolab.metrics import weighted_auc, weighted_brier, weighted_ece

RESAMPLES = 2000
SEED = 0  # fixed: the same results.json always shows the same interval
CHUNK = 250  # resamples scored together: bounds memory at CHUNK x test images per array
METRICS = TEST_SET_KEYS


def bootstrap_seed_mean(labels: np.ndarray, scores: np.ndarray, predictions: np.ndarray,
                        resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, dict[str, float | None]]:
    """{metric: {"boot95_low", "boot95_high"}} of the seed-mean metric, for each of METRICS.

    `scores` and `predictions` are (seeds, images): log-odds and 0/1 predictions of the
    seeds that did not diverge. None where the test set lacks a class the metric needs,
    or no seed is given.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    scores, predictions = np.atleast_2d(scores).astype(np.float64), np.atleast_2d(predictions)
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return {m: {"boot95_low": None, "boot95_high": None} for m in METRICS}
    rng = np.random.default_rng(seed)
    chunks = [seed_mean_metrics(y, scores, predictions, resample_counts(y, rng, size))
              for size in chunk_sizes(resamples)]
    return {metric: interval(np.concatenate([chunk[metric] for chunk in chunks])) for metric in METRICS}


def chunk_sizes(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


def resample_counts(y: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, images) counts: how often each image is drawn, class by class."""
    counts = np.zeros((size, y.size))
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        if members.size:
            counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size), size=size)
    return counts


def seed_mean_metrics(y: np.ndarray, scores: np.ndarray, predictions: np.ndarray,
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: (resamples,)}: each of METRICS on each resample, averaged over seeds."""
    correct = (predictions == y).astype(np.float64)  # (seeds, images)
    p = expit(scores)
    pos, neg = y == 1, y == 0
    with np.errstate(invalid="ignore", divide="ignore"):  # a missing class gives NaN, reported as None
        per_seed = {  # (resamples, seeds) each
            "test_acc": counts @ correct.T / counts.sum(axis=1, keepdims=True),
            "test_sensitivity": counts[:, pos] @ correct[:, pos].T / counts[:, pos].sum(axis=1, keepdims=True),
            "test_specificity": counts[:, neg] @ correct[:, neg].T / counts[:, neg].sum(axis=1, keepdims=True),
            "test_auc": np.stack([weighted_auc(y, s, counts) for s in scores], axis=1),
            "test_ece": np.stack([weighted_ece(y, q, counts) for q in p], axis=1),
            "test_brier": np.stack([weighted_brier(y, q, counts) for q in p], axis=1),
        }
    per_seed["test_balanced_acc"] = (per_seed["test_sensitivity"] + per_seed["test_specificity"]) / 2
    return {metric: per_seed[metric].mean(axis=1) for metric in METRICS}


def interval(draws: np.ndarray) -> dict[str, float | None]:
    """The central 95 % of the resampled values (percentile interval)."""
    if not np.all(np.isfinite(draws)):
        return {"boot95_low": None, "boot95_high": None}
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"boot95_low": float(low), "boot95_high": float(high)}
