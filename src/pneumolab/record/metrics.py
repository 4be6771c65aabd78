"""Test-set metrics for the binary task and the statistics that compare seeds and settings.

Label 1 is pneumonia, the positive class: sensitivity is the pneumonia recall,
specificity the normal recall. Everything returned is plain Python (floats, ints,
None) so it goes straight into `results.json`; None marks a value that the data
cannot define, such as an AUC on a test set holding one class.

Scores are pneumonia log-odds. AUC and ROC only use their order (any score in the same
order gives the same), which float32 probabilities lose: sigmoid(z) rounds to exactly 1.0
for z above about 17, and saturated scores then count as ties. The calibration metrics
(ECE, Brier score) judge P(pneumonia) = sigmoid(log-odds) itself, taken in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

# scipy.special's (noncentral) Student-t functions, not scipy.stats: the latter takes a second to
# import in every job process, and these are all the statistics here need.
from scipy.special import expit, log_expit, logsumexp, nctdtrinc, stdtr, stdtrit

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 10_000  # seeds_needed beyond this is reported as None: no practical number of seeds
NO_POWER_LINE = {"std": None, "min_detectable": None, "seeds_needed": None}  # fewer than two seeds
ECE_BINS = 15  # equal-width bins of P(pneumonia), as sklearn's calibration_curve(strategy="uniform") makes them
# What binary_metrics returns; results.json names each `test_<key>`.
BINARY_METRICS = ("acc", "auc", "sensitivity", "specificity", "f1", "confusion", "balanced_acc", "ece", "brier")


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold_pred: np.ndarray) -> dict:
    """BINARY_METRICS: accuracy, AUC, sensitivity, specificity, F1, the confusion matrix
    [[tn, fp], [fn, tp]], balanced accuracy, ECE and Brier score.

    `scores` are the pneumonia log-odds (pass log-odds, not float32 probabilities, see
    the module docstring); `threshold_pred` are the 0/1 predictions the head actually makes.
    """
    y = _as_labels(labels, "labels")
    pred = _as_labels(threshold_pred, "threshold_pred")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not (y.size == pred.size == s.size):
        raise ValueError(f"labels, scores and threshold_pred differ in length: {y.size}, {s.size}, {pred.size}")
    if y.size == 0:
        raise ValueError("binary_metrics needs at least one example")

    tp = int(np.sum((y == 1) & (pred == 1)))
    tn = int(np.sum((y == 0) & (pred == 0)))
    fp = int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    return {
        "acc": (tp + tn) / y.size,
        "auc": _rank_auc(y, s),
        "sensitivity": sensitivity,
        "specificity": specificity,
        # F1 = 2tp / (2tp + fp + fn); with tp = 0 it is 0 by the limit, also when nothing was predicted positive.
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "confusion": [[tn, fp], [fn, tp]],
        # The mean of the two recalls: calling every image pneumonia scores 0.5 whatever the class
        # balance, where its accuracy is the pneumonia share (62.5 % of the Kaggle test split).
        "balanced_acc": (sensitivity + specificity) / 2 if tp + fn and tn + fp else None,
        **calibration_metrics(y, s),
    }


def calibration_metrics(y: np.ndarray, log_odds: np.ndarray) -> dict:
    """ECE and Brier score of P(pneumonia); None for non-finite log-odds (a diverged model)."""
    if not np.all(np.isfinite(log_odds)):
        return {"ece": None, "brier": None}
    p, once = expit(log_odds), np.ones((1, y.size))
    return {"ece": float(weighted_ece(y, p, once)[0]), "brier": float(weighted_brier(y, p, once)[0])}


def calibration_bin(p: np.ndarray) -> np.ndarray:
    """Each probability's bin k, for (k/ECE_BINS, (k+1)/ECE_BINS] (the first holding 0 too), as sklearn's."""
    return np.searchsorted(np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1], p)


def bin_totals(p: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, ECE_BINS): per bin of `p`, the sum of `values` times each row of `weights` (R, N)."""
    weighted = weights * values
    rows = weighted.shape[0]
    # One bincount over (row, bin) pairs, as sklearn bins: a matrix product with a one-hot (N, bins)
    # matrix starts BLAS threads, which on a busy machine cost several times the sums themselves.
    pair = np.arange(rows)[:, None] * ECE_BINS + calibration_bin(p)
    return np.bincount(pair.ravel(), weights=weighted.ravel(), minlength=rows * ECE_BINS).reshape(rows, ECE_BINS)


