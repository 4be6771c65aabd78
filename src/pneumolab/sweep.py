"""Sweep summaries: `summary.csv`, `summary.md` and `summary.png` of a multirun directory.

A summary is rebuilt from the job files on disk (`results.json` of a finished point,
`error.json` of a failed one, see `pneumolab.points`), never from what a launcher hands
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
from typing import Any, NoReturn, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pneumolab.files import atomic_open, atomic_write_text
from pneumolab.points import (
    MANY_POINTS, Comparison, Point, compare_points, find_common_settings, find_points, find_swept_keys, rank_points,
)
from pneumolab.summary_md import METRICS, describe_comparison, format_markdown, label_point, main_effect

log = logging.getLogger("pneumolab")

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
STATS = ("mean", "std", "ci95_low", "ci95_high", "ci95_clipped")
BOOT_STATS = ("boot95_low", "boot95_high")
SEARCH_SWEEPER = "optuna"  # a sweep whose sweeper searches: plotted as the objective per trial

_failed_in_last_sweep = False
# Past this many Welch tests the end of a sweep names the table instead of printing each line.
MAX_CONSOLE_COMPARISONS = 4


@dataclass(frozen=True)
class Summary:
    """What summary.csv, summary.md and summary.png show."""

    points: list[Point]
    swept: list[str]
    common: dict[str, str]
    comparisons: list[Comparison]
    all_pairs: bool
    search: bool = False

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


def build_summary(roots: Sequence[Path], all_pairs: bool = False) -> Summary:
    points = find_points(roots)
    swept = find_swept_keys(points)
    return Summary(points, swept, find_common_settings(points, swept), compare_points(points, swept, all_pairs),
                   all_pairs, is_search(points))


# --- writing -----------------------------------------------------------------


def format_csv_row(point: Point, summary: Summary, out_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"point": label_point(point, out_dir)}
    row.update({key: point.setting(key) for key in summary.swept})
    row.update(overrides=" ".join(point.overrides), status="ok" if point.ok else "failed", error=point.error)
    row.update(n_seeds=len(point.per_seed) if point.ok else None, n_diverged=point.n_diverged if point.ok else None)
    for metric in METRICS:
        stats = point.stats(metric)
        row.update({f"{metric}_{stat}": stats.get(stat) for stat in STATS})
        if metric != "val_acc":
            row.update({f"{metric}_{stat}": stats.get(stat) for stat in BOOT_STATS})
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
    """What the summary plots take of a point: its mean, seeds interval (as summary.md prints it), seeds."""
    stats = point.stats(metric)
    return {"x": x, "group": group, "mean": stats["mean"], "low": stats["ci95_low"], "high": stats["ci95_high"],
            "seeds": [v for v in point.seed_values(metric) if v is not None]}


def effect_panels(summary: Summary, finished: list[Point]) -> list[tuple[str, list[dict]]]:
    """One panel per swept key: each value's mean over the other keys, its interval, and the points as dots."""
    panels = []
    for key in summary.swept:
        values = list(dict.fromkeys(p.setting(key) for p in finished))
        effects = [main_effect(finished, key, v) for v in values]
        panels.append((key, [{"x": parse_number(v), "group": None, "mean": e["mean"], "low": e["ci95_low"],
                              "high": e["ci95_high"], "seeds": [p.mean_acc for p in finished if p.setting(key) == v]}
                             for v, e in zip(values, effects)]))
    return panels


def plot_points(summary: Summary, out_dir: Path) -> bool:
    """Write summary.png; False (and no stale figure left) when no point has a test accuracy."""
    from pneumolab.plots import plot_search, plot_summary, plot_summary_panels

    path = out_dir / SUMMARY_PNG
    finished = rank_points(summary.points)
    if not finished:
        path.unlink(missing_ok=True)
        return False
    finished = [p for p in summary.points if p in finished]  # back in job order
    if summary.search:
        trials = [plotted_point(p, int(p.job_dir.name) if p.job_dir.name.isdigit() else i, None, "val_acc")
                  for i, p in enumerate(finished)]
        plot_search(trials, path)
    elif len(finished) > MANY_POINTS and summary.swept:
        plot_summary_panels(effect_panels(summary, finished), path)
    else:
        # One or two swept keys read as a curve (and one line per value of the second);
        # more than that has no natural x axis, so each point gets its own place.
        by_point = len(summary.swept) not in (1, 2)
        x_key = "point" if by_point else summary.swept[0]
        group_key = summary.swept[1] if len(summary.swept) == 2 else None
        plotted = [plotted_point(p, label_point(p, out_dir) if by_point else parse_number(p.setting(x_key)),
                                 p.setting(group_key) if group_key else None) for p in finished]
        plot_summary(plotted, path, x_key, group_key, title="test accuracy per point" if by_point else None)
    return True


def write_summary(summary: Summary, out_dir: Path) -> None:
    """summary.csv, summary.png and summary.md into `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
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
            log.info("%d comparisons of test accuracy: see the significance table of %s", len(summary.comparisons),
                     sweep_dir / SUMMARY_MD)
        log.info("sweep summary of %d points: %s", len(summary.points), sweep_dir / SUMMARY_MD)


def summarize_main(argv: Sequence[str] | None = None) -> None:
    """`pneumolab-summarize DIR [DIR ...] [--out OUT] [--all-pairs]`: exit 1 when a point failed, 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="pneumolab-summarize",
        description="Rebuild summary.csv, summary.md and summary.png from the results.json (and error.json) "
                    "files under one sweep directory, or compare the runs found under several directories.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="a sweep directory, or a run directory holding results.json; searched recursively")
    parser.add_argument("--out", type=Path, help="where to write the summary (default: the first DIR)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="test every pair of points, not only those that differ in exactly one setting")
    args = parser.parse_args(argv)

    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        fail(f"{', '.join(missing)}: no such directory. Give the sweep directory Hydra printed "
             "(outputs/multirun/<date>/<time>) or a run directory (outputs/runs/<date>/<time>).")
    summary = build_summary(args.dirs, all_pairs=args.all_pairs)
    if not summary.points:
        fail(f"No results found: no results.json or error.json under {', '.join(map(str, args.dirs))}. "
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


def fail(message: str) -> NoReturn:
    print(f"pneumolab-summarize: error: {message}", file=sys.stderr)
    sys.exit(2)
