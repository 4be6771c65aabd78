"""The PNG figures of a job, a sweep and the report.

Curves show the mean over seeds with a min–max band, so a figure never passes one
lucky run off as the result. Diverged seeds carry NaN, which the statistics skip.
Every figure is rendered in memory and written atomically, then closed, so long
sweeps neither leak figures nor leave half-written PNGs behind.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import textwrap
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on laptops, CI and cluster nodes without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from pneumolab.config import layer_sizes  # noqa: E402
from pneumolab.files import atomic_write_bytes  # noqa: E402
from pneumolab.record.metric_table import BY_KEY, Metric  # noqa: E402
from pneumolab.record.metrics import ECE_BINS  # noqa: E402

DPI = 110
# Fixed margins (fractions of the figure) for the accuracy/loss pair: the figure size is fixed
# too, and a layout engine would cost more time than drawing, in every job of a sweep. The
# legend sits below the panels (LEGEND_IN inches), where no curve or test mark can hide behind it.
CURVE_MARGINS = dict(left=0.065, right=0.985, bottom=0.22, top=0.86, wspace=0.22)
CURVE_PANEL_IN, LEGEND_IN = 4.6, 0.95
_SPLITS = (("train", "train", "tab:blue"), ("val", "validation", "tab:orange"))  # key prefix, legend name, colour
TEST_MARK_LABEL = "test (evaluated checkpoint)"


@dataclass(frozen=True)
class Band:
    """One metric across seeds, per epoch: the mean line and the min–max band around it."""

    epoch: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_band(history: Sequence[dict], key: str) -> Band:
    """Mean, min and max of `key` (e.g. "val_acc") over seeds at every epoch any seed reached.

    Seeds may stop at different epochs; a seed missing an epoch, or holding NaN there,
    does not count towards that epoch. An epoch no seed has a number for stays NaN,
    which leaves a gap in the line.
    """
    if not history:
        raise ValueError("history is empty: no seed to plot")
    epochs = np.unique(np.concatenate([np.asarray(run["epoch"], dtype=int) for run in history]))
    table = np.full((len(history), epochs.size), np.nan)
    for row, run in enumerate(history):
        table[row, np.searchsorted(epochs, run["epoch"])] = np.asarray(run[key], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs are expected: they become gaps
        return Band(epochs, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0))


def evaluated_checkpoints(per_seed: Sequence[dict], eval_checkpoint: str = "last") -> list[tuple[int, float]]:
    """(epoch, test accuracy) of each seed that did not diverge, at the epoch whose weights were
    tested: its last epoch, or (trainer.eval_checkpoint=best_val) its best validation epoch."""
    key = "best_epoch" if eval_checkpoint == "best_val" else "epochs_run"
    return [(int(entry[key]), float(entry["test_acc"])) for entry in per_seed
            if not entry.get("diverged") and entry.get("test_acc") is not None and entry.get(key)]


def draw_curves(ax_acc: Axes, ax_loss: Axes, history: Sequence[dict], loss: str | None = None,
                evaluated: Sequence[tuple[int, float]] = ()) -> None:
    """Draw the "accuracy (%)" and "loss (BCE)" panels of `history` onto the given axes.

    Each panel's lines are, in order, the train and the validation mean over seeds; accuracy
    in percent. `loss` names the loss ("BCE", "CE"); epochs are whole-number ticks. `evaluated`
    (see `evaluated_checkpoints`) adds the test accuracy of the tested weights to the accuracy
    panel: the mean over seeds at the tested epoch, a bar over the seeds' range. The legend is
    the caller's (`curve_legend`), below the panels.
    """
    n = len(history)
    spread = f"mean, band: min–max over {n} seed{'s' if n != 1 else ''}"
    for ax, metric, title, scale in (
        (ax_acc, "acc", "accuracy (%)", 100.0),
        (ax_loss, "loss", f"loss ({loss})" if loss else "loss", 1.0),
    ):
        for prefix, name, color in _SPLITS:
            band = seed_band(history, f"{prefix}_{metric}")
            # Markers keep an epoch visible when NaN neighbours cut it off from the line.
            ax.plot(
                band.epoch, scale * band.mean, color=color, marker="o", markersize=2.5,
                label=f"{name} ({spread})",
            )
            ax.fill_between(band.epoch, scale * band.low, scale * band.high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 2-epoch run gets no tick at 1.5
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    if evaluated:
        draw_test_mark(ax_acc, evaluated)


def draw_test_mark(ax: Axes, evaluated: Sequence[tuple[int, float]]) -> None:
    """The test accuracy of the tested weights: a black diamond at the mean over seeds, at the tested
    epoch (a tick across the epochs when seeds were tested at different ones), a bar over the seeds'
    range, so that a validation curve is never read as the result."""
    epochs = np.array([epoch for epoch, _ in evaluated], dtype=float)
    accs = 100 * np.array([acc for _, acc in evaluated], dtype=float)
    mean = float(accs.mean())
    where = f"epoch {epochs[0]:.0f}" if np.ptp(epochs) == 0 else f"epochs {epochs.min():.0f}–{epochs.max():.0f}"
    if np.ptp(epochs) > 0:
        ax.plot(epochs, accs, linestyle="none", marker="x", markersize=4, color="black", alpha=0.6)
        ax.hlines(mean, epochs.min(), epochs.max(), color="black", linewidth=1.5)
    x = float(np.median(epochs))
    ax.errorbar([x], [mean], yerr=[[mean - accs.min()], [accs.max() - mean]], fmt="D", color="black",
                markersize=6, capsize=3, zorder=4, label=f"{TEST_MARK_LABEL}, {where}: {mean:.1f} % (mean; bar: seeds)")


def curve_legend(owner, ax_acc: Axes) -> None:
    """The legend of a curve pair below it, on `owner` (a figure or subfigure)."""
    handles, labels = ax_acc.get_legend_handles_labels()
    owner.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize="small", frameon=False,
                 bbox_to_anchor=(0.5, 0.0))


# Title text per figure width (characters of the default font), and the height of one line (inches).
CURVES_TITLE_WIDTH, ROC_TITLE_WIDTH, TITLE_LINE_IN = 110, 52, 0.22


def curves_figure(history: Sequence[dict], title: str | None = None, loss: str | None = None,
                  evaluated: Sequence[tuple[int, float]] = ()) -> Figure:
    """The accuracy and loss pair of `plot_curves`, with `title` wrapped above it; the caller closes it."""
    lines = textwrap.wrap(title, CURVES_TITLE_WIDTH) if title else []
    # The figure grows by the title's extra lines, so the panels keep their size and nothing is cut off.
    extra = TITLE_LINE_IN * max(len(lines) - 1, 0)
    height = CURVE_PANEL_IN + extra
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, height))
    with _closed_on_error(fig):
        margins = CURVE_MARGINS | dict(top=1 - (0.14 * CURVE_PANEL_IN + extra) / height, bottom=LEGEND_IN / height)
        fig.subplots_adjust(**margins)
        draw_curves(ax_acc, ax_loss, history, loss, evaluated)
        curve_legend(fig, ax_acc)
        if lines:
            fig.suptitle("\n".join(lines), y=1 - 0.08 / height, va="top")
    return fig


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                loss: str | None = None, evaluated: Sequence[tuple[int, float]] = ()) -> None:
    """The job's `curves.png`: accuracy and loss per epoch, train vs validation, over seeds, and the
    test accuracy of the tested weights (`evaluated`, see `evaluated_checkpoints`)."""
    fig = curves_figure(history, title, loss, evaluated)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_curves_grid(
    histories: Sequence[tuple[str, Sequence[dict]]], path: str | os.PathLike, ncols: int = 2
) -> None:
    """Several settings' curves in one figure, `ncols` settings side by side per row.

    Each setting gets its titled accuracy and loss pair, as in `plot_curves`.
    """
    if not histories:
        raise ValueError("no settings to plot")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(ncols, len(histories))
    nrows = math.ceil(len(histories) / ncols)
    fig = plt.figure(figsize=(11 * ncols, CURVE_PANEL_IN * nrows))
    try:
        cells = fig.subfigures(nrows, ncols, squeeze=False).ravel()
        for cell, (title, history) in zip(cells, histories):
            ax_acc, ax_loss = cell.subplots(1, 2)
            cell.subplots_adjust(**CURVE_MARGINS | dict(bottom=LEGEND_IN / CURVE_PANEL_IN))
            draw_curves(ax_acc, ax_loss, history)
            curve_legend(cell, ax_acc)
            cell.suptitle(title, fontweight="bold")
        _save(fig, path)
    finally:
        plt.close(fig)


ENSEMBLE_ROC_STYLE = dict(color="black", linewidth=2.6, zorder=3)


def roc_figure(rocs: Sequence[dict], title: str | None = None, ensemble: dict | None = None) -> Figure:
    """The figure of `plot_roc`: "test ROC" and `title` wrapped above the curves; the caller closes it."""
    lines = ["test ROC"] + (textwrap.wrap(title, ROC_TITLE_WIDTH) if title else [])
    extra = TITLE_LINE_IN * (len(lines) - 1)
    height = 5.5 + extra
    fig, ax = plt.subplots(figsize=(5.5, height))
    with _closed_on_error(fig):
        fig.subplots_adjust(left=0.13, right=0.96, bottom=0.1 * 5.5 / height, top=1 - (0.07 * 5.5 + extra) / height)
        for roc in rocs:
            ax.plot(roc["fpr"], roc["tpr"], linewidth=1, alpha=0.75, label=f"seed {roc['seed']} (AUC {roc['auc']:.3f})")
        if ensemble is not None:
            ax.plot(ensemble["fpr"], ensemble["tpr"], **ENSEMBLE_ROC_STYLE,
                    label=f"ensemble: mean P over {ensemble['n_seeds']} seeds (AUC {ensemble['auc']:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title("\n".join(lines))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_roc(rocs: Sequence[dict], path: str | os.PathLike, title: str | None = None,
             ensemble: dict | None = None) -> None:
    """The job's `roc.png`: one test ROC curve per seed, and the ensemble's (the mean probability over
    the seeds: `fpr`, `tpr`, `auc`, `n_seeds`) in bold, each AUC in the legend."""
    fig = roc_figure(rocs, title, ensemble)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


# Each seed faint, so that the ensemble stands out however many seeds there are.
SEED_CALIBRATION_STYLE = dict(color="tab:blue", alpha=0.3, linewidth=1, marker="o", markersize=3)
ENSEMBLE_CALIBRATION_STYLE = dict(color="tab:red", linewidth=2.2, marker="o", markersize=5)


def calibration_figure(seeds: Sequence[dict], ensemble: dict | None, title: str | None = None) -> Figure:
    """The figure of `plot_calibration`: the reliability diagram over the ensemble's images per bin,
    the legend below both, where no bin's point can hide behind it; the caller closes it."""
    lines = ["test calibration (reliability diagram)"] + (textwrap.wrap(title, ROC_TITLE_WIDTH) if title else [])
    extra = TITLE_LINE_IN * (len(lines) - 1)
    height = 7.8 + extra
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, height), gridspec_kw=dict(height_ratios=[3.2, 1]))
    with _closed_on_error(fig):
        fig.subplots_adjust(left=0.15, right=0.96, bottom=1.1 / height, top=1 - (0.45 + extra) / height, hspace=0.32)
        draw_reliability(ax, seeds, ensemble)
        draw_bin_counts(ax_count, ensemble)
        ax.set_title("\n".join(lines))
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize="small", frameon=False)
    return fig