def weighted_ece(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Expected calibration error of `p` under each row of `weights` (R, N): how often an image counts.

    The bin-count-weighted mean of |fraction pneumonia - mean p| over the bins, which is the
    sum over bins of |sum of (y - p)| over the total weight; all-ones weights give the plain ECE.
    """
    return np.abs(bin_totals(p, y - p, weights)).sum(axis=1) / weights.sum(axis=1)


def weighted_brier(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Brier score (mean squared error of `p` against the 0/1 labels) under each row of `weights` (R, N)."""
    return weights @ (p - y) ** 2 / weights.sum(axis=1)


def reliability_curve(labels: np.ndarray, log_odds: np.ndarray) -> dict[str, np.ndarray]:
    """The reliability diagram's points: per non-empty bin, its index, mean P(pneumonia), fraction
    pneumonia and images.

    `mean_p` and `fraction` are sklearn's calibration_curve(strategy="uniform", n_bins=ECE_BINS).
    """
    y = _as_labels(labels, "labels").astype(np.float64)
    p = expit(np.asarray(log_odds, dtype=np.float64).ravel())
    once = np.ones((1, y.size))
    count, p_sum, y_sum = (bin_totals(p, values, once)[0] for values in (1.0, p, y))
    kept = count > 0
    return {"bin": np.flatnonzero(kept), "mean_p": p_sum[kept] / count[kept], "fraction": y_sum[kept] / count[kept],
            "count": count[kept].astype(np.int64)}


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Tied scores move the curve diagonally in one step, so the trapezoid area under
    it equals the tie-averaged AUC of `binary_metrics`. Undefined (ValueError) when
    `binary_metrics` gives no AUC: one class only, or non-finite scores.
    """
    y = _as_labels(labels, "labels")
    s = np.asarray(scores, dtype=np.float64).ravel()
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


def ensemble_log_odds(log_odds: np.ndarray) -> np.ndarray:
    """Log-odds of the mean pneumonia probability over seeds, from (seeds, images) log-odds.

    log(mean p) - log(mean (1 - p)), each a log-sum-exp of log-sigmoids, so the order of
    images whose probabilities all round to 1.0 survives; > 0 exactly when mean p > 0.5.
    """
    z = np.atleast_2d(np.asarray(log_odds, dtype=np.float64))
    return logsumexp(log_expit(z), axis=0) - logsumexp(log_expit(-z), axis=0)


def summarize(values: Sequence[float | None], bounds: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    """Mean, sample std and Student-t 95 % CI of the mean over seeds, ignoring None, NaN and inf.

    The values are fractions by default: a t interval of few seeds can reach past 0 or 1,
    which no fraction can, so it is clipped to `bounds` and `ci95_clipped` says so
    (bounds=None leaves it as it is). With one value the spread is unknown, not zero:
    std and the CI are None (null in results.json, "–" where shown), never 0.0 or an
    interval of width zero; `n` says why.
    """
    x = _finite(values)
    n = x.size
    if n < 2:
        return {"mean": float(x[0]) if n else None, "std": None, "ci95_low": None, "ci95_high": None, "n": n,
                "ci95_clipped": False}
    mean = float(x.mean())
    std = float(x.std(ddof=1))
    half_width = float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)
    low, high = mean - half_width, mean + half_width
    clipped = bounds is not None and (low < bounds[0] or high > bounds[1])
    if clipped:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": std, "ci95_low": low, "ci95_high": high, "n": n, "ci95_clipped": clipped}


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


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of p-values tested together (None stays None).

    It keeps the chance of any false "significant" among all the tests at ALPHA,
    whatever their dependence, and is never less powerful than Bonferroni.
    """
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))  # monotone: a smaller p never adjusts higher
        adjusted[i] = running
    return adjusted


def power_line(a: Sequence[float | None], b: Sequence[float | None]) -> dict:
    """What two groups of seeds can detect, from their pooled spread (two-sided, ALPHA, POWER).

    `min_detectable` is the smallest true difference of means the seeds at hand find
    with POWER; `seeds_needed` the seeds per side that find the observed difference
    with POWER (None when no practical number does, or nothing was observed); `std`
    is the spread both use, here the pooled std. All None with fewer than two seeds on a side.
    """
    xa, xb = _finite(a), _finite(b)
    if xa.size < 2 or xb.size < 2:
        return dict(NO_POWER_LINE)
    df = xa.size + xb.size - 2
    pooled = math.sqrt(((xa.size - 1) * xa.var(ddof=1) + (xb.size - 1) * xb.var(ddof=1)) / df)
    min_detectable = _noncentrality(df) * pooled * math.sqrt(1 / xa.size + 1 / xb.size)
    return {"std": pooled, "min_detectable": float(min_detectable),
            "seeds_needed": _seeds_needed(pooled, abs(float(xa.mean() - xb.mean())), paired=False)}


