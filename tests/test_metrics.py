"""Metrics and statistics checked against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from pneumolab.record.metrics import (
    binary_metrics, compare_seeds, ensemble_log_odds, holm, paired_ttest, power_line, roc_curve, summarize,
    weighted_auc, welch_ttest,
)


def test_confusion_example_by_hand():
    # 5 pneumonia, 3 normal. Predictions: 3 of 5 pneumonia caught, 1 of 3 normal flagged.
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.6, 0.2, 0.1])
    m = binary_metrics(labels, scores, pred)
    assert m["confusion"] == [[2, 1], [2, 3]]  # [[tn, fp], [fn, tp]]
    assert m["acc"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    # precision 3/4, recall 3/5 -> F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3
    assert m["f1"] == pytest.approx(2 / 3)
    # 15 positive-negative pairs; the only misordered one is 0.6 (normal) over 0.4 and 0.3.
    assert m["auc"] == pytest.approx(13 / 15)


def test_results_are_plain_python_and_serialize():
    m = binary_metrics(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.4]), np.array([0, 1, 0]))
    json.dumps(m)
    assert all(isinstance(v, int) for row in m["confusion"] for v in row)
    for key in ("acc", "auc", "sensitivity", "specificity", "f1"):
        assert type(m[key]) is float and 0.0 <= m[key] <= 1.0


def test_auc_with_ties_by_hand():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.6, 0.6])
    # Positives 0.4, 0.8, 0.6 against negatives 0.1, 0.4, 0.6 (a tie counts 1/2):
    # 0.4 -> 1 + 0.5 + 0 ; 0.8 -> 3 ; 0.6 -> 1 + 1 + 0.5  => 7 of 9 pairs.
    auc = binary_metrics(labels, scores, scores > 0.5)["auc"]
    assert auc == pytest.approx(7 / 9)


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_on_random_data(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=200)
    # Rounding to one decimal forces many ties, within and across the classes.
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.25), 0, 1), 1)
    auc = binary_metrics(labels, scores, scores > 0.5)["auc"]
    assert auc == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_undefined_values_are_none():
    only_pos = binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]), np.array([0, 1]))
    assert only_pos["auc"] is None and only_pos["specificity"] is None
    assert only_pos["sensitivity"] == 0.5
    only_neg = binary_metrics(np.array([0, 0]), np.array([0.2, 0.9]), np.array([0, 0]))
    assert only_neg["auc"] is None and only_neg["sensitivity"] is None
    assert only_neg["specificity"] == 1.0 and only_neg["f1"] == 0.0
    diverged = binary_metrics(np.array([0, 1]), np.array([np.nan, np.nan]), np.array([0, 0]))
    assert diverged["auc"] is None and diverged["acc"] == 0.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="length"):
        binary_metrics(np.array([0, 1]), np.array([0.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 and 1"):
        binary_metrics(np.array([0, 2]), np.array([0.5, 0.5]), np.array([0, 1]))


def test_roc_curve_by_hand_with_ties():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.6, 0.6])
    fpr, tpr = roc_curve(labels, scores)
    # Thresholds 0.8 | 0.6 (one pos, one neg) | 0.4 (one pos, one neg) | 0.1
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])


@pytest.mark.parametrize("seed", range(3))
def test_roc_area_equals_auc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=150)
    scores = np.round(rng.random(150) + 0.3 * labels, 1)
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(binary_metrics(labels, scores, scores > 0.5)["auc"])


def test_roc_curve_undefined_cases_raise():
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0, 1]), np.array([0.1, np.nan]))


def test_summarize_by_hand():
    s = summarize([0.70, 0.74, 0.78, 0.72, 0.76])
    # deviations -.04 .00 .04 -.02 .02 -> squares sum .004, / (n-1) = .001
    std = math.sqrt(0.001)
    t_975_df4 = 2.776445105  # Student-t table, two-sided 95 %, 4 degrees of freedom
    half = t_975_df4 * std / math.sqrt(5)
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(0.74)
    assert s["std"] == pytest.approx(std)
    assert s["ci95_low"] == pytest.approx(0.74 - half, abs=1e-8)
    assert s["ci95_high"] == pytest.approx(0.74 + half, abs=1e-8)
    json.dumps(s)


def test_summarize_ignores_missing_and_handles_small_n():
    assert summarize([0.7, None, float("nan"), 0.8]) == summarize([0.7, 0.8])
    # One value: its spread is unknown, not zero, so neither std nor an interval is given (never 0).
    assert summarize([0.7, None]) == {"mean": 0.7, "std": None, "ci95_low": None, "ci95_high": None, "n": 1,
                                      "ci95_clipped": False}
    # Two equal values: a sample std of 0 is measured, and stays 0.
    assert summarize([0.7, 0.7])["std"] == 0.0
    assert summarize([None, float("nan")]) == {
        "mean": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0, "ci95_clipped": False,
    }
    assert summarize([])["n"] == 0


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    # means 2 and 6, sample variances 1 and 4, n = 3 each
    se = math.sqrt(1 / 3 + 4 / 3)
    t = (2 - 6) / se  # -3.0984
    df = (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)  # Welch–Satterthwaite: 50/17
    r = welch_ttest(a, b)
    assert r["diff"] == pytest.approx(-4.0)
    assert r["t"] == pytest.approx(t)
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert r["p"] == pytest.approx(0.0548, abs=1e-4)
    assert r["significant"] is False
    json.dumps(r)


@pytest.mark.parametrize("seed", range(6))
def test_welch_and_ci_match_scipy_stats(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.75, 0.02, size=rng.integers(2, 9))
    b = rng.normal(0.76, rng.uniform(0.001, 0.05), size=rng.integers(2, 9))
    reference = stats.ttest_ind(a, b, equal_var=False)
    r = welch_ttest(list(a), list(b))
    assert r["t"] == pytest.approx(reference.statistic, rel=1e-10)
    assert r["p"] == pytest.approx(reference.pvalue, rel=1e-8)
    s = summarize(list(a))
    low, high = stats.t.interval(0.95, df=len(a) - 1, loc=a.mean(), scale=stats.sem(a))
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((low, high), rel=1e-10)


def test_welch_clear_difference_is_significant():
    r = welch_ttest([0.80, 0.81, 0.82, 0.80, 0.81], [0.70, 0.71, 0.69, 0.70, 0.72])
    assert r["diff"] > 0 and r["p"] < 0.001 and r["significant"] is True


def test_welch_zero_variance_and_small_n():
    same = welch_ttest([0.1, 0.1, 0.1], [0.1, 0.1])
    assert same == {"diff": 0.0, "t": None, "p": 1.0, "significant": False}
    apart = welch_ttest([0.8, 0.8], [0.7, 0.7, 0.7])
    assert apart["p"] == 0.0 and apart["significant"] is True and apart["diff"] == pytest.approx(0.1)
    one = welch_ttest([0.8], [0.7, 0.75])
    assert one == {"diff": pytest.approx(0.075), "t": None, "p": None, "significant": False}
    empty = welch_ttest([], [0.7, 0.75])
    assert empty == {"diff": None, "t": None, "p": None, "significant": False}
    with_missing = welch_ttest([1.0, None, 2.0, 3.0, float("nan")], [4.0, 6.0, 8.0])
    assert with_missing == welch_ttest([1.0, 2.0, 3.0], [4.0, 6.0, 8.0])


@pytest.mark.parametrize("seed", range(6))
def test_paired_test_matches_scipys_ttest_rel(seed):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.75, 0.03, size=rng.integers(2, 9))  # what a seed does to both settings alike
    a, b = shared + rng.normal(0, 0.005, shared.size), shared + rng.normal(0.004, 0.005, shared.size)
    reference = stats.ttest_rel(a, b)
    r = paired_ttest(list(a), list(b))
    assert r["t"] == pytest.approx(reference.statistic, rel=1e-10)
    assert r["p"] == pytest.approx(reference.pvalue, rel=1e-8)
    assert r["diff"] == pytest.approx(float(np.mean(a - b)), rel=1e-12)
    json.dumps(r)


def test_paired_test_edge_cases():
    # A seed diverged on one side: that pair is left out.
    assert paired_ttest([0.7, None, 0.72, 0.75], [0.71, 0.8, 0.74, 0.78]) == paired_ttest([0.7, 0.72, 0.75],
                                                                                         [0.71, 0.74, 0.78])
    assert paired_ttest([0.7, 0.8], [0.6, None]) == {"diff": pytest.approx(0.1), "t": None, "p": None,
                                                     "significant": False}
    # Every seed moved by exactly the same amount: no variance, as in the Welch test.
    assert paired_ttest([0.7, 0.8], [0.7, 0.8])["p"] == 1.0
    assert paired_ttest([1.0, 0.75], [0.5, 0.25])["p"] == 0.0  # exact binary fractions: both differ by 0.5


def test_shared_seeds_are_paired_and_the_rest_left_out_else_welch():
    """A 3-seed run against a 5-seed one that shares seeds 0-2: paired on those three, the two more left out.
    The shared seed's own effect (a common offset) is what pairing removes: Welch sees only noise."""
    a = {0: 0.70, 1: 0.76, 2: 0.73}
    b = {0: 0.72, 1: 0.781, 2: 0.749, 3: 0.71, 4: 0.77}
    test, power = compare_seeds(a, b)
    reference = stats.ttest_rel([0.70, 0.76, 0.73], [0.72, 0.781, 0.749])
    assert (test["kind"], test["seeds"], test["left_out"]) == ("paired", [0, 1, 2], 2)
    assert test["p"] == pytest.approx(reference.pvalue, rel=1e-9) and test["p"] < 0.001
    welch = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue
    assert welch > 0.5  # the same numbers as independent samples: no difference seen
    assert power["std"] == pytest.approx(np.std([-0.02, -0.021, -0.019], ddof=1))
    # A diverged seed (None) is no shared seed; one shared seed is not enough to pair: Welch over all.
    test, power = compare_seeds({0: 0.70, 1: None, 5: 0.74}, {0: 0.72, 1: 0.79, 6: 0.71})
    assert test["kind"] == "Welch" and test["seeds"] == [] and test["left_out"] == 0
    assert test["p"] == pytest.approx(stats.ttest_ind([0.70, 0.74], [0.72, 0.79, 0.71], equal_var=False).pvalue)
    assert power == power_line([0.70, 0.74], [0.72, 0.79, 0.71])


