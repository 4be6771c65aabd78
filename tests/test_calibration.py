"""Balanced accuracy, ECE and Brier score against scikit-learn, and calibration.png."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import balanced_accuracy_score, brier_score_loss

from pneumolab.record.metric_table import METRICS, SUMMARY_KEYS, TEST_SET_KEYS
from pneumolab.record.metrics import ECE_BINS, binary_metrics, calibration_bin, ensemble_log_odds, reliability_curve
from pneumolab.outputs.plots import calibration_figure, plot_calibration, with_gaps

EDGES = np.linspace(0.0, 1.0, ECE_BINS + 1)


def sklearn_ece(y: np.ndarray, p: np.ndarray) -> float:
    """The ECE rebuilt from sklearn's reliability curve: each bin's |fraction - mean p|, weighted by its images."""
    fraction, mean_p = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform", pos_label=1)
    # np.histogram's bins are [a, b), sklearn's (a, b]: the same unless a probability sits on an inner edge.
    assert np.abs(p[:, None] - EDGES[None, 1:-1]).min() > 1e-9
    counts = np.histogram(p, bins=EDGES)[0]
    return float(np.sum(counts[counts > 0] * np.abs(fraction - mean_p)) / y.size)


def check_against_sklearn(y: np.ndarray, log_odds: np.ndarray) -> dict:
    m = binary_metrics(y, log_odds, log_odds > 0)
    p = expit(log_odds)
    assert m["ece"] == pytest.approx(sklearn_ece(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, pos_label=1), abs=1e-12)
    if 0 < y.sum() < y.size:
        assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, log_odds > 0), abs=1e-12)
    return m


@pytest.mark.parametrize("seed", range(6))
def test_random_data_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 700))
    y = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int)
    # From hesitant to saturated: a scale of 10 puts many probabilities at float64's 0.0 and 1.0.
    z = rng.uniform(0.3, 10) * (rng.normal(size=n) + rng.uniform(0, 2) * (2 * y - 1)) + rng.normal()
    m = check_against_sklearn(y, z)
    assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 1 and 0 <= m["balanced_acc"] <= 1


@pytest.mark.parametrize("y, z, expected", [
    # Right and certain: perfect on every count.
    ([0, 0, 1, 1, 1], [-50, -40, 40, 45, 50], {"balanced_acc": 1.0, "ece": 0.0, "brier": 0.0}),
    # Wrong and certain: the worst on every count.
    ([0, 0, 1, 1, 1], [50, 40, -40, -45, -50], {"balanced_acc": 0.0, "ece": 1.0, "brier": 1.0}),
    # Everything called pneumonia: accuracy is the pneumonia share (3/5), balanced accuracy 1/2.
    ([0, 0, 1, 1, 1], [0.3] * 5, {"acc": 0.6, "balanced_acc": 0.5}),
    # P = 1/2 for all (called normal, as log-odds 0 is not above 0): Brier 1/4, ECE |3/5 - 1/2|.
    ([0, 0, 1, 1, 1], [0.0] * 5, {"balanced_acc": 0.5, "ece": 0.1, "brier": 0.25}),
    ([0, 1], [-0.4, 2.0], {"balanced_acc": 1.0}),  # one image per class
    ([0] + [1] * 99, [1.0] * 100, {"balanced_acc": 0.5, "acc": 0.99}),  # 1 normal among 99 pneumonia
])
def test_edge_cases_match_sklearn_and_the_values_by_hand(y, z, expected):
    m = check_against_sklearn(np.array(y), np.array(z, dtype=float))
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_one_class_only_has_no_balanced_accuracy_but_a_calibration():
    """sklearn averages the recall of the classes present (and warns); one recall is no balanced accuracy."""
    y, z = np.ones(6, int), np.array([-2.0, -1, 0.5, 1, 3, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's "y_pred contains classes not in y_true"
        m = check_against_sklearn(y, z)
    assert m["balanced_acc"] is None and m["sensitivity"] == pytest.approx(4 / 6)


def test_a_diverged_model_has_no_calibration():
    m = binary_metrics(np.array([0, 1, 1]), np.array([np.nan, 1.0, 2.0]), np.array([0, 1, 1]))
    assert m["ece"] is None and m["brier"] is None


def test_a_probability_on_a_bin_edge_falls_in_the_bin_below_as_in_sklearn():
    assert calibration_bin(EDGES).tolist() == [0, *range(ECE_BINS)]
    p = np.r_[EDGES, EDGES[1:-1] + 1e-9]  # each inner edge, and just above it
    y = np.arange(p.size) % 2
    fraction, mean_p = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
    bins = calibration_bin(p)
    ours = [(y[bins == b].mean(), p[bins == b].mean()) for b in np.unique(bins)]
    assert np.array(ours) == pytest.approx(np.c_[fraction, mean_p], abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_reliability_curve_is_sklearns_calibration_curve_with_counts(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    z = 3 * rng.normal(size=300) + 2 * (2 * y - 1)
    curve = reliability_curve(y, z)
    fraction, mean_p = calibration_curve(y, expit(z), n_bins=ECE_BINS, strategy="uniform")
    assert curve["mean_p"] == pytest.approx(mean_p, abs=1e-15)
    assert curve["fraction"] == pytest.approx(fraction, abs=1e-15)
    assert curve["count"].tolist() == [c for c in np.histogram(expit(z), bins=EDGES)[0] if c]
    assert np.all(np.diff(curve["bin"]) > 0)


def test_the_ensemble_brier_score_is_at_most_the_seeds_mean():
    """Squared error is convex in p: the mean probability never scores worse than the mean seed."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    z = 4 * rng.normal(size=(5, 200)) + 2 * (2 * y - 1)
    ensemble = ensemble_log_odds(z)
    assert expit(ensemble) == pytest.approx(expit(z).mean(axis=0), abs=1e-12)
    brier = [binary_metrics(y, s, s > 0)["brier"] for s in z]
    assert binary_metrics(y, ensemble, ensemble > 0)["brier"] <= np.mean(brier)