def compare_seeds(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> tuple[dict, dict]:
    """(test, power line) of two settings' per-seed values, each {seed: value}.

    Paired (`paired_ttest`) on the seeds both sides scored, when there are two or more: a seed
    draws the same initial weights, batch order and holdout on both sides, so its two runs are
    no independent samples, and a sweep of several seed counts shares its first seeds. Seeds
    only one side ran are left out of a paired test (`left_out` counts them). Without two
    shared seeds, Welch's test over every seed. `kind` says which ran; `seeds`, on which seeds.
    """
    shared = [s for s in a if s in b and _finite([a[s], b[s]]).size == 2]
    if len(shared) >= 2:
        xa, xb = [a[s] for s in shared], [b[s] for s in shared]
        left_out = _finite(a.values()).size + _finite(b.values()).size - 2 * len(shared)
        return ({**paired_ttest(xa, xb), "kind": "paired", "seeds": shared, "left_out": left_out},
                paired_power_line(xa, xb))
    xa, xb = list(a.values()), list(b.values())
    return {**welch_ttest(xa, xb), "kind": "Welch", "seeds": [], "left_out": 0}, power_line(xa, xb)


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paired two-sided t-test of mean(a - b) == 0 (scipy.stats.ttest_rel), `a[i]` and `b[i]` one seed's
    values of two settings; pairs with a None, NaN or inf on either side are left out.

    `diff` is the mean difference; with fewer than two pairs `t` and `p` are None. Differences
    that are all equal have no variance: as in `welch_ttest`, p is 1 when they are 0, else 0.
    """
    d = _pair_differences(a, b)
    diff = float(d.mean()) if d.size else None
    if d.size < 2:
        return {"diff": diff, "t": None, "p": None, "significant": False}
    if np.ptp(d) == 0:
        p = 1.0 if d[0] == 0 else 0.0
        return {"diff": float(d[0]), "t": None, "p": p, "significant": p < ALPHA}
    t = diff / (d.std(ddof=1) / math.sqrt(d.size))
    p = float(2 * stdtr(d.size - 1, -abs(t)))
    return {"diff": diff, "t": float(t), "p": p, "significant": p < ALPHA}


def paired_power_line(a: Sequence[float], b: Sequence[float]) -> dict:
    """`power_line` of a paired test: from the std of the per-seed differences, with `seeds_needed`
    counting seeds run on both sides (pairs). All None with fewer than two pairs."""
    d = _pair_differences(a, b)
    if d.size < 2:
        return dict(NO_POWER_LINE)
    std = float(d.std(ddof=1))
    return {"std": std, "min_detectable": float(_noncentrality(d.size - 1) * std / math.sqrt(d.size)),
            "seeds_needed": _seeds_needed(std, abs(float(d.mean())), paired=True)}



def _seeds_needed(std: float, diff: float, paired: bool) -> int | None:
    """The fewest seeds per side (pairs, when paired) that find a true difference `diff` with POWER."""
    n, noncentrality, scale = _seeds_grid(paired)
    enough = np.flatnonzero(noncentrality * std * scale <= diff) if diff > 0 else []
    return int(n[enough[0]]) if len(enough) else None


def _pair_differences(a: Sequence[float | None], b: Sequence[float | None]) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in a], dtype=float)
    y = np.array([np.nan if v is None else v for v in b], dtype=float)
    d = x - y
    return d[np.isfinite(d)]


# The noncentrality depends on the seed counts alone, never on the data, and each value is an
# iterative root search: computed once per process (per degrees of freedom, and once for the grid of
# seeds_needed), not once per comparison. A 30-point sweep's 435 power lines spent 17-77 s on it.
@functools.cache
def _noncentrality(df: int) -> float:
    """The noncentrality at which a two-sided ALPHA t-test of `df` degrees of freedom rejects with POWER:
    the smallest detectable difference is this many standard errors. Exact from the noncentral t, leaving
    out only the chance of rejecting in the wrong tail, below 1e-3 at 80 % power."""
    return float(nctdtrinc(df, 1 - POWER, stdtrit(df, 1 - ALPHA / 2)))


@functools.cache
def _seeds_grid(paired: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, noncentrality, standard error per unit std) for n = 2..MAX_SEEDS seeds per side, read-only:
    a two-sample test of n and n seeds (df 2n - 2, sqrt(2 / n)), or a paired one of n pairs (df n - 1, sqrt(1 / n))."""
    n = np.arange(2, MAX_SEEDS + 1)
    df = n - 1 if paired else 2 * n - 2
    grid = (n, nctdtrinc(df, 1 - POWER, stdtrit(df, 1 - ALPHA / 2)), np.sqrt((1 if paired else 2) / n))
    for array in grid:
        array.setflags(write=False)
    return grid


def _rank_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Mann–Whitney AUC: P(score of a random positive > that of a random negative), ties count 1/2."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    # A NaN score (diverged model) ranks nothing, and one class leaves no pairs to compare.
    if n_pos == 0 or n_neg == 0 or not np.all(np.isfinite(s)):
        return None
    return float(weighted_auc(y, s, np.ones((1, y.size)))[0])


def weighted_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of `s` under each row of `weights` (R, N): how often an image counts.

    Row r's AUC is the weighted share of (positive, negative) pairs the scores order
    correctly, ties counting half; all-ones weights give the plain AUC, bootstrap
    resample counts the AUC of each resample, all rows in one pass.
    """
    order = np.argsort(s, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(s[order]) != 0])  # first image of each run of equal scores
    w, positive = weights[:, order], y[order] == 1
    w_pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg  # negatives scored strictly lower than each tie group
    wins = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    return wins / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int64)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]