def test_a_fractions_interval_is_clipped_to_0_1_and_says_so():
    # Two seeds far apart: the t interval (12.7 std errors wide) reaches far past both bounds.
    s = summarize([0.05, 0.95])
    assert (s["ci95_low"], s["ci95_high"], s["ci95_clipped"]) == (0.0, 1.0, True)
    unclipped = summarize([0.05, 0.95], bounds=None)
    assert unclipped["ci95_low"] < -5 and unclipped["ci95_high"] > 5 and not unclipped["ci95_clipped"]
    assert summarize([0.70, 0.72, 0.74])["ci95_clipped"] is False


def test_auc_from_log_odds_keeps_the_order_float32_probabilities_lose():
    # Logits of +-40: float32 sigmoid rounds every positive one to 1.0 (and 36..40 all tie there).
    labels = np.array([0, 1, 0, 1, 0, 1])
    logits = np.array([-40.0, 40.0, 38.0, 39.0, -1.0, 36.0])
    probs32 = (1 / (1 + np.exp(-logits))).astype(np.float32)
    assert len(set(probs32[logits > 30])) == 1  # ties: the premise of this test
    tied_auc = binary_metrics(labels, probs32, logits > 0)["auc"]
    auc = binary_metrics(labels, logits, logits > 0)["auc"]
    # Pairs (pos, neg): 40 > 38, 39 > 38, 36 < 38; the rest positive above -40 and -1: 8 of 9.
    assert auc == pytest.approx(8 / 9)
    assert tied_auc == pytest.approx(7.5 / 9)  # the three pairs against 38 each count half
    fpr, tpr = roc_curve(labels, logits)
    assert len(fpr) == 7  # every log-odds its own threshold
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)


