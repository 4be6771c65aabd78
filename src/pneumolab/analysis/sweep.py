"""Sweep summaries: `summary.csv`, `summary.md` and `summary.png` of a multirun directory.

A summary is rebuilt from the job files on disk (`results.json` of a finished point,
`error.json` of a failed one, see `pneumolab.analysis.points`), never from what a launcher hands
back, so it is the same whichever launcher ran the jobs, and `pneumolab-summarize` can
rebuild it after points were added or compare runs from several sweeps.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumolab.files import atomic_open, atomic_write_text, written_together
from pneumolab.record.metric_table import BY_KEY, METRICS, Metric
from pneumolab.record.names import SUMMARY_CSV, SUMMARY_MD, SUMMARY_PNG
from pneumolab.analysis.points import MANY_POINTS, NOT_SET, Point, all_pneumonia_rate, rank_points
from pneumolab.analysis.summary import Summary, build_summary
from pneumolab.analysis.summary_md import describe_comparison, format_markdown, label_point, main_effect, tested_text

log = logging.getLogger("pneumolab")

STATS = ("mean", "std", "ci95_low", "ci95_high", "ci95_clipped")
BOOT_STATS = ("boot95_low", "boot95_high")

# Past this many tests the end of a sweep names the table instead of printing each line.
MAX_CONSOLE_COMPARISONS = 4


# --- writing -----------------------------------------------------------------


def format_csv_row(point: Point, summary: Summary, out_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"point": label_point(point, out_dir)}
    row.update({key: point.setting(key) for key in (*summary.labels, *summary.swept)})
    row.update(overrides=" ".join(point.overrides), status="ok" if point.ok else "failed", error=point.error)
    row.update(n_seeds=len(point.per_seed) if point.ok else None, n_diverged=point.n_diverged if point.ok else None)
    for metric in METRICS:
        stats = point.stats(metric.key)
        row.update({f"{metric.key}_{stat}": stats.get(stat) for stat in STATS})
        if metric.test_set:
            row.update({f"{metric.key}_{stat}": stats.get(stat) for stat in BOOT_STATS})
    row["ensemble_test_acc"] = point.ensemble_acc
    return row


def write_csv(summary: Summary, out_dir: Path) -> None:
    rows = [format_csv_row(p, summary, out_dir) for p in summary.points]
    with atomic_open(out_dir / SUMMARY_CSV, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        # None (a statistic no seed could give) becomes an empty cell.
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def parse_number(text: str) -> float | int | str:
    """Numbers typed in overrides become numbers, so the plot spaces them to scale."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def plotted_point(point: Point, x: Any, group: str | None, metric: str = "test_acc") -> dict[str, Any]:
    """What the summary plots take of a point: its mean, both intervals (as summary.md prints them), seeds."""
    stats = point.stats(metric)
    return {"x": x, "group": group, "mean": stats["mean"], "low": stats["ci95_low"], "high": stats["ci95_high"],
            "boot_low": stats.get("boot95_low"), "boot_high": stats.get("boot95_high"),
            "seeds": [v for v in point.seed_values(metric) if v is not None]}


def reference_lines(metric: Metric, finished: Sequence[Point]) -> list[tuple[float, str]]:
    """What a reader measures the points against, as (value, label): for an accuracy, the accuracy of
    always answering pneumonia on that split (one line per distinct split among the points); for a
    balanced accuracy or an AUC, chance (0.5). None for the rest, whose axes start at 0."""
    kind = metric.key.split("_", 1)[1]  # acc, balanced_acc, auc, sensitivity, ...
    split = "test" if metric.test_set else "validation"
    if kind == "acc":
        rates = dict.fromkeys(round(r, 9) for p in finished
                              if (r := all_pneumonia_rate(p.results, "test" if metric.test_set else "val")) is not None)
        return [(r, f"always answering pneumonia ({split} set): {100 * r:.1f} %") for r in rates]
    if kind == "balanced_acc":
        return [(0.5, "chance: 50.0 % (any model that ignores the image)")]
    if kind == "auc":
        return [(0.5, "chance: AUC 0.500")]
    return []


