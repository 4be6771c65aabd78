"""Test-set metrics for the binary task and the statistics that compare seeds and settings.

Label 1 is pneumonia, the positive class: sensitivity is the pneumonia recall,
specificity the normal recall. Everything returned is plain Python (floats, ints,
None) so it goes straight into `results.json`; None marks a value that the data
cannot define, such as an AUC on a test set holding one class.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# scipy.special's Student-t functions, not scipy.stats: the latter takes a second to import in
# every job process, and these two are all the statistics here need.
from scipy.special import stdtr, stdtrit


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold_pred: np.ndarray) -> dict:
    """Accuracy, AUC, sensitivity, specificity, F1 and the confusion matrix [[tn, fp], [fn, tp]].

    `scores` are the predicted probabilities of pneumonia (only their order matters, for
    the AUC); `threshold_pred` are the 0/1 predictions the head actually makes.
    """
    y = _as_labels(labels, "labels")
    pred = _as_labels(threshold_pred, "threshold_pred")
    s = np.asarray(scores, dtype=float).ravel()
    if not (y.size == pred.size == s.size):
        raise ValueError(f"labels, scores and threshold_pred differ in length: {y.size}, {s.size}, {pred.size}")
    if y.size == 0:
        raise ValueError("binary_metrics needs at least one example")

    tp = int(np.sum((y == 1) & (pred == 1)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    return {
        "acc": (tp + tn) / y.size,
        "auc": _rank_auc(y, s),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        # F1 = 2tp / (2tp + fp + fn); with tp = 0 it is 0 by the limit, also when nothing was predicted positive.
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "confusion": [[tn, fp], [fn, tp]],
    }


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Tied scores move the curve diagonally in one step, so the trapezoid area under
    it equals the tie-averaged AUC of `binary_metrics`. Undefined (ValueError) when
    `binary_metrics` gives no AUC: one class only, or non-finite scores.
    """
    y = _as_labels(labels, "labels")
    s = np.asarray(scores, dtype=float).ravel()
    if y.size != s.size:
        raise ValueError(f"labels and scores differ in length: {y.size}, {s.size}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes among the labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity; a diverged model has no ROC curve")

    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # One point per distinct threshold: the last position of each run of equal scores.
    last_of_run = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.append(last_of_run, y.size - 1)
    tps = np.cumsum(y_sorted)[ends]
    fps = ends + 1 - tps
    fpr = np.concatenate(([0.0], fps / n_neg))
    tpr = np.concatenate(([0.0], tps / n_pos))
    return fpr, tpr


def summarize(values: Sequence[float | None]) -> dict:
    """Mean, sample std and Student-t 95 % CI of the mean over seeds, ignoring None, NaN and inf.

    With one value the spread is unknown: std is reported as 0.0 and the CI collapses
    onto the mean, and `n` tells the reader how little that means.
    """
    x = _finite(values)
    n = x.size
    if n == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "ci95_low": mean, "ci95_high": mean, "n": 1}
    std = float(x.std(ddof=1))
    half_width = float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95_low": mean - half_width, "ci95_high": mean + half_width, "n": n}


def welch_ttest(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """Welch's two-sided t-test of mean(a) == mean(b) over seeds, ignoring None, NaN and inf.

    `diff` is mean(a) - mean(b). With fewer than two values on a side the test has
    no variance estimate: `t` and `p` are None and nothing is called significant.
    """
    xa, xb = _finite(a), _finite(b)
    diff = float(xa.mean() - xb.mean()) if xa.size and xb.size else None
    if xa.size < 2 or xb.size < 2:
        return {"diff": diff, "t": None, "p": None, "significant": False}
    if np.ptp(xa) == 0 and np.ptp(xb) == 0:
        # Every run on each side gave the same number (e.g. fully deterministic training),
        # so the standard error is 0 and t is 0/0 or ±inf, which JSON cannot hold: t is None.
        # Equal values then show no difference at all (p = 1); unequal ones differ beyond
        # any run-to-run noise the data shows (p = 0). The values themselves are compared,
        # since averaging n copies of 0.1 need not give exactly 0.1.
        diff = float(xa[0] - xb[0])
        p = 1.0 if diff == 0 else 0.0
        return {"diff": diff, "t": None, "p": p, "significant": p < 0.05}
    se2_a, se2_b = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    t = diff / math.sqrt(se2_a + se2_b)
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / (xa.size - 1) + se2_b**2 / (xb.size - 1))  # Welch–Satterthwaite
    p = float(2 * stdtr(df, -abs(t)))
    return {"diff": diff, "t": float(t), "p": p, "significant": p < 0.05}


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Mann–Whitney AUC: P(score of a random positive > that of a random negative), ties count 1/2."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    # A NaN score (diverged model) ranks nothing, and one class leaves no pairs to compare.
    if n_pos == 0 or n_neg == 0 or not np.all(np.isfinite(s)):
        return None
    # 1-based ranks, tied scores sharing their average rank: each tied pair counts half a win.
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[group]
    u_pos = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u_pos / (n_pos * n_neg))


def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int64)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]