def test_ensemble_is_the_mean_probability_even_where_sigmoid_saturates():
    z = np.array([[40.0, 45.0, -3.0, 0.2], [41.0, 44.0, 1.0, -0.3]])
    ensemble = ensemble_log_odds(z)
    mean_p = (1 / (1 + np.exp(-z))).mean(axis=0)
    resolved = mean_p[2:]  # where float64 probabilities are still below 1
    assert ensemble[2:] == pytest.approx(np.log(resolved / (1 - resolved)), rel=1e-12)
    assert ensemble[1] > ensemble[0] > 30  # both probabilities round to 1.0; the log-odds still order them
    assert list(ensemble > 0) == list(mean_p > 0.5)


@pytest.mark.parametrize("seed", range(3))
def test_weighted_auc_is_the_auc_of_the_repeated_images(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = (0, 1)
    s = rng.integers(0, 8, 40).astype(float)  # many ties
    weights = rng.integers(0, 4, (3, 40)).astype(float)
    weights[:, :2] = 1
    for row, w in zip(weighted_auc(y, s, weights), weights):
        repeated = np.repeat(np.arange(40), w.astype(int))
        assert row == pytest.approx(binary_metrics(y[repeated], s[repeated], y[repeated])["auc"], rel=1e-12)


def test_holm_by_hand():
    # Sorted 0.01, 0.02, 0.04, 0.3 times 4, 3, 2, 1 -> 0.04, 0.06, 0.08, 0.3; order kept; None untouched.
    assert holm([0.04, None, 0.3, 0.01, 0.02]) == pytest.approx([0.08, None, 0.3, 0.04, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.03, 0.03]) == [0.06, 0.06]


def test_power_line_edge_cases():
    assert power_line([0.7], [0.8, 0.9]) == {"std": None, "min_detectable": None, "seeds_needed": None}
    flat = power_line([0.7, 0.7], [0.7, 0.7])
    assert flat["std"] == 0 and flat["seeds_needed"] is None
    # 0.05 points apart with a 5-point spread: about 157,000 seeds per side, beyond any practical number.
    assert power_line([0.70, 0.80, 0.75], [0.7005, 0.8005, 0.7505])["seeds_needed"] is None
    assert power_line([0.70, 0.80, 0.75], [0.705, 0.805, 0.755])["seeds_needed"] == pytest.approx(1570, abs=5)
    many = power_line([0.70, 0.72, 0.74, 0.71, 0.73], [0.72, 0.74, 0.76, 0.73, 0.75])  # 2 points, std 1.6
    assert 5 < many["seeds_needed"] < 20 and many["min_detectable"] > 0.02


def test_power_lines_compute_the_noncentrality_once_and_equal_a_direct_computation():
    """The noncentral-t root search depends on the seed counts alone: one grid per process and one value per
    degrees of freedom serve every comparison of a sweep, with the numbers a direct computation gives."""
    import itertools

    from scipy.special import nctdtrinc, stdtrit

    from pneumolab.record import metrics

    metrics._seeds_grid.cache_clear()
    metrics._noncentrality.cache_clear()
    rng = np.random.default_rng(3)
    groups = [list(rng.normal(0.75 + 0.004 * i, 0.01, size)) for i, size in enumerate((5, 5, 3, 5, 4, 3, 5, 5))]
    for a, b in itertools.combinations(groups, 2):
        line = power_line(a, b)
        xa, xb = np.array(a), np.array(b)
        df = xa.size + xb.size - 2
        pooled = math.sqrt(((xa.size - 1) * xa.var(ddof=1) + (xb.size - 1) * xb.var(ddof=1)) / df)
        beta, t = 1 - metrics.POWER, 1 - metrics.ALPHA / 2  # as the module spells them, to the last bit
        direct = nctdtrinc(df, beta, stdtrit(df, t)) * pooled * np.sqrt(1 / xa.size + 1 / xb.size)
        n = np.arange(2, metrics.MAX_SEEDS + 1)
        grid = nctdtrinc(2 * n - 2, beta, stdtrit(2 * n - 2, t)) * pooled * np.sqrt(2 / n)
        enough = np.flatnonzero(grid <= abs(xa.mean() - xb.mean()))
        assert line["std"] == pooled and line["min_detectable"] == float(direct)
        assert line["seeds_needed"] == (int(n[enough[0]]) if enough.size else None)
    assert metrics._seeds_grid.cache_info().misses == 1
    assert metrics._noncentrality.cache_info().misses == len({len(a) + len(b) - 2
                                                              for a, b in itertools.combinations(groups, 2)})