def draw_reliability(ax: Axes, seeds: Sequence[dict], ensemble: dict | None) -> None:
    """Fraction pneumonia against mean P(pneumonia) per bin: each seed faint, the ensemble bold."""
    for i, curve in enumerate(seeds):
        ax.plot(*with_gaps(curve), **SEED_CALIBRATION_STYLE, label=None if i else seeds_label(seeds))
    if ensemble is not None:
        ax.plot(*with_gaps(ensemble), **ENSEMBLE_CALIBRATION_STYLE,
                label=f"ensemble: mean P over {ensemble['n_seeds']} seeds (ECE {ensemble['ece']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set_xlim(-0.02, 1.02)  # a margin, so that points at 0 and 1 show whole
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean predicted P(pneumonia)")
    ax.set_ylabel("fraction pneumonia")
    ax.grid(alpha=0.3)


def draw_bin_counts(ax: Axes, ensemble: dict | None) -> None:
    """The ensemble's test images per bin: a point far off the diagonal over a handful of images means little."""
    if ensemble is not None:
        edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
        ax.bar(edges[ensemble["bin"]], ensemble["count"], width=1 / ECE_BINS, align="edge",
               color=ENSEMBLE_CALIBRATION_STYLE["color"], alpha=0.6, edgecolor="white")
        ax.set_yscale("log")  # the confident end bins hold most images; the middle ones would vanish
        ax.yaxis.set_major_formatter(FuncFormatter(lambda count, _: f"{count:g}"))  # 1, 10, 100, not 10^0
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"predicted P(pneumonia), {ECE_BINS} equal-width bins")
    ax.set_ylabel("images (ensemble)")
    ax.grid(alpha=0.3, axis="y")


