"""Figures: valid PNGs, honest seed statistics, NaN-tolerant, and no figure left open."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from pneumolab.record.metric_table import BY_KEY
from pneumolab.record.metrics import binary_metrics, roc_curve
from pneumolab.outputs.plots import (
    SEEDS_LABEL,
    TEST_MARK_LABEL,
    TEST_SET_LABEL,
    curves_figure,
    draw_curves,
    draw_summary,
    evaluated_checkpoints,
    loss_name,
    metric_axis_label,
    plot_curves,
    plot_curves_grid,
    plot_roc,
    plot_search,
    plot_summary,
    plot_summary_panels,
    roc_figure,
    seed_band,
    setting_title,
    summary_figure,
    summary_legend,
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


def test_drawn_mean_lines_equal_numpy_mean_accuracy_in_percent():
    history = _history()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2)
    try:
        draw_curves(ax_acc, ax_loss, history, loss="BCE")
        for ax, metric, title, scale in ((ax_acc, "acc", "accuracy (%)", 100), (ax_loss, "loss", "loss (BCE)", 1)):
            assert ax.get_title() == ax.get_ylabel() == title  # panels named by their metric and scale
            train_line, val_line = ax.get_lines()
            np.testing.assert_allclose(train_line.get_xdata(), [1, 2, 3, 4, 5, 6])
            np.testing.assert_allclose(train_line.get_ydata(), scale * _table(history, f"train_{metric}").mean(axis=0))
            np.testing.assert_allclose(val_line.get_ydata(), scale * _table(history, f"val_{metric}").mean(axis=0))
            labels = ax.get_legend_handles_labels()[1]
            assert labels[0].startswith("train (mean") and "min–max over 3 seeds" in labels[0]
            assert labels[1].startswith("validation (mean")
    finally:
        plt.close(fig)


def _test_mark(ax):
    (mark,) = [c for c in ax.containers if str(c.get_label()).startswith(TEST_MARK_LABEL)]
    return mark


def test_curves_mark_the_test_accuracy_of_the_evaluated_checkpoint():
    per_seed = [{"test_acc": 0.75, "epochs_run": 6, "best_epoch": 3, "diverged": False},
                {"test_acc": 0.79, "epochs_run": 6, "best_epoch": 5, "diverged": False},
                {"test_acc": None, "epochs_run": 2, "best_epoch": 1, "diverged": True}]
    assert evaluated_checkpoints(per_seed, "last") == [(6, 0.75), (6, 0.79)]  # the diverged seed is left out
    assert evaluated_checkpoints(per_seed, "best_val") == [(3, 0.75), (5, 0.79)]
    fig = curves_figure(_history(n_seeds=2), loss="BCE", evaluated=evaluated_checkpoints(per_seed, "last"))
    try:
        ax_acc, ax_loss = fig.axes
        mark = _test_mark(ax_acc)
        x, y = mark.lines[0].get_data()
        assert list(x) == [6] and list(y) == pytest.approx([77.0])  # mean test accuracy at the last epoch, in %
        (bar,) = mark.lines[2]
        assert np.round(bar.get_segments()[0][:, 1], 6).tolist() == [75.0, 79.0]  # the seeds' range
        assert mark.get_label() == f"{TEST_MARK_LABEL}, epoch 6: 77.0 % (mean; bar: seeds)"
        assert mark.get_label() in [t.get_text() for t in fig.legends[0].get_texts()]
        assert not ax_loss.containers  # the loss panel has no test mark
    finally:
        plt.close(fig)
    fig = curves_figure(_history(n_seeds=2), evaluated=evaluated_checkpoints(per_seed, "best_val"))
    try:
        mark = _test_mark(fig.axes[0])
        assert list(mark.lines[0].get_xdata()) == [4.0] and "epochs 3–5" in mark.get_label()
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


def test_roc_draws_the_ensemble_bold_with_its_auc():
    labels = np.array([0, 0, 0, 1, 1, 1])
    seeds = [np.array([0.1, 0.6, 0.3, 0.4, 0.9, 0.8]), np.array([0.2, 0.3, 0.7, 0.6, 0.5, 0.9])]
    rocs = [{"seed": i, **dict(zip(("fpr", "tpr"), roc_curve(labels, s))), "auc": binary_metrics(labels, s, s > 0.5)["auc"]}
            for i, s in enumerate(seeds)]
    mean_p = np.mean(seeds, axis=0)
    fpr, tpr = roc_curve(labels, mean_p)
    auc = binary_metrics(labels, mean_p, mean_p > 0.5)["auc"]
    fig = roc_figure(rocs, ensemble={"fpr": fpr, "tpr": tpr, "auc": auc, "n_seeds": 2})
    try:
        ax = fig.axes[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        ensemble = lines[f"ensemble: mean P over 2 seeds (AUC {auc:.3f})"]
        np.testing.assert_allclose(ensemble.get_xdata(), fpr)
        np.testing.assert_allclose(ensemble.get_ydata(), tpr)
        seed_widths = [lines[f"seed {r['seed']} (AUC {r['auc']:.3f})"].get_linewidth() for r in rocs]
        assert ensemble.get_linewidth() >= 2 * max(seed_widths)  # bold
        assert f"AUC {auc:.3f}" in [t.get_text() for t in ax.get_legend().get_texts()][-2]
    finally:
        plt.close(fig)


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
    """(tick labels, x, y) of each group's means `draw_summary` draws, after checking all y are in view."""
    fig, ax = plt.subplots()
    try:
        drawn = draw_summary(ax, points, x_key="x", group_key=group_key)
        ticks = [label.get_text() for label in ax.get_xticklabels()]
        lines = [(ticks, list(g.means.get_xdata()), list(g.means.get_ydata())) for g in drawn]
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


