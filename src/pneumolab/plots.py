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
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from pneumolab.files import atomic_write_bytes  # noqa: E402
from pneumolab.metrics import ECE_BINS  # noqa: E402

DPI = 110
# Fixed margins (fractions of the figure) for the accuracy/loss pair: the figure size is fixed
# too, and a layout engine would cost more time than drawing, in every job of a sweep.
CURVE_MARGINS = dict(left=0.065, right=0.985, bottom=0.12, top=0.84, wspace=0.22)
_SPLITS = (("train", "train", "tab:blue"), ("val", "validation", "tab:orange"))  # key prefix, legend name, colour


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


def draw_curves(ax_acc: Axes, ax_loss: Axes, history: Sequence[dict], loss: str | None = None) -> None:
    """Draw the "model accuracy" and "model loss" panels of `history` onto the given axes.

    Each panel's lines are, in order, the train and the validation mean over seeds.
    `loss` names the loss on its axis ("BCE", "CE"); epochs are whole-number ticks.
    """
    n = len(history)
    spread = f"mean, band: min–max over {n} seed{'s' if n != 1 else ''}"
    # Fixed legend corners where curves rarely are (accuracy rises, loss falls): matplotlib's
    # "best" search over the bands makes saving several times slower.
    for ax, metric, title, ylabel, corner in (
        (ax_acc, "acc", "model accuracy", "accuracy (fraction)", "lower right"),
        (ax_loss, "loss", "model loss", f"{loss} loss" if loss else "loss", "upper right"),
    ):
        for prefix, name, color in _SPLITS:
            band = seed_band(history, f"{prefix}_{metric}")
            # Markers keep an epoch visible when NaN neighbours cut it off from the line.
            ax.plot(
                band.epoch, band.mean, color=color, marker="o", markersize=2.5,
                label=f"{name} ({spread})",
            )
            ax.fill_between(band.epoch, band.low, band.high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 2-epoch run gets no tick at 1.5
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc=corner, fontsize="small")


# Title text per figure width (characters of the default font), and the height of one line (inches).
CURVES_TITLE_WIDTH, ROC_TITLE_WIDTH, TITLE_LINE_IN = 110, 52, 0.22


def curves_figure(history: Sequence[dict], title: str | None = None, loss: str | None = None) -> Figure:
    """The accuracy and loss pair of `plot_curves`, with `title` wrapped above it; the caller closes it."""
    lines = textwrap.wrap(title, CURVES_TITLE_WIDTH) if title else []
    # The figure grows by the title's extra lines, so the panels keep their size and nothing is cut off.
    extra = TITLE_LINE_IN * max(len(lines) - 1, 0)
    height = 4.2 + extra
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, height))
    with _closed_on_error(fig):
        margins = CURVE_MARGINS | dict(top=1 - (0.16 * 4.2 + extra) / height, bottom=0.12 * 4.2 / height)
        fig.subplots_adjust(**margins)
        draw_curves(ax_acc, ax_loss, history, loss)
        if lines:
            fig.suptitle("\n".join(lines), y=1 - 0.08 / height, va="top")
    return fig


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str | None = None,
                loss: str | None = None) -> None:
    """The job's `curves.png`: accuracy and loss per epoch, train vs validation, over seeds."""
    fig = curves_figure(history, title, loss)
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
    fig = plt.figure(figsize=(11 * ncols, 4.2 * nrows))
    try:
        cells = fig.subfigures(nrows, ncols, squeeze=False).ravel()
        for cell, (title, history) in zip(cells, histories):
            ax_acc, ax_loss = cell.subplots(1, 2)
            cell.subplots_adjust(**CURVE_MARGINS)
            draw_curves(ax_acc, ax_loss, history)
            cell.suptitle(title, fontweight="bold")
        _save(fig, path)
    finally:
        plt.close(fig)


def roc_figure(rocs: Sequence[dict], title: str | None = None) -> Figure:
    """The figure of `plot_roc`: "test ROC" and `title` wrapped above the curves; the caller closes it."""
    lines = ["test ROC"] + (textwrap.wrap(title, ROC_TITLE_WIDTH) if title else [])
    extra = TITLE_LINE_IN * (len(lines) - 1)
    height = 5.5 + extra
    fig, ax = plt.subplots(figsize=(5.5, height))
    with _closed_on_error(fig):
        fig.subplots_adjust(left=0.13, right=0.96, bottom=0.1 * 5.5 / height, top=1 - (0.07 * 5.5 + extra) / height)
        for roc in rocs:
            ax.plot(roc["fpr"], roc["tpr"], label=f"seed {roc['seed']} (AUC {roc['auc']:.3f})")
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