def with_gaps(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    """The curve over every bin, NaN at the bins without images, so no line bridges an empty bin."""
    x, y = np.full(ECE_BINS, np.nan), np.full(ECE_BINS, np.nan)
    x[curve["bin"]], y[curve["bin"]] = curve["mean_p"], curve["fraction"]
    return x, y


def seeds_label(seeds: Sequence[dict]) -> str:
    """"seed 0 (ECE 0.041)", or "each of 5 seeds (ECE 0.041–0.063)": the range of their ECEs."""
    low, high = (f"{ece:.3f}" for ece in (min(c["ece"] for c in seeds), max(c["ece"] for c in seeds)))
    if len(seeds) == 1:
        return f"seed {seeds[0]['seed']} (ECE {low})"
    return f"each of {len(seeds)} seeds (ECE {low if low == high else f'{low}–{high}'})"


def plot_calibration(seeds: Sequence[dict], ensemble: dict | None, path: str | os.PathLike,
                     title: str | None = None) -> None:
    """The job's `calibration.png`: the reliability diagram of the test predictions.

    `seeds` and `ensemble` hold `metrics.reliability_curve` of each seed that did not diverge
    and of the mean probability over them, with their ECE (and `seed`, `n_seeds`); a bin
    without images is not drawn.
    """
    fig = calibration_figure(seeds, ensemble, title)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


LOSS_NAMES = {"bce": "BCE", "ce": "CE"}


def loss_name(config: dict) -> str | None:
    """The loss a job's head trains with, as its plots name it ("BCE", "CE")."""
    return LOSS_NAMES.get(str(config.get("head", {}).get("name")))


def setting_title(config: dict) -> str:
    """A job's setting in one line for its plots: head, batch, optimizer and lr, schedule, model, data."""
    head, data, opt, model = (config.get(k) or {} for k in ("head", "data", "optimizer", "model"))
    parts = [
        f"{loss_name(config) or head.get('name')} head",
        f"batch {data.get('batch_size')}",
        f"{opt.get('name')} lr {opt.get('lr'):g}" if isinstance(opt.get("lr"), (int, float)) else str(opt.get("name")),
        schedule_text(config.get("scheduler") or {}),
        model_text(model),
        f"{data.get('name')} data",
        f"{(config.get('trainer') or {}).get('epochs')} epochs",
    ]
    tag = config.get("tag")
    return f"{tag}: {', '.join(parts)}" if tag else ", ".join(parts)


def schedule_text(scheduler: dict) -> str:
    name = scheduler.get("name")
    texts = {
        "step": lambda: f"StepLR ×{scheduler.get('gamma')} every {scheduler.get('step_size')} epochs",
        "multistep": lambda: f"MultiStepLR ×{scheduler.get('gamma')} at {scheduler.get('milestones')}",
        "cosine": lambda: f"cosine lr over {scheduler.get('t_max') or 'all'} epochs",
        "plateau": lambda: f"lr ×{scheduler.get('factor')} on plateau ({scheduler.get('patience')} epochs)",
        "none": lambda: "constant lr",
    }
    return texts.get(name, lambda: f"scheduler {name}")()


def model_text(model: dict) -> str:
    """The model's class and its layer sizes: `MLP 128-128-128`, `CNN 16-32`, `ResNet18`, `TinyNet`."""
    target = model.get("_target_")
    # Runs saved before models were named by _target_ record `name: mlp`.
    title = str(target).rsplit(".", 1)[-1] if target else str(model.get("name")).upper()
    sizes = layer_sizes({k: v for k, v in model.items() if k != "_target_"})
    return f"{title} {'-'.join(map(str, sizes))}" if sizes else title


LOG_X_KEYS = ("batch_size", "lr")  # swept keys read on a log axis: sizes double, rates go by decades
# The two intervals of a point, told apart by their stroke: the seeds interval thick and short,
# the test-set interval (usually several times wider) thin, long and capped.
SEEDS_BAR = dict(elinewidth=5.5, capsize=0, alpha=0.45)
TEST_SET_BAR = dict(elinewidth=1.2, capsize=6, capthick=1.2)
SEEDS_LABEL = "95 % CI over seeds (thick bar)"
TEST_SET_LABEL = "95 % test-set interval: bootstrap over test images (thin capped bar)"
POINTS_LABEL = "95 % CI over points (thick bar)"
GROUP_SPACING_PT, DOTS_OFFSET_PT = 16, 8  # sideways nudge between groups, and of the seed dots beside their bars
REFERENCE_STYLE = dict(color="dimgrey", linestyle="--", linewidth=1.2, zorder=1)
_GREY = "dimgrey"


def metric_axis_label(metric: Metric) -> str:
    """"test accuracy (%)", "test AUC (0–1)", "validation accuracy (%)": the metric and its scale."""
    name = metric.label
    if name.startswith("val "):
        name = "validation " + name[4:]
    elif metric.test_set and not name.startswith("test"):
        name = f"test {name}"
    return f"{name} ({'%' if metric.percent else '0–1'})"


@dataclass(frozen=True)
class DrawnGroup:
    """What `draw_summary` drew of one group: the means (joined by a line only for numeric x), the
    two interval bars (ErrorbarContainers; no test-set bars when no point has that interval) and the
    dots of the seeds."""

    label: str | None
    means: Line2D
    seeds_bars: ErrorbarContainer
    test_set_bars: ErrorbarContainer | None
    dots: PathCollection | None
    interval_label: str = SEEDS_LABEL  # what the thick bar covers


def draw_summary(ax: Axes, points: Sequence[dict], x_key: str, group_key: str | None = None,
                 ylabel: str = "test accuracy (%)", percent: bool = True,
                 reference: Sequence[tuple[float, str]] = (), floor: float | None = 0.0,
                 join: bool | None = None, interval_label: str = SEEDS_LABEL) -> list[DrawnGroup]:
    """Draw a metric against the swept value onto `ax`: each point's mean, its 95 % interval over
    seeds (a thick short bar), its test-set interval (a thin long capped bar), its seeds as dots
    beside the bars; returns what it drew, per group.

    Points are {"x", "group", "mean", "low", "high", "seeds"} and optionally "boot_low",
    "boot_high", fractions, drawn in percent when `percent`. Non-numeric x values (strings) are
    categories, kept in the order they first appear, their points never joined by a line (no
    trend between `mlp` and `cnn`); numbers are placed to scale and joined (unless `join` is
    False), on a log axis for batch sizes and learning rates (LOG_X_KEYS) or when they span two
    decades. With `group_key`, each group value gets its own colour, in order of first
    appearance, nudged sideways so the bars do not overlap. Points without a mean (every seed
    diverged) are left out.

    `reference` lines (value, label), e.g. the accuracy of always answering pneumonia, are drawn
    dashed, and the y axis always reaches them; with none, it reaches `floor` (0 by default), so
    that the axis is never zoomed to the points alone. The legend is the caller's (`summary_legend`).
    """
    points = [p for p in points if p.get("mean") is not None]
    if not points:
        raise ValueError("no sweep point has a value to plot")
    scale = 100.0 if percent else 1.0
    ticks, labels, points, categorical = _place_x(ax, points, x_key)
    groups = list(dict.fromkeys(p.get("group") for p in points)) if group_key else [None]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = []
    for i, group in enumerate(groups):
        members = sorted((p for p in points if not group_key or p.get("group") == group), key=lambda p: p["x"])
        drawn.append(_draw_group(ax, members, GROUP_SPACING_PT * (i - (len(groups) - 1) / 2),
                                 f"{group_key}={group}" if group_key else None, colors[i % len(colors)], scale,
                                 join=not categorical if join is None else join, interval_label=interval_label))
    for value, label in reference:
        ax.axhline(scale * value, **REFERENCE_STYLE, label=label)
    _set_y_range(ax, points, scale, [v for v, _ in reference] or ([] if floor is None else [floor]), percent)
    ax.set_xticks(ticks, labels)
    if categorical:
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return drawn


def summary_legend(ax: Axes, drawn: Sequence[DrawnGroup]) -> tuple[list, list[str]]:
    """Legend entries of `draw_summary`: the groups, the two intervals, the seeds, the reference lines."""
    handles: list = [g.means for g in drawn if g.label]
    labels = [g.label for g in drawn if g.label]
    color = drawn[0].means.get_color() if len(drawn) == 1 else _GREY
    handles.append(Line2D([], [], linestyle="none", marker="|", markersize=16, markeredgewidth=SEEDS_BAR["elinewidth"],
                          color=color, alpha=SEEDS_BAR["alpha"]))
    labels.append(drawn[0].interval_label)
    if any(g.test_set_bars is not None for g in drawn):
        handles.append(Line2D([], [], linestyle="none", marker="|", markersize=16,
                              markeredgewidth=TEST_SET_BAR["elinewidth"], color=color))
        labels.append(TEST_SET_LABEL)
    if any(g.dots is not None for g in drawn):
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5, markerfacecolor=color,
                              markeredgecolor="white"))
        labels.append("each seed" if drawn[0].interval_label == SEEDS_LABEL else "each point")
    for line in ax.lines:
        if line.get_linestyle() == "--" and not line.get_label().startswith("_"):
            handles.append(line)
            labels.append(line.get_label())
    return handles, labels