def _segments(bars) -> list[tuple[float, float]]:
    """(bottom, top) of each bar of an ErrorbarContainer, rounded."""
    return [tuple(np.round(s[:, 1], 6)) for s in bars.lines[2][0].get_segments()]


def test_draw_summary_bars_are_the_interval_and_seeds_are_dots_on_a_log_axis():
    fig, ax = plt.subplots()
    try:
        points = [_point(32, 0.74, half=0.01, seeds=[0.73, 0.75]), _point(128, 0.80, half=0.03, seeds=[0.78, 0.82, 0.8])]
        (group,) = draw_summary(ax, points, x_key="data.batch_size")
        assert ax.get_xscale() == "log"  # batch sizes double: a log axis even over a 4x span
        assert _segments(group.seeds_bars) == [(73.0, 75.0), (77.0, 83.0)]
        assert group.test_set_bars is None  # these points carry no test-set interval
        assert np.round(group.dots.get_offsets()[:, 1], 6).tolist() == [73.0, 75.0, 78.0, 82.0, 80.0]
    finally:
        plt.close(fig)


def _with_boot(point: dict, low: float, high: float) -> dict:
    return {**point, "boot_low": low, "boot_high": high}


def test_summary_of_categories_draws_points_without_a_joining_line_and_both_intervals():
    points = [_with_boot(_point("mlp", 0.863, half=0.006, seeds=[0.86, 0.87, 0.858]), 0.836, 0.889),
              _with_boot(_point("cnn", 0.883, half=0.009, seeds=[0.88, 0.89, 0.878]), 0.858, 0.907)]
    reference = [(0.625, "always answering pneumonia (test set): 62.5 %")]
    fig = summary_figure(points, "model", reference=reference)
    try:
        ax = fig.axes[0]
        for line in ax.get_lines():  # the reference line alone is a line; the means are bare markers
            assert line.get_linestyle() == "None" or line.get_label() == reference[0][1], line.get_label()
        (drawn,) = draw_summary(ax, points, "model")  # once more, to inspect what it returns
        assert drawn.means.get_linestyle() == "None" and drawn.means.get_marker() == "o"
        assert list(drawn.means.get_xdata()) == [0.0, 1.0] and list(drawn.means.get_ydata()) == pytest.approx([86.3, 88.3])
        # The seeds interval thick and short, the test-set interval thin, long and capped: each at its ends.
        assert _segments(drawn.seeds_bars) == [(85.7, 86.9), (87.4, 89.2)]
        assert _segments(drawn.test_set_bars) == [(83.6, 88.9), (85.8, 90.7)]
        seeds_width = drawn.seeds_bars.lines[2][0].get_linewidth()[0]
        test_width = drawn.test_set_bars.lines[2][0].get_linewidth()[0]
        assert seeds_width >= 3 * test_width and drawn.test_set_bars.lines[1] and not drawn.seeds_bars.lines[1]
        # Seeds clearly visible: opaque dots of a readable size, one per seed.
        assert drawn.dots.get_alpha() >= 0.8 and min(drawn.dots.get_sizes()) >= 20
        assert np.round(drawn.dots.get_offsets()[:, 1], 6).tolist() == [86.0, 87.0, 85.8, 88.0, 89.0, 87.8]
        # The dashed reference is drawn, labelled and inside the y range; the scale is named.
        (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert list(dashed.get_ydata()) == [62.5, 62.5] and dashed.get_label() == reference[0][1]
        assert ax.get_ylim()[0] < 62.5 < 86 < ax.get_ylim()[1] < 100
        assert ax.get_ylabel() == "test accuracy (%)"
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend == [SEEDS_LABEL, TEST_SET_LABEL, "each seed", reference[0][1]]
    finally:
        plt.close(fig)


def test_summary_of_numbers_keeps_its_line_and_without_a_reference_starts_at_zero():
    fig, ax = plt.subplots()
    try:
        (group,) = draw_summary(ax, [_point(32, 0.74), _point(64, 0.76)], "data.batch_size")
        assert group.means.get_linestyle() == "-"  # numbers are placed to scale and may read as a trend
        assert ax.get_ylim()[0] <= 0 < 74  # no reference line: the axis starts at the stated floor, 0 %
    finally:
        plt.close(fig)


def test_summary_axis_label_follows_the_metric_table():
    assert metric_axis_label(BY_KEY["test_acc"]) == "test accuracy (%)"
    assert metric_axis_label(BY_KEY["test_auc"]) == "test AUC (0–1)"
    assert metric_axis_label(BY_KEY["test_sensitivity"]) == "test sensitivity (%)"
    assert metric_axis_label(BY_KEY["val_acc"]) == "validation accuracy (%)"
    fig, ax = plt.subplots()
    try:
        drawn = draw_summary(ax, [_point("mlp", 0.73, half=0.01)], "model", percent=False,
                             reference=[(0.5, "chance: AUC 0.500")])
        assert list(drawn[0].means.get_ydata()) == [0.73] and ax.get_ylim()[0] < 0.5  # a fraction, not percent
        assert summary_legend(ax, drawn)[1] == [SEEDS_LABEL, "chance: AUC 0.500"]
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
        assert ax_loss.get_ylabel() == "loss (CE)" and ax_acc.get_title() == "accuracy (%)"
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

