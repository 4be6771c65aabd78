"""Sweep summaries: `summary.csv`, `summary.md` and `summary.png` of a multirun directory.

A summary is rebuilt from the job files on disk (`results.json` of a finished point,
`error.json` of a failed one, see `pneumolab.analysis.points`), never from what a launcher hands
back, so it is the same whichever launcher ran the jobs, and `pneumolab-summarize` can
rebuild it after points were added or compare runs from several sweeps.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pneumolab.errors import PneumolabError
from pneumolab.cli.exits import side_command
from pneumolab.files import atomic_open, atomic_write_text, written_together
from pneumolab.record.metric_table import BY_KEY, METRICS, SUMMARY_KEYS, Metric
from pneumolab.analysis.points import (
    MANY_POINTS, NOT_SET, Comparison, Point, all_pneumonia_rate, compare_points, find_common_settings,
    find_differing_settings, find_label_keys, find_points, rank_points,
)
from pneumolab.analysis.summary_md import describe_comparison, format_markdown, label_point, main_effect, tested_text

log = logging.getLogger("pneumolab")

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
STATS = ("mean", "std", "ci95_low", "ci95_high", "ci95_clipped")
BOOT_STATS = ("boot95_low", "boot95_high")
SEARCH_SWEEPER = "optuna"  # a sweep whose sweeper searches: plotted as the objective per trial

_failed_in_last_sweep = False
# Past this many tests the end of a sweep names the table instead of printing each line.
MAX_CONSOLE_COMPARISONS = 4


@dataclass(frozen=True)
class Summary:
    """What summary.csv, summary.md and summary.png show.

    `swept`: the resolved settings that differ between points (what comparisons name);
    `labels`: typed keys that differ but are no setting (experiment=..., trainer.seeds=...);
    `metric`: what the t-tests and summary.png compare (test accuracy unless asked).
    """

    points: list[Point]
    swept: list[str]
    common: dict[str, str]
    comparisons: list[Comparison]
    all_pairs: bool
    search: bool = False
    labels: tuple[str, ...] = ()
    metric: str = "test_acc"
    repeats: tuple[tuple[Point, Point], ...] = ()  # pairs not tested: they repeat a tested pair's question

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if not p.ok]


def is_search(points: Sequence[Point]) -> bool:
    """Whether a searching sweeper ran the sweep: the first job's Hydra record names it."""
    record = points[0].job_dir / ".hydra" / "hydra.yaml" if points else None
    if record is None or not record.is_file():
        return False
    target = OmegaConf.select(OmegaConf.load(record), "hydra.sweeper._target_", default="") or ""
    return SEARCH_SWEEPER in target.lower()


def build_summary(roots: Sequence[Path], all_pairs: bool = False, metric: str = "test_acc") -> Summary:
    points = find_points(roots)
    swept = find_differing_settings(points)
    comparisons, repeats = compare_points(points, swept, all_pairs, metric)
    return Summary(points, swept, find_common_settings(points, swept), comparisons, all_pairs, is_search(points),
                   tuple(find_label_keys(points, swept)), metric, tuple(repeats))


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


# --- entry points ------------------------------------------------------------


def failed_jobs_in_last_sweep() -> bool:
    """Whether the summary of the sweep that just ended in this process lists a failed point."""
    return _failed_in_last_sweep


class SweepSummaryCallback(Callback):
    """Summarise the sweep directory when a multirun ends (in the launching process, any launcher)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _failed_in_last_sweep
        _failed_in_last_sweep = False

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _failed_in_last_sweep
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = build_summary([sweep_dir])
        if not summary.points:
            log.error("no job of the sweep left a results.json or error.json in %s: no summary written", sweep_dir)
            _failed_in_last_sweep = True
            return
        write_summary(summary, sweep_dir)
        _failed_in_last_sweep = bool(summary.failed)
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


@side_command("pneumolab-summarize")
def summarize_main(argv: Sequence[str] | None = None) -> None:
    """`pneumolab-summarize DIR [DIR ...] [--out OUT] [--all-pairs] [--metric NAME]`: exit 1 when a point
    failed, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="pneumolab-summarize",
        description="Rebuild summary.csv, summary.md and summary.png from the results.json (and error.json) "
                    "files under one sweep directory, or compare the runs found under several directories.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="a sweep directory, or a run directory holding results.json; searched recursively")
    parser.add_argument("--out", type=Path, help="where to write the summary (default: the first DIR)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="test every pair of points, not only those whose resolved configs differ in exactly "
                             "one setting")
    parser.add_argument("--metric", default="test_acc", choices=SUMMARY_KEYS, metavar="NAME",
                        help="the per-seed metric the t-tests and summary.png compare (default: test_acc); "
                             f"one of {', '.join(SUMMARY_KEYS)}")
    args = parser.parse_args(argv)

    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        raise PneumolabError(f"{', '.join(missing)}: no such directory. Give the sweep directory Hydra printed "
                             "(outputs/multirun/<date>/<time>) or a run directory (outputs/runs/<date>/<time>).")
    summary = build_summary(args.dirs, all_pairs=args.all_pairs, metric=args.metric)
    if not summary.points:
        raise PneumolabError(
            f"No results found: no results.json or error.json under {', '.join(map(str, args.dirs))}. "
            "A job writes results.json when it finishes; point this command at a sweep directory "
            "(outputs/multirun/<date>/<time>) or at run directories (outputs/runs/<date>/<time>) of finished jobs.")
    out_dir = args.out or args.dirs[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary, out_dir)
    print((out_dir / SUMMARY_MD).read_text(encoding="utf-8"), end="")
    for point in summary.failed:
        print(f"pneumolab-summarize: failed point {label_point(point, out_dir)}: {point.error}", file=sys.stderr)
    if summary.failed:
        sys.exit(1)