def _place_x(ax: Axes, points: list[dict], x_key: str) -> tuple[Sequence[float], list[str], list[dict], bool]:
    """(tick positions, tick labels, points with x as a position, whether x is categorical); sets a
    log x axis where it fits."""
    if not all(_is_number(p["x"]) for p in points):
        labels = list(dict.fromkeys(str(p["x"]) for p in points))
        position = {label: float(i) for i, label in enumerate(labels)}
        return list(range(len(labels))), labels, [{**p, "x": position[str(p["x"])]} for p in points], True
    ticks = sorted({p["x"] for p in points})
    if ticks[0] > 0 and (x_key.rsplit(".", 1)[-1] in LOG_X_KEYS or ticks[-1] >= 100 * ticks[0]):
        ax.set_xscale("log", base=2 if x_key.endswith("batch_size") else 10)
    return ticks, [f"{x:g}" for x in ticks], points, False


def _interval(members: Sequence[dict], low: str, high: str, scale: float) -> tuple[list, np.ndarray, np.ndarray] | None:
    """(x, mean, [below, above]) of the members that have the interval `low`–`high`; None if none has it."""
    have = [p for p in members if p.get(low) is not None and p.get(high) is not None]
    if not have:
        return None
    mean = np.array([p["mean"] for p in have]) * scale
    lows, highs = (np.array([p[k] for p in have]) * scale for k in (low, high))
    return [p["x"] for p in have], mean, np.maximum(0.0, [mean - lows, highs - mean])