def plot_roc(rocs: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> None:
    """The job's `roc.png`: one test ROC curve per seed, its AUC in the legend."""
    fig = roc_figure(rocs, title)
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
    name = model.get("name")
    if name == "mlp":
        return "MLP " + "-".join(str(h) for h in model.get("hidden_sizes", []))
    if name == "cnn":
        return "CNN " + "-".join(str(c) for c in model.get("channels", []))
    target = model.get("_target_")
    return str(target).rsplit(".", 1)[-1] if target else str(name)


LOG_X_KEYS = ("batch_size", "lr")  # swept keys read on a log axis: sizes double, rates go by decades
INTERVAL_LABEL = "error bars: 95 % CI over seeds; dots: seeds"


def draw_summary(ax: Axes, points: Sequence[dict], x_key: str, group_key: str | None = None,
                 ylabel: str = "test accuracy (%)") -> None:
    """Draw a metric (mean with its 95 % interval, each seed a faint dot) against the swept value onto `ax`.

    Points are {"x", "group", "mean", "low", "high", "seeds"}, fractions, drawn in
    percent. Non-numeric x values (strings) are categories, kept in the order they
    first appear; numbers are placed to scale, on a log axis for batch sizes and
    learning rates (LOG_X_KEYS) or when they span two decades. With `group_key`, each
    group value gets its own error-bar line, in order of first appearance, nudged
    sideways so the bars do not overlap. Points without a mean (every seed diverged)
    are left out.
    """
    points = [p for p in points if p.get("mean") is not None]
    if not points:
        raise ValueError("no sweep point has a test accuracy to plot")
    ticks, labels, points = _place_x(ax, points, x_key)
    groups = list(dict.fromkeys(p.get("group") for p in points)) if group_key else [None]
    for i, group in enumerate(groups):
        members = sorted((p for p in points if not group_key or p.get("group") == group), key=lambda p: p["x"])
        _draw_group(ax, members, 6 * (i - (len(groups) - 1) / 2), f"{group_key}={group}" if group_key else None)
    ax.set_xticks(ticks, labels)
    if isinstance(ticks, range):
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if group_key:
        ax.legend(fontsize="small")


def _place_x(ax: Axes, points: list[dict], x_key: str) -> tuple[Sequence[float], list[str], list[dict]]:
    """(tick positions, tick labels, points with x as a position); sets a log x axis where it fits."""
    if not all(_is_number(p["x"]) for p in points):
        labels = list(dict.fromkeys(str(p["x"]) for p in points))
        position = {label: float(i) for i, label in enumerate(labels)}
        return range(len(labels)), labels, [{**p, "x": position[str(p["x"])]} for p in points]
    ticks = sorted({p["x"] for p in points})
    if ticks[0] > 0 and (x_key.rsplit(".", 1)[-1] in LOG_X_KEYS or ticks[-1] >= 100 * ticks[0]):
        ax.set_xscale("log", base=2 if x_key.endswith("batch_size") else 10)
    return ticks, [f"{x:g}" for x in ticks], points


def _draw_group(ax: Axes, members: Sequence[dict], nudge: float, label: str | None) -> None:
    x = [p["x"] for p in members]
    mean = np.array([p["mean"] for p in members]) * 100
    low = np.array([p["mean"] if p.get("low") is None else p["low"] for p in members]) * 100
    high = np.array([p["mean"] if p.get("high") is None else p["high"] for p in members]) * 100
    bars = ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=4, label=label)
    seeds_x = [p["x"] for p in members for _ in p.get("seeds", ())]
    seeds_y = [100 * v for p in members for v in p.get("seeds", ())]
    dots = ax.scatter(seeds_x, seeds_y, s=9, alpha=0.3, color=bars.lines[0].get_color(), linewidths=0)
    # Matplotlib sizes the axes only from artists in plain data coordinates, so the
    # sideways nudge is applied after the points have set the limits.
    shift = offset_copy(ax.transData, fig=ax.figure, x=nudge, units="points")
    for artist in bars.get_children():
        artist.set_transform(shift)
    dots.set_offset_transform(shift)  # a scatter places its markers through its offsets


def plot_summary(
    points: Sequence[dict],
    path: str | os.PathLike,
    x_key: str,
    group_key: str | None = None,
    title: str | None = None,
) -> None:
    """A sweep's `summary.png`: test accuracy with error bars against the swept value (see `draw_summary`)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    try:
        draw_summary(ax, points, x_key, group_key)
        ax.set_title(f"{title or f'test accuracy vs {x_key}'}\n({INTERVAL_LABEL})", fontsize="medium")
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_summary_panels(panels: Sequence[tuple[str, Sequence[dict]]], path: str | os.PathLike) -> None:
    """summary.png of a sweep of many points: one small panel per swept key (see `draw_summary`).

    Each panel's points are one per value of its key: the mean over the sweep points
    holding it, a 95 % interval over those points, and the points' own means as dots.
    """
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False, layout="constrained")
    try:
        for ax, (key, points) in zip(axes.ravel(), panels):
            draw_summary(ax, points, key, ylabel="test accuracy (%)")
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        fig.suptitle("mean test accuracy per value, over the other keys "
                     "(error bars: 95 % CI over points; dots: points)", fontsize="medium")
        _save(fig, path)
    finally:
        plt.close(fig)


def plot_search(trials: Sequence[dict], path: str | os.PathLike) -> None:
    """summary.png of a search: the objective it maximises (mean validation accuracy) per trial.

    Trials are draw_summary points with the trial number as x; a step line shows the
    best value found so far.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    try:
        draw_summary(ax, trials, "trial", ylabel="validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # not one tick per trial
        ordered = sorted((t for t in trials if t.get("mean") is not None), key=lambda t: t["x"])
        best = np.maximum.accumulate([100 * t["mean"] for t in ordered])
        ax.step([t["x"] for t in ordered], best, where="post", color="grey", linestyle="--", label="best so far")
        ax.legend(fontsize="small", loc="lower right")
        ax.set_title(f"search objective: mean validation accuracy per trial\n({INTERVAL_LABEL})", fontsize="medium")
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

