"""Figures: valid PNGs, honest seed statistics, NaN-tolerant, and no figure left open."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from pneumolab.metrics import binary_metrics, roc_curve
from pneumolab.plots import (
    draw_curves,
    draw_summary,
    plot_curves,
    plot_curves_grid,
    plot_roc,
    plot_summary,
    seed_band,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def _history(n_seeds: int = 3, epochs: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"seed": seed, "epoch": list(range(1, epochs + 1)), **{k: rng.random(epochs).tolist() for k in KEYS}}
        for seed in range(n_seeds)
    ]


def _history_with_nan() -> list[dict]:
    history = _history()
    for key in KEYS:
        history[1][key][3:] = [math.nan] * 3  # seed 1 diverged at epoch 4
        for run in history:
            run[key][1] = math.nan  # epoch 2 has no number from any seed
    # seed 2 stopped after 4 epochs
    history[2] = {"seed": 2, "epoch": [1, 2, 3, 4], **{k: history[2][k][:4] for k in KEYS}}
    return history


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        img.verify()
    assert 200 <= width <= 10_000 and 200 <= height <= 10_000
    return width, height


def _table(history: list[dict], key: str) -> np.ndarray:
    return np.array([run[key] for run in history], dtype=float)


def test_seed_band_is_mean_min_max_over_seeds():
    history = _history()
    band = seed_band(history, "val_acc")
    table = _table(history, "val_acc")
    np.testing.assert_array_equal(band.epoch, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(band.mean, table.mean(axis=0))
    np.testing.assert_allclose(band.low, table.min(axis=0))
    np.testing.assert_allclose(band.high, table.max(axis=0))


def test_seed_band_skips_nan_and_missing_epochs_without_warnings():
    history = _history_with_nan()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        band = seed_band(history, "train_loss")
    seed0, seed1, seed2 = (np.array(run["train_loss"]) for run in history)
    np.testing.assert_allclose(band.mean[0], np.mean([seed0[0], seed1[0], seed2[0]]))
    assert np.isnan(band.mean[1]) and np.isnan(band.low[1])  # a gap, not a made-up value
    np.testing.assert_allclose(band.mean[3], np.mean([seed0[3], seed2[3]]))  # seed 1 diverged
    np.testing.assert_allclose(band.mean[5], seed0[5])  # only seed 0 ran this far
    np.testing.assert_allclose(band.high[4], seed0[4])


def test_drawn_mean_lines_equal_numpy_mean():
    history = _history()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2)
    try:
        draw_curves(ax_acc, ax_loss, history)
        for ax, metric, title in ((ax_acc, "acc", "model accuracy"), (ax_loss, "loss", "model loss")):
            assert ax.get_title() == title
            train_line, val_line = ax.get_lines()
            np.testing.assert_allclose(train_line.get_xdata(), [1, 2, 3, 4, 5, 6])
            np.testing.assert_allclose(train_line.get_ydata(), _table(history, f"train_{metric}").mean(axis=0))
            np.testing.assert_allclose(val_line.get_ydata(), _table(history, f"val_{metric}").mean(axis=0))
            labels = [text.get_text() for text in ax.get_legend().get_texts()]
            assert labels[0].startswith("train (mean") and "min–max over 3 seeds" in labels[0]
            assert labels[1].startswith("validation (mean")
    finally:
        plt.close(fig)


def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "job" / "curves.png"
    plot_curves(_history(), path, title="fig1_bce")
    width, height = _assert_png(path)
    assert width > height  # the two panels sit side by side


def test_plot_curves_with_nan_history(tmp_path):
    plot_curves(_history_with_nan(), tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")


def test_plot_curves_rejects_empty_history_and_closes_figure(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_curves([], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_plot_curves_grid_layout(tmp_path):
    settings = [("fig1_bce", _history()), ("fig2_ce", _history_with_nan()), ("fig3_ce_bs64", _history(5))]
    plot_curves_grid(settings, tmp_path / "wide.png", ncols=2)
    plot_curves_grid(settings, tmp_path / "tall.png", ncols=1)
    wide_w, wide_h = _assert_png(tmp_path / "wide.png")
    tall_w, tall_h = _assert_png(tmp_path / "tall.png")
    assert wide_w > tall_w and tall_h > wide_h


def test_plot_roc_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    rocs = []
    for seed in range(3):
        labels = rng.integers(0, 2, 100)
        scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
        fpr, tpr = roc_curve(labels, scores)
        auc = binary_metrics(labels, scores, scores > 0.5)["auc"]
        rocs.append({"seed": seed, "fpr": fpr, "tpr": tpr, "auc": auc})
    plot_roc(rocs, tmp_path / "roc.png")
    _assert_png(tmp_path / "roc.png")


def _point(x, mean, group=None, std=0.02, n=5) -> dict:
    return {"x": x, "group": group, "mean": mean, "std": std, "n": n}


def test_plot_summary_numeric_x(tmp_path):
    points = [_point(128, 0.76), _point(32, 0.74), _point(64, 0.73, std=None, n=1)]
    plot_summary(points, tmp_path / "summary.png", x_key="data.batch_size")
    _assert_png(tmp_path / "summary.png")


def test_plot_summary_groups_and_log_scale(tmp_path):
    points = [_point(lr, 0.7 + i / 100, group=head) for i, lr in enumerate([1e-6, 1e-4, 1e-3]) for head in ("bce", "ce")]
    plot_summary(points, tmp_path / "summary.png", x_key="optimizer.lr", group_key="head")
    _assert_png(tmp_path / "summary.png")


def test_plot_summary_categorical_x_and_missing_means(tmp_path):
    points = [
        _point("step", 0.75, group=32),
        _point("cosine", 0.77, group=32),
        _point("step", 0.72, group=128),
        _point("none", None, group=128, std=None, n=0),  # every seed diverged
    ]
    plot_summary(points, tmp_path / "summary.png", x_key="scheduler", group_key="data.batch_size")
    _assert_png(tmp_path / "summary.png")


def _drawn_summary(points: list[dict], group_key: str | None = None) -> list[tuple[list, list, list]]:
    """(tick labels, x, y) of each error-bar line `draw_summary` draws, after checking all y are in view."""
    fig, ax = plt.subplots()
    try:
        draw_summary(ax, points, x_key="x", group_key=group_key)
        ticks = [label.get_text() for label in ax.get_xticklabels()]
        lines = [(ticks, list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata())) for c in ax.containers]
        low, high = ax.get_ylim()
        for _, _, ys in lines:
            assert all(low < y < high for y in ys)  # every point inside the view
        return lines
    finally:
        plt.close(fig)


def test_draw_summary_numeric_x_sorted_and_in_view():
    (line,) = _drawn_summary([_point(128, 0.76), _point(32, 0.74), _point(64, 0.73)])
    assert line == (["32", "64", "128"], [32, 64, 128], [0.74, 0.73, 0.76])


def test_draw_summary_categorical_groups():
    points = [
        _point("step", 0.75, group=32),
        _point("cosine", 0.77, group=32),
        _point("step", 0.72, group=128),
        _point("none", None, group=128),
    ]
    first, second = _drawn_summary(points, group_key="data.batch_size")
    assert first == (["step", "cosine"], [0.0, 1.0], [0.75, 0.77])
    assert second[1:] == ([0.0], [0.72])


def test_plot_summary_without_any_mean_raises(tmp_path):
    with pytest.raises(ValueError, match="no sweep point"):
        plot_summary([_point(32, None)], tmp_path / "summary.png", x_key="data.batch_size")
