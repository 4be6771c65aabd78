"""The bootstrap over test images and the seed ensemble, as results.json records them."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from pneumolab.record.bootstrap import METRICS, bootstrap_seed_mean, resample_counts, seed_mean_metrics
from pneumolab.record.metrics import binary_metrics
from pneumolab.record.results import build_results
from pneumolab.record.seed_run import SeedRun

from conftest import pneumolab_command, subprocess_env


def fake_outputs(n_seeds: int = 5, n_images: int = 624, seed: int = 0):
    """Labels in the Kaggle test split's balance and log-odds that are right about 80 % of the time."""
    rng = np.random.default_rng(seed)
    n_normal = round(n_images * 234 / 624)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_images - n_normal, int)]
    z = rng.normal(size=(n_seeds, n_images)) + 1.2 * (2 * y - 1) + rng.normal(0, 0.3, (n_seeds, 1))
    return y, z, (z > 0).astype(int)


def test_each_resample_is_the_seed_mean_of_the_metrics_of_the_repeated_images():
    y, z, pred = fake_outputs(n_seeds=3, n_images=60)
    counts = resample_counts(y, np.random.default_rng(1), 4)
    assert (counts[:, y == 1].sum(axis=1) == (y == 1).sum()).all()  # the class balance is kept
    draws = seed_mean_metrics(y, z, pred, counts)
    assert set(draws) == set(METRICS) >= {"test_acc", "test_auc", "test_balanced_acc", "test_ece", "test_brier"}
    for i, draw in enumerate(counts):
        images = np.repeat(np.arange(y.size), draw.astype(int))
        per_seed = [binary_metrics(y[images], s[images], p[images]) for s, p in zip(z, pred)]
        for metric in METRICS:
            expected = np.mean([m[metric.removeprefix("test_")] for m in per_seed])
            assert draws[metric][i] == pytest.approx(expected, rel=1e-12), metric


def test_the_interval_is_seeded_covers_the_mean_and_is_about_binomial_wide():
    y, z, pred = fake_outputs()
    first, again = bootstrap_seed_mean(y, z, pred), bootstrap_seed_mean(y, z, pred)
    assert first == again
    acc = np.mean([(p == y).mean() for p in pred])
    low, high = first["test_acc"]["boot95_low"], first["test_acc"]["boot95_high"]
    assert low < acc < high
    # One seed's accuracy on 624 images: the interval is about the binomial one, 2 x 1.96 x sqrt(p(1-p)/n)
    # (a little narrower: the class balance is held fixed).
    one = bootstrap_seed_mean(y, z[:1], pred[:1])["test_acc"]
    p = (pred[0] == y).mean()
    assert one["boot95_high"] - one["boot95_low"] == pytest.approx(3.92 * np.sqrt(p * (1 - p) / y.size), rel=0.15)
    for metric in first.values():
        assert 0 <= metric["boot95_low"] <= metric["boot95_high"] <= 1


def test_one_class_only_gives_no_auc_interval():
    y = np.ones(20, int)
    z = np.linspace(-1, 2, 20)[None]
    result = bootstrap_seed_mean(y, z, (z > 0).astype(int))
    assert result["test_auc"] == {"boot95_low": None, "boot95_high": None,
                                  "boot95_note": "no NORMAL test images: the metric is undefined"}
    assert result["test_specificity"]["boot95_low"] is None
    assert result["test_sensitivity"]["boot95_low"] is not None and result["test_sensitivity"]["boot95_note"] is None


@pytest.mark.parametrize("n_normal", [1, 2, 9])
def test_a_class_with_few_test_images_gets_no_interval_and_a_note(n_normal):
    """One NORMAL image is drawn on every resample, so its interval would have width zero; a handful give a
    handful of values. The metrics using that class get a note instead; sensitivity (pneumonia only) keeps its."""
    y = np.r_[np.zeros(n_normal, int), np.ones(40, int)]
    z = np.random.default_rng(n_normal).normal(size=(3, y.size)) + (2 * y - 1)
    result = bootstrap_seed_mean(y, z, (z > 0).astype(int))
    image = "image" if n_normal == 1 else "images"
    for metric in METRICS:
        if metric == "test_sensitivity":
            assert result[metric]["boot95_note"] is None
            assert result[metric]["boot95_low"] < result[metric]["boot95_high"]
        else:
            assert result[metric] == {"boot95_low": None, "boot95_high": None, "boot95_note":
                                      f"only {n_normal} NORMAL test {image} (fewer than 10 per class): "
                                      "too few for a bootstrap interval"}, metric


