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
    curves_figure,
    draw_curves,
    draw_summary,
    loss_name,
    plot_curves,
    plot_curves_grid,
    plot_roc,
    plot_search,
    plot_summary,
    plot_summary_panels,
    roc_figure,
    seed_band,
    setting_title,
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


def _point(x, mean, group=None, half=0.02, seeds=()) -> dict:
    low, high = (None, None) if mean is None or half is None else (mean - half, mean + half)
    return {"x": x, "group": group, "mean": mean, "low": low, "high": high, "seeds": list(seeds)}


def test_plot_summary_numeric_x(tmp_path):
    points = [_point(128, 0.76), _point(32, 0.74), _point(64, 0.73, half=None)]
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
        _point("none", None, group=128, half=None),  # every seed diverged
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
    assert line[:2] == (["32", "64", "128"], [32, 64, 128])
    assert line[2] == pytest.approx([74, 73, 76])  # in percent


def test_draw_summary_categorical_groups():
    points = [
        _point("step", 0.75, group=32),
        _point("cosine", 0.77, group=32),
        _point("step", 0.72, group=128),
        _point("none", None, group=128),
    ]
    first, second = _drawn_summary(points, group_key="data.batch_size")
    assert first[:2] == (["step", "cosine"], [0.0, 1.0]) and first[2] == pytest.approx([75, 77])
    assert second[1] == [0.0] and second[2] == pytest.approx([72])


def test_draw_summary_bars_are_the_interval_and_seeds_are_dots_on_a_log_axis():
    fig, ax = plt.subplots()
    try:
        points = [_point(32, 0.74, half=0.01, seeds=[0.73, 0.75]), _point(128, 0.80, half=0.03, seeds=[0.78, 0.82, 0.8])]
        draw_summary(ax, points, x_key="data.batch_size")
        assert ax.get_xscale() == "log"  # batch sizes double: a log axis even over a 4x span
        (bars,) = ax.containers
        segments = bars.lines[2][0].get_segments()
        assert [tuple(np.round(s[:, 1], 6)) for s in segments] == [(73.0, 75.0), (77.0, 83.0)]
        (dots,) = ax.collections[1:]  # after the error-bar segments: one dot per seed
        assert np.round(dots.get_offsets()[:, 1], 6).tolist() == [73.0, 75.0, 78.0, 82.0, 80.0]
    finally:
        plt.close(fig)


def test_plot_search_and_panels_write_pngs(tmp_path):
    trials = [_point(i, 0.7 + 0.01 * (i % 3), seeds=[0.69, 0.71]) for i in range(30)]
    plot_search(trials, tmp_path / "search.png")
    _assert_png(tmp_path / "search.png")
    panels = [("head", [_point("bce", 0.7), _point("ce", 0.72)]), ("optimizer.lr", [_point(1e-4, 0.7), _point(1e-2, 0.71)])]
    plot_summary_panels(panels, tmp_path / "panels.png")
    _assert_png(tmp_path / "panels.png")


def test_plot_summary_without_any_mean_raises(tmp_path):
    with pytest.raises(ValueError, match="no sweep point"):
        plot_summary([_point(32, None)], tmp_path / "summary.png", x_key="data.batch_size")


# --- per-job figures: titles that name the setting, the loss, whole epochs ---------------------

DEFAULT_CONFIG = {
    "model": {"name": "mlp", "hidden_sizes": [128, 128, 128]},
    "head": {"name": "bce"},
    "data": {"name": "phantom", "batch_size": 32},
    "optimizer": {"name": "adam", "lr": 0.001},
    "scheduler": {"name": "step", "step_size": 10, "gamma": 0.1},
    "trainer": {"epochs": 30},
    "tag": None,
}
LONG_TITLE = setting_title({**DEFAULT_CONFIG, "tag": "fig7_ce_combo_with_a_long_name",
                            "model": {"name": "custom", "_target_": "my.package.nets.AVeryLongModelClassName"}})


def _inside(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_setting_title_names_head_batch_lr_schedule_and_model():
    assert setting_title(DEFAULT_CONFIG) == (
        "BCE head, batch 32, adam lr 0.001, StepLR ×0.1 every 10 epochs, MLP 128-128-128, phantom data, 30 epochs")
    ce = {**DEFAULT_CONFIG, "head": {"name": "ce"}, "tag": "fig7", "scheduler": {"name": "cosine", "t_max": None}}
    assert setting_title(ce).startswith("fig7: CE head, ") and "cosine lr over all epochs" in setting_title(ce)
    assert loss_name(DEFAULT_CONFIG) == "BCE" and loss_name(ce) == "CE"


def test_curves_title_is_whole_and_inside_the_figure_and_the_loss_is_named():
    fig = curves_figure(_history(epochs=2), title=LONG_TITLE, loss="CE")
    try:
        fig.canvas.draw()
        title = fig._suptitle
        assert title.get_text().replace("\n", " ") == LONG_TITLE and "\n" in title.get_text()
        assert _inside(fig, title)
        ax_acc, ax_loss = fig.axes
        renderer = fig.canvas.get_renderer()
        assert title.get_window_extent(renderer).y0 > ax_acc.title.get_window_extent(renderer).y1  # no overlap
        assert ax_loss.get_ylabel() == "CE loss" and ax_acc.get_title() == "model accuracy"
        for ax in (ax_acc, ax_loss):
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks == [1.0, 2.0]
    finally:
        plt.close(fig)


def test_roc_title_wraps_inside_the_figure():
    fpr, tpr = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]))
    fig = roc_figure([{"seed": 0, "fpr": fpr, "tpr": tpr, "auc": 0.75}], title=LONG_TITLE)
    try:
        fig.canvas.draw()
        title = fig.axes[0].title
        lines = title.get_text().split("\n")
        assert lines[0] == "test ROC" and " ".join(lines[1:]) == LONG_TITLE
        assert _inside(fig, title)
    finally:
        plt.close(fig)