def _draw_group(ax: Axes, members: Sequence[dict], nudge: float, label: str | None, color: str, scale: float,
                join: bool, interval_label: str) -> DrawnGroup:
    x = [p["x"] for p in members]
    mean = np.array([p["mean"] for p in members]) * scale
    means = ax.plot(x, mean, color=color, marker="o", markersize=6, markeredgecolor="white", zorder=3,
                    linestyle="-" if join else "none", linewidth=1, label=label)[0]
    seeds = _interval(members, "low", "high", scale)
    seeds_x, seeds_mean, seeds_err = seeds if seeds else (x, mean, np.zeros((2, len(x))))
    seeds_bars = ax.errorbar(seeds_x, seeds_mean, yerr=seeds_err, fmt="none", ecolor=color, zorder=2, **SEEDS_BAR)
    test = _interval(members, "boot_low", "boot_high", scale)
    test_bars = None
    if test:
        test_bars = ax.errorbar(test[0], test[1], yerr=test[2], fmt="none", ecolor=color, zorder=2, **TEST_SET_BAR)
    dots_x = [p["x"] for p in members for _ in p.get("seeds") or ()]
    dots_y = [scale * v for p in members for v in p.get("seeds") or ()]
    dots = None
    if dots_x:
        dots = ax.scatter(dots_x, dots_y, s=22, color=color, alpha=0.85, edgecolors="white", linewidths=0.5, zorder=4)
    # Matplotlib sizes the axes only from artists in plain data coordinates, so the
    # sideways nudge is applied after the points have set the limits.
    shift = offset_copy(ax.transData, fig=ax.figure, x=nudge, units="points")
    means.set_transform(shift)
    for bars in filter(None, (seeds_bars, test_bars)):
        for artist in bars.get_children():
            artist.set_transform(shift)
    if dots is not None:  # beside the bars, so that a thick bar never hides a seed
        dots.set_offset_transform(offset_copy(ax.transData, fig=ax.figure, x=nudge + DOTS_OFFSET_PT, units="points"))
    return DrawnGroup(label, means, seeds_bars, test_bars, dots, interval_label)