def test_ten_images_per_class_keep_every_interval():
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    z = np.random.default_rng(0).normal(size=(2, 20)) + (2 * y - 1)
    for metric, stats in bootstrap_seed_mean(y, z, (z > 0).astype(int)).items():
        assert stats["boot95_note"] is None and stats["boot95_low"] < stats["boot95_high"], metric


def test_results_json_carries_the_bootstrap_and_the_ensemble():
    y, z, pred = fake_outputs(n_seeds=3)
    runs = [SeedRun(seed=s, val_acc=0.8, epochs_run=2, test_scores=z[s], test_predictions=pred[s]) for s in range(3)]
    runs.append(SeedRun(seed=3, diverged=True, epochs_run=1))
    results = build_results({}, [], runs, y, {"source": "fake", "summary": {}}, {}, 1.0, "cpu")
    json.dumps(results, allow_nan=False)
    acc = results["summary"]["test_acc"]
    assert acc["n"] == 3 and acc["boot95_low"] < acc["mean"] < acc["boot95_high"]
    assert "boot95_low" not in results["summary"]["val_acc"]
    ensemble = results["ensemble"]
    mean_p = (1 / (1 + np.exp(-z))).mean(axis=0)
    assert ensemble["n_seeds"] == 3
    assert ensemble["test_acc"] == pytest.approx(((mean_p > 0.5) == y).mean())
    assert ensemble["test_confusion"] == binary_metrics(y, mean_p, mean_p > 0.5)["confusion"]
    assert ensemble["test_auc"] == pytest.approx(binary_metrics(y, mean_p, mean_p > 0.5)["auc"])
    assert ensemble["test_brier"] == pytest.approx(np.mean((mean_p - y) ** 2), abs=1e-12)
    sens, spec = ensemble["test_sensitivity"], ensemble["test_specificity"]
    assert ensemble["test_balanced_acc"] == pytest.approx((sens + spec) / 2)
    for key in ("test_balanced_acc", "test_ece", "test_brier"):
        stats = results["summary"][key]
        assert stats["n"] == 3 and 0 <= stats["boot95_low"] < stats["boot95_high"] <= 1, key
        assert stats["mean"] == pytest.approx(np.mean([e[key] for e in results["per_seed"][:3]]))
        assert results["per_seed"][3][key] is None  # the diverged seed


def test_every_seed_diverged_gives_no_ensemble_and_no_interval():
    runs = [SeedRun(seed=0, diverged=True), SeedRun(seed=1, diverged=True)]
    results = build_results({}, [], runs, np.array([0, 1]), {"source": "fake", "summary": {}}, {}, 1.0, "cpu")
    assert results["ensemble"] is None
    assert results["summary"]["test_acc"]["boot95_low"] is None
    assert results["summary"]["test_acc"]["boot95_note"] == "no seed without divergence to score the test images"


@pytest.mark.slow
def test_one_seed_and_a_tiny_test_set_report_no_spread_and_no_interval_never_zero(tmp_path):
    """A real sweep of one-seed points on 5 test images per class: results.json holds null std and seeds CI
    (never 0 or a zero-width interval), null test-set intervals with a note, and every summary reads them."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([*pneumolab_command(), "-m", "data.batch_size=16,32", "trainer.seeds=[0]", "trainer.epochs=1",
                           "data.limit_per_class=5", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    assert "± 0.0" not in console and "+- 0.0" not in console and "Logging error" not in console
    for point in ("0", "1"):
        summary = json.loads((sweep / point / "results.json").read_text())["summary"]
        for metric, stats in summary.items():
            assert stats["n"] == 1 and stats["mean"] is not None, metric
            assert stats["std"] is None and stats["ci95_low"] is None and stats["ci95_high"] is None, metric
        assert summary["test_acc"]["boot95_low"] is None and summary["test_acc"]["boot95_note"] == (
            "only 5 NORMAL and 5 PNEUMONIA test images (fewer than 10 per class): too few for a bootstrap interval")
        assert summary["test_sensitivity"]["boot95_note"].startswith("only 5 PNEUMONIA test images")
        assert "boot95_note" not in summary["val_acc"]
    table = (sweep / "summary.md").read_text()
    assert "1 seed: no spread" in table and "± 0.0" not in table
    with open(sweep / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(row["test_acc_std"] == "" and row["test_acc_ci95_low"] == "" for row in rows)
