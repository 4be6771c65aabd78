"""Test-set uncertainty: a bootstrap over test images of the seed-mean metrics.

The seeds' t interval (`metrics.summarize`) says how much another set of training
seeds would move a number on these very test images. This interval says how much
another test set of the same size and class balance would move it: each resample
draws the normal and the pneumonia images again, with replacement and as many of
each as the test set holds (stratified, so sensitivity, specificity and AUC stay
defined), and every seed is scored on the same resample, as the seed mean is.
Percentile intervals of fractions stay inside [0, 1] by construction.

A class with few test images cannot carry such an interval: stratified resampling draws
its one image every time (a zero-width interval), and with a handful the draws take a
handful of values, far narrower than the true uncertainty. A metric that uses a class
with fewer than MIN_CLASS_IMAGES test images gets no interval (null) and `boot95_note`
says why; so does one the test set cannot define (a class missing). `boot95_note` is
null where the interval stands.

Resamples are multinomial counts per image, so one matrix product scores every
resample of every seed at once.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from pneumolab.record.metric_table import TEST_SET_KEYS
from pneumolab.config import CLASSES
from pneumolab.record.metrics import weighted_auc, weighted_brier, weighted_ece

RESAMPLES = 2000
SEED = 0  # fixed: the same results.json always shows the same interval
CHUNK = 250  # resamples scored together: bounds memory at CHUNK x test images per array
METRICS = TEST_SET_KEYS
# Fewer test images of a class than this, and the metrics using that class get no interval (see above).
MIN_CLASS_IMAGES = 10
# The classes (0 NORMAL, 1 PNEUMONIA) whose test images a metric's value depends on; every other metric uses both.
CLASSES_USED = {"test_sensitivity": (1,), "test_specificity": (0,)}


def bootstrap_seed_mean(labels: np.ndarray, scores: np.ndarray, predictions: np.ndarray,
                        resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, dict[str, float | str | None]]:
    """{metric: {"boot95_low", "boot95_high", "boot95_note"}} of the seed-mean metric, for each of METRICS.

    `scores` and `predictions` are (seeds, images): log-odds and 0/1 predictions of the
    seeds that did not diverge. No interval (None, and the note says why) where the test
    set has fewer than MIN_CLASS_IMAGES images of a class the metric uses, or none, or
    no seed is given.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    scores, predictions = np.atleast_2d(scores).astype(np.float64), np.atleast_2d(predictions)
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return {m: no_interval("no seed without divergence to score the test images") for m in METRICS}
    notes = {metric: few_images_note(y, CLASSES_USED.get(metric, (0, 1))) for metric in METRICS}
    if all(notes.values()):
        return {metric: no_interval(note) for metric, note in notes.items()}
    rng = np.random.default_rng(seed)
    chunks = [seed_mean_metrics(y, scores, predictions, resample_counts(y, rng, size))
              for size in chunk_sizes(resamples)]
    return {metric: no_interval(notes[metric]) if notes[metric] else
            interval(np.concatenate([chunk[metric] for chunk in chunks])) for metric in METRICS}


def few_images_note(y: np.ndarray, classes: tuple[int, ...]) -> str | None:
    """Why the test images of `classes` carry no bootstrap interval, or None when they do."""
    counts = {CLASSES[c]: int(np.sum(y == c)) for c in classes}
    if any(n == 0 for n in counts.values()):
        return f"no {' or '.join(name for name, n in counts.items() if n == 0)} test images: the metric is undefined"
    few = {name: n for name, n in counts.items() if n < MIN_CLASS_IMAGES}
    if few:
        listed = " and ".join(f"{n} {name}" for name, n in few.items())
        return (f"only {listed} test image{'s' if sum(few.values()) > 1 else ''} (fewer than {MIN_CLASS_IMAGES} "
                "per class): too few for a bootstrap interval")
    return None


def no_interval(note: str) -> dict[str, float | str | None]:
    return {"boot95_low": None, "boot95_high": None, "boot95_note": note}


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


def interval(draws: np.ndarray) -> dict[str, float | str | None]:
    """The central 95 % of the resampled values (percentile interval)."""
    if not np.all(np.isfinite(draws)):
        return no_interval("undefined on some resamples of the test images")
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"boot95_low": float(low), "boot95_high": float(high), "boot95_note": None}