def _set_y_range(ax: Axes, points: Sequence[dict], scale: float, anchors: Sequence[float], percent: bool) -> None:
    """A y range over every mean, interval end, seed and anchor (reference line or floor), with a margin."""
    values = [v for p in points for k in ("mean", "low", "high", "boot_low", "boot_high")
              if (v := p.get(k)) is not None]
    values += [v for p in points for v in p.get("seeds") or ()] + list(anchors)
    low, high = scale * min(values), scale * max(values)
    pad = 0.06 * (high - low) or 0.05 * scale
    bottom, top = low - pad, high + pad
    if percent:  # no tick past the ends of the scale: 0 and 100 %
        bottom, top = max(bottom, min(low, 0.0) - 0.02 * scale), min(top, max(high, 100.0) + 0.02 * scale)
    ax.set_ylim(bottom, top)


def plot_summary(
    points: Sequence[dict],
    path: str | os.PathLike,
    x_key: str,
    group_key: str | None = None,
    title: str | None = None,
    metric: Metric | None = None,
    reference: Sequence[tuple[float, str]] = (),
) -> None:
    """A sweep's `summary.png`: a metric (test accuracy by default) with both intervals against the
    swept value, measured against `reference` lines (see `draw_summary`)."""
    fig = summary_figure(points, x_key, group_key, title, metric, reference)
    try:
        _save(fig, path)
    finally:
        plt.close(fig)


def summary_figure(points: Sequence[dict], x_key: str, group_key: str | None = None, title: str | None = None,
                   metric: Metric | None = None, reference: Sequence[tuple[float, str]] = ()) -> Figure:
    """The figure of `plot_summary`; the caller closes it."""
    metric = metric or BY_KEY["test_acc"]
    ylabel = metric_axis_label(metric)
    fig, ax = plt.subplots(figsize=(7, 5.8), layout="constrained")
    with _closed_on_error(fig):
        drawn = draw_summary(ax, points, x_key, group_key, ylabel=ylabel, percent=metric.percent, reference=reference)
        if len({str(p["x"]) for p in points}) > 4 and not all(_is_number(p["x"]) for p in points):
            ax.tick_params(axis="x", labelrotation=30)
        fig.legend(*summary_legend(ax, drawn), loc="outside lower center", fontsize="small", frameon=False)
        ax.set_title(title or f"{ylabel.rsplit(' (', 1)[0]} vs {x_key}", fontsize="medium")
    return fig


def plot_summary_panels(panels: Sequence[tuple[str, Sequence[dict]]], path: str | os.PathLike,
                        metric: Metric | None = None, reference: Sequence[tuple[float, str]] = ()) -> None:
    """summary.png of a sweep of many points: one small panel per swept key (see `draw_summary`).

    Each panel's points are one per value of its key: the mean over the sweep points
    holding it, a 95 % interval over those points, and the points' own means as dots.
    """
    metric = metric or BY_KEY["test_acc"]
    ylabel = metric_axis_label(metric)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows + 0.8), squeeze=False, layout="constrained")
    try:
        drawn = []  # every panel's groups, so the legend names all that any panel shows
        for ax, (key, points) in zip(axes.ravel(), panels):
            drawn += draw_summary(ax, points, key, ylabel=ylabel, percent=metric.percent, reference=reference,
                                  interval_label=POINTS_LABEL)
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        fig.legend(*summary_legend(axes.ravel()[len(panels) - 1], drawn), loc="outside lower center",
                   ncol=2 if ncols > 1 else 1, fontsize="small", frameon=False)
        fig.suptitle(f"mean {ylabel.rsplit(' (', 1)[0]} per value, over the other keys", fontsize="medium")
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_search(trials: Sequence[dict], path: str | os.PathLike, reference: Sequence[tuple[float, str]] = ()) -> None:
    """summary.png of a search: the objective it maximises (mean validation accuracy) per trial.

    Trials are draw_summary points with the trial number as x, not joined (their order is no
    trend); a step line shows the best value found so far.
    """
    fig, ax = plt.subplots(figsize=(7, 5.8), layout="constrained")
    try:
        drawn = draw_summary(ax, trials, "trial", ylabel="validation accuracy (%)", reference=reference, join=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not one tick per trial
        ordered = sorted((t for t in trials if t.get("mean") is not None), key=lambda t: t["x"])
        best = np.maximum.accumulate([100 * t["mean"] for t in ordered])
        step = ax.step([t["x"] for t in ordered], best, where="post", color="grey", linestyle=":", label="best so far")[0]
        handles, labels = summary_legend(ax, drawn)
        fig.legend([*handles, step], [*labels, "best so far"], loc="outside lower center", fontsize="small",
                   frameon=False)
        ax.set_title("search objective: mean validation accuracy per trial", fontsize="medium")
        _save(fig, path)
    finally:
        plt.close(fig)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@contextmanager
def _closed_on_error(fig: Figure) -> Iterator[None]:
    """Close `fig` when drawing it fails, so that no figure stays open."""
    try:
        yield
    except BaseException:
        plt.close(fig)
        raise


def _save(fig: Figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())