def test_the_metric_table_names_every_summary_and_bootstrap_metric():
    assert SUMMARY_KEYS[0] == "test_acc" and len(set(SUMMARY_KEYS)) == len(METRICS)
    assert {"test_balanced_acc", "test_ece", "test_brier"} <= set(TEST_SET_KEYS)
    assert "val_acc" in SUMMARY_KEYS and "val_acc" not in TEST_SET_KEYS
    assert {m.key for m in METRICS if not m.higher_is_better} == {"test_ece", "test_brier"}


def calibration_inputs(gap: bool = False):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    z = 3 * rng.normal(size=(3, 400)) + 2 * (2 * y - 1)
    if gap:  # nothing between P = 0.4 and 0.6: bins 6 to 8 hold no image
        z = np.where(np.abs(expit(z) - 0.5) < 0.1, 3.0, z)
    seeds = [{"seed": s, "ece": binary_metrics(y, z[s], z[s] > 0)["ece"], **reliability_curve(y, z[s])}
             for s in range(3)]
    ensemble = {"n_seeds": 3, "ece": 0.05, **reliability_curve(y, ensemble_log_odds(z))}
    return seeds, ensemble


def test_an_empty_bin_is_neither_drawn_nor_bridged():
    seeds, ensemble = calibration_inputs(gap=True)
    assert not {6, 7, 8} & set(seeds[0]["bin"])
    x, y = with_gaps(seeds[0])
    assert np.isnan(x[6:9]).all() and np.isnan(y[6:9]).all()
    assert x[~np.isnan(x)] == pytest.approx(seeds[0]["mean_p"])


def test_calibration_figure_labels_axes_and_legend(tmp_path):
    seeds, ensemble = calibration_inputs()
    fig = calibration_figure(seeds, ensemble, title="BCE head, batch 32")
    try:
        reliability, counts = fig.axes
        assert reliability.get_xlabel() == "mean predicted P(pneumonia)"
        assert reliability.get_ylabel() == "fraction pneumonia"
        assert counts.get_ylabel() == "images (ensemble)"
        assert sum(bar.get_height() for bar in counts.patches) == 400
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        low, high = min(s["ece"] for s in seeds), max(s["ece"] for s in seeds)
        assert legend == [f"each of 3 seeds (ECE {low:.3f}–{high:.3f})", "ensemble: mean P over 3 seeds (ECE 0.050)",
                          "perfectly calibrated"]
    finally:
        plt.close(fig)
    plot_calibration(seeds, ensemble, tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_calibration([], None, tmp_path / "diverged.png")  # every seed diverged: the diagonal alone
    assert (tmp_path / "diverged.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []
