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
import warnings
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on laptops, CI and cluster nodes without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

from pneumolab.files import atomic_write_bytes  # noqa: E402

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


def draw_curves(ax_acc: Axes, ax_loss: Axes, history: Sequence[dict]) -> None:
    """Draw the "model accuracy" and "model loss" panels of `history` onto the given axes.

    Each panel's lines are, in order, the train and the validation mean over seeds.
    """
    n = len(history)
    spread = f"mean, band: min–max over {n} seed{'s' if n != 1 else ''}"
    # Fixed legend corners where curves rarely are (accuracy rises, loss falls): matplotlib's
    # "best" search over the bands makes saving several times slower.
    for ax, metric, title, ylabel, corner in (
        (ax_acc, "acc", "model accuracy", "accuracy (fraction)", "lower right"),
        (ax_loss, "loss", "model loss", "loss", "upper right"),
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
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc=corner, fontsize="small")


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> None:
    """The job's `curves.png`: accuracy and loss per epoch, train vs validation, over seeds."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        fig.subplots_adjust(**CURVE_MARGINS)
        draw_curves(ax_acc, ax_loss, history)
        if title:
            fig.suptitle(title)
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


def plot_roc(rocs: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> None:
    """The job's `roc.png`: one test ROC curve per seed, its AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    try:
        fig.subplots_adjust(left=0.13, right=0.96, bottom=0.1, top=0.93)
        for roc in rocs:
            ax.plot(roc["fpr"], roc["tpr"], label=f"seed {roc['seed']} (AUC {roc['auc']:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title(title or "test ROC")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        _save(fig, path)
    finally:
        plt.close(fig)


def draw_summary(ax: Axes, points: Sequence[dict], x_key: str, group_key: str | None = None) -> None:
    """Draw test accuracy (mean ± std over seeds) against the swept value onto `ax`.

    Points are {"x", "group", "mean", "std", "n"}. Non-numeric x values (strings) are
    categories, kept in the order they first appear; numbers are placed to scale, on a
    log axis when they span two decades or more (learning rates). With `group_key`, each
    group value gets its own error-bar line, in order of first appearance, nudged
    sideways so the bars do not overlap. Points without a mean (every seed diverged)
    are left out.
    """
    points = [p for p in points if p.get("mean") is not None]
    if not points:
        raise ValueError("no sweep point has a test accuracy to plot")
    categorical = not all(_is_number(p["x"]) for p in points)
    if categorical:
        labels = list(dict.fromkeys(str(p["x"]) for p in points))
        ticks: list[float] = list(range(len(labels)))
        position = {label: float(i) for i, label in enumerate(labels)}
        points = [{**p, "x": position[str(p["x"])]} for p in points]
    else:
        ticks = sorted({p["x"] for p in points})
        labels = [f"{x:g}" for x in ticks]
        if ticks[0] > 0 and ticks[-1] >= 100 * ticks[0]:
            ax.set_xscale("log")

    groups = list(dict.fromkeys(p.get("group") for p in points)) if group_key else [None]
    for i, group in enumerate(groups):
        members = sorted((p for p in points if not group_key or p.get("group") == group), key=lambda p: p["x"])
        bars = ax.errorbar(
            [p["x"] for p in members],
            [p["mean"] for p in members],
            yerr=[p.get("std") or 0.0 for p in members],
            marker="o",
            capsize=4,
            label=f"{group_key}={group}" if group_key else None,
        )
        # Matplotlib sizes the axes only from artists in plain data coordinates, so the
        # sideways nudge is applied after the points have set the limits.
        shift = offset_copy(ax.transData, fig=ax.figure, x=6 * (i - (len(groups) - 1) / 2), units="points")
        for artist in bars.get_children():
            artist.set_transform(shift)
    ax.set_xticks(ticks, labels)
    if categorical:
        ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(x_key)
    ax.set_ylabel("test accuracy (fraction, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if group_key:
        ax.legend(fontsize="small")


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
        ax.set_title(title or f"test accuracy vs {x_key}")
        _save(fig, path)
    finally:
        plt.close(fig)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _save(fig: Figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())