def effect_panels(summary: Summary, finished: list[Point]) -> list[tuple[str, list[dict]]]:
    """One panel per swept key: each value's mean over the other keys, its interval, and the points as dots."""
    panels = []
    for key in summary.swept:
        values = list(dict.fromkeys(p.setting(key) for p in finished))
        effects = [main_effect(finished, key, v, summary.metric) for v in values]
        panels.append((key, [{"x": parse_number(v), "group": None, "mean": e["mean"], "low": e["ci95_low"],
                              "high": e["ci95_high"],
                              "seeds": [p.mean(summary.metric) for p in finished if p.setting(key) == v]}
                             for v, e in zip(values, effects)]))
    return panels


def point_names(points: Sequence[Point], summary: Summary, out_dir: Path) -> tuple[str, list[str]]:
    """(axis name, names) of points on an axis of their own: their label (experiment=...) where exactly
    one label tells every point apart, else their folders."""
    if len(summary.labels) == 1:
        names = [p.setting(summary.labels[0]) for p in points]
        if NOT_SET not in names and len(set(names)) == len(names):
            return summary.labels[0], names
    return "point", [label_point(p, out_dir) for p in points]


def plot_points(summary: Summary, out_dir: Path) -> bool:
    """Write summary.png; False (and no stale figure left) when no point has a value of the metric."""
    from pneumolab.outputs.plots import metric_axis_label, plot_search, plot_summary, plot_summary_panels

    path = out_dir / SUMMARY_PNG
    metric = BY_KEY["val_acc" if summary.search else summary.metric]
    finished = rank_points(summary.points, metric.key)
    if not finished:
        path.unlink(missing_ok=True)
        return False
    finished = [p for p in summary.points if p in finished]  # back in job order
    reference = reference_lines(metric, finished)
    if summary.search:
        trials = [plotted_point(p, int(p.job_dir.name) if p.job_dir.name.isdigit() else i, None, "val_acc")
                  for i, p in enumerate(finished)]
        plot_search(trials, path, reference=reference)
    elif len(finished) > MANY_POINTS and summary.swept:
        plot_summary_panels(effect_panels(summary, finished), path, metric=metric, reference=reference)
    else:
        # One or two swept keys read as a curve (and one line per value of the second);
        # more than that has no natural x axis, so each point gets its own place.
        by_point = len(summary.swept) not in (1, 2)
        if by_point:
            x_key, xs = point_names(finished, summary, out_dir)
        else:
            x_key = summary.swept[0]
            xs = [parse_number(p.setting(x_key)) for p in finished]
        group_key = summary.swept[1] if len(summary.swept) == 2 else None
        plotted = [plotted_point(p, x, p.setting(group_key) if group_key else None, metric.key)
                   for p, x in zip(finished, xs)]
        name = metric_axis_label(metric).rsplit(" (", 1)[0]
        plot_summary(plotted, path, x_key, group_key, title=f"{name} per point" if by_point else None,
                     metric=metric, reference=reference)
    return True


def write_summary(summary: Summary, out_dir: Path) -> None:
    """summary.csv, summary.png and summary.md into `out_dir`, which appear together: a summary stopped
    half-way leaves the previous one whole, never a csv and an md that list different points."""
    out_dir = Path(out_dir)
    with written_together():
        write_csv(summary, out_dir)
        plotted = plot_points(summary, out_dir)
        atomic_write_text(out_dir / SUMMARY_MD, format_markdown(summary, out_dir, plotted))


# --- the callback ------------------------------------------------------------


class SweepSummaryCallback(Callback):
    """Summarise the sweep directory when a multirun ends (in the launching process, any launcher)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = build_summary([sweep_dir])
        if not summary.points:
            log.error("no job of the sweep left a results.json or error.json in %s: no summary written", sweep_dir)
            return
        write_summary(summary, sweep_dir)
        for point in summary.failed:
            log.error("failed point %s (%s): %s", point.job_dir.name, " ".join(point.overrides), point.error)
        if len(summary.comparisons) <= MAX_CONSOLE_COMPARISONS:
            for comparison in summary.comparisons:
                log.info("%s", describe_comparison(comparison, sweep_dir))
        else:  # a large sweep's tests belong in its files, not on the console
            log.info("%d comparisons of %s: see the significance table of %s", len(summary.comparisons),
                     BY_KEY[summary.metric].label, sweep_dir / SUMMARY_MD)
        if not summary.comparisons and (untested := tested_text(summary)):
            log.info("%s", untested)
        log.info("sweep summary of %d points: %s", len(summary.points), sweep_dir.absolute() / SUMMARY_MD)
