"""Sweep summaries: `summary.csv`, `summary.md` and `summary.png` of a multirun directory.

A summary is rebuilt from the job files on disk (`results.json` of a finished point,
`error.json` of a failed one), never from what a launcher hands back, so it is the
same whichever launcher ran the jobs, and `pneumolab-summarize` can rebuild it after
points were added or compare runs from several sweeps.

A point's settings are its overrides. The swept keys are the override keys whose value
differs between points; a point that did not override a key gets the value from its
resolved config, so a plain run compares fairly with a sweep point that set the default.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumolab.files import atomic_open, atomic_write_text
from pneumolab.metrics import welch_ttest
from pneumolab.results import FAILURE, RESULTS, read_json

log = logging.getLogger("pneumolab")

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
# results.json "summary" entries in the summary table, with their summary.md headers.
# Validation accuracy is the search objective, so a search's winner shows in the table too.
METRICS = {"test_acc": "test accuracy", "test_auc": "AUC", "test_sensitivity": "sensitivity",
           "test_specificity": "specificity", "val_acc": "val accuracy"}
STATS = ("mean", "std", "ci95_low", "ci95_high")
NOT_SET = "(not set)"
ALPHA = 0.05

_failed_in_last_sweep = False


@dataclass(frozen=True)
class Point:
    """One sweep point: a job directory holding results.json (ok) or error.json (failed)."""

    job_dir: Path
    overrides: tuple[str, ...]
    config: dict[str, Any]
    results: dict[str, Any] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.results is not None

    @property
    def per_seed(self) -> list[dict[str, Any]]:
        return self.results["per_seed"] if self.results else []

    @property
    def test_accs(self) -> list[float | None]:
        return [entry["test_acc"] for entry in self.per_seed]

    @property
    def n_diverged(self) -> int:
        return sum(bool(entry["diverged"]) for entry in self.per_seed)

    def stats(self, metric: str) -> dict[str, Any]:
        """results.json's summary of `metric` (mean, std, ci95_low, ci95_high, n); empty for a failed point."""
        return self.results["summary"][metric] if self.results else {}

    def setting(self, key: str) -> str:
        """The value of `key` as typed in an override, else as it stands in the resolved config."""
        overridden = parse_overrides(self.overrides)
        if key in overridden:
            return overridden[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return NOT_SET
            node = node[part]
        if isinstance(node, dict):
            # A config group (head=ce) lands in the config as its options, which carry their name.
            node = node.get("name", NOT_SET)
        return node if isinstance(node, str) else json.dumps(node, separators=(",", ":"))


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test on per-seed test accuracy between two points."""

    a: Point
    b: Point
    differing: tuple[str, ...]
    shared: tuple[str, ...]
    test: dict[str, Any]


@dataclass(frozen=True)
class Summary:
    """What summary.csv, summary.md and summary.png show."""

    points: list[Point]
    swept: list[str]
    common: dict[str, str]
    comparisons: list[Comparison]
    all_pairs: bool

    @property
    def failed(self) -> list[Point]:
        return [p for p in self.points if not p.ok]


# --- finding points ----------------------------------------------------------


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}, without the +/++/~ prefixes Hydra allows."""
    parsed = {}
    for override in overrides:
        key, _, value = override.partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort job dirs 2 before 10 (Hydra names them by job number)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in path.parts)


def read_point(job_dir: Path) -> Point | None:
    """The point in `job_dir`, or None when neither of its files is readable.

    A directory can hold both files: a re-run that failed after an older success, or
    a success after an older failure. The newer file tells the point's current state.
    """
    results_path, failure_path = job_dir / RESULTS, job_dir / FAILURE
    results, failure = read_json(results_path), read_json(failure_path)
    if results is not None and failure is not None:
        if failure_path.stat().st_mtime_ns >= results_path.stat().st_mtime_ns:
            results = None
        else:
            failure = None
    if results is not None:
        return Point(job_dir, tuple(results.get("overrides", ())), results.get("config", {}), results, None)
    if failure is not None:
        error = str(failure.get("error", "unknown error")).strip().splitlines()[0]
        return Point(job_dir, tuple(failure.get("overrides", ())), failure.get("config", {}), None, error)
    return None


def find_points(roots: Sequence[Path]) -> list[Point]:
    """Every point under `roots`, each once, in the order of the roots, then of job number."""
    job_dirs: dict[Path, None] = {}
    for root in roots:
        found = {path.parent for name in (RESULTS, FAILURE) for path in Path(root).rglob(name)}
        for job_dir in sorted(found, key=natural_key):
            job_dirs.setdefault(job_dir.resolve(), None)
    return [point for point in map(read_point, job_dirs) if point is not None]


def list_override_keys(points: Sequence[Point]) -> list[str]:
    """Every key any point overrides, in the order they were typed."""
    return list(dict.fromkeys(key for p in points for key in parse_overrides(p.overrides)))


def find_swept_keys(points: Sequence[Point]) -> list[str]:
    """Override keys whose value differs between points."""
    return [key for key in list_override_keys(points) if len({p.setting(key) for p in points}) > 1]


def find_common_settings(points: Sequence[Point], swept: Sequence[str]) -> dict[str, str]:
    return {key: points[0].setting(key) for key in list_override_keys(points) if key not in swept}


def compare_points(points: Sequence[Point], swept: Sequence[str], all_pairs: bool) -> list[Comparison]:
    """Welch's t-test for each pair of finished points that differ in exactly one setting (or every pair)."""
    comparisons = []
    for a, b in itertools.combinations([p for p in points if p.ok], 2):
        differing = tuple(k for k in swept if a.setting(k) != b.setting(k))
        if len(differing) == 1 or all_pairs:
            shared = tuple(k for k in swept if k not in differing)
            with warnings.catch_warnings():
                # One side's seeds all scoring the same (a deterministic point) makes scipy warn
                # about precision loss in the variance; the test result is still well defined.
                warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
                test = welch_ttest(a.test_accs, b.test_accs)
            comparisons.append(Comparison(a, b, differing, shared, test))
    return comparisons


def build_summary(roots: Sequence[Path], all_pairs: bool = False) -> Summary:
    points = find_points(roots)
    swept = find_swept_keys(points)
    return Summary(points, swept, find_common_settings(points, swept), compare_points(points, swept, all_pairs),
                   all_pairs)


# --- writing -----------------------------------------------------------------


def label_point(point: Point, out_dir: Path) -> str:
    """The job dir as seen from the summary's folder: "3" in a sweep, "../other/0" across sweeps."""
    label = os.path.relpath(point.job_dir, Path(out_dir).resolve())
    return point.job_dir.name if label == "." else label


def format_csv_row(point: Point, summary: Summary, out_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"point": label_point(point, out_dir)}
    row.update({key: point.setting(key) for key in summary.swept})
    row.update(overrides=" ".join(point.overrides), status="ok" if point.ok else "failed", error=point.error)
    row.update(n_seeds=len(point.per_seed) if point.ok else None, n_diverged=point.n_diverged if point.ok else None)
    for metric in METRICS:
        row.update({f"{metric}_{stat}": point.stats(metric).get(stat) for stat in STATS})
    return row


def write_csv(summary: Summary, out_dir: Path) -> None:
    rows = [format_csv_row(p, summary, out_dir) for p in summary.points]
    with atomic_open(out_dir / SUMMARY_CSV, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        # None (a statistic no seed could give) becomes an empty cell.
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def format_stat(metric: str, stats: dict[str, Any]) -> str:
    """"74.9 ± 1.2 % [72.1, 77.7]": mean ± std and 95 % CI; AUC as a fraction, the rest in percent."""
    if not stats or stats.get("mean") is None:
        return "–"
    scale, unit, digits = (1.0, "", 3) if metric == "test_auc" else (100.0, " %", 1)
    mean, std, low, high = (stats[s] * scale for s in STATS)
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


def escape_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def format_table(summary: Summary, out_dir: Path) -> list[str]:
    header = ["point", *summary.swept, *METRICS.values(), "seeds", "diverged", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in summary.points:
        cells = [label_point(point, out_dir), *(point.setting(k) for k in summary.swept)]
        cells += [format_stat(metric, point.stats(metric)) for metric in METRICS]
        if point.ok:
            cells += [str(len(point.per_seed)), str(point.n_diverged), "ok"]
        else:
            cells += ["–", "–", f"failed: {point.error}"]
        lines.append("| " + " | ".join(escape_cell(c) for c in cells) + " |")
    return lines


def describe_comparison(c: Comparison, out_dir: Path) -> str:
    """"head=bce vs head=ce at data.batch_size=32: +0.1 pt, p = 0.866, not significant (...)"."""
    def side(point: Point) -> str:
        return " ".join(f"{k}={point.setting(k)}" for k in c.differing) or label_point(point, out_dir)

    context = f" at {', '.join(f'{k}={c.a.setting(k)}' for k in c.shared)}" if c.shared else ""
    n_a, n_b = (sum(v is not None for v in p.test_accs) for p in (c.a, c.b))
    points = f"points {label_point(c.a, out_dir)} and {label_point(c.b, out_dir)}, {n_a} vs {n_b} seeds"
    diff, p = c.test["diff"], c.test["p"]
    if diff is None:
        return f"{side(c.a)} vs {side(c.b)}{context}: no test, a side has no test accuracy ({points})"
    if p is None:
        verdict = "no test: Welch's t-test needs at least 2 seeds on each side"
    else:
        p_text = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
        verdict = f"{p_text}, {'significant' if c.test['significant'] else 'not significant'}"
    return f"{side(c.a)} vs {side(c.b)}{context}: {100 * diff:+.1f} pt, {verdict} ({points})"


def format_significance(summary: Summary, out_dir: Path) -> list[str]:
    scope = "every pair of finished points" if summary.all_pairs else \
        "every pair of finished points that differ in exactly one setting"
    lines = ["## Significance", "",
             f"Welch's t-test over seeds on test accuracy (two-sided, significant at p < {ALPHA}), for {scope}. "
             "Differences are in percentage points (pt), first point minus second.", ""]
    if sum(p.ok for p in summary.points) < 2:
        lines.append("Fewer than two finished points: nothing to compare.")
    elif not summary.comparisons:
        lines.append("No two finished points differ in exactly one setting. "
                     "`pneumolab-summarize DIR --all-pairs` compares every pair.")
    lines += [f"- {describe_comparison(c, out_dir)}" for c in summary.comparisons]
    if len(summary.comparisons) > 1:
        lines += ["", f"{len(summary.comparisons)} tests, not corrected for multiple comparisons: "
                      f"if no setting mattered, about {100 * ALPHA:.0f} % of them would still come out significant."]
    return lines


def format_markdown(summary: Summary, out_dir: Path, plotted: bool) -> str:
    n_failed = len(summary.failed)
    n = len(summary.points)
    lines = ["# Sweep summary", "",
             f"{n} point{'s' if n != 1 else ''}: {n - n_failed} ok, {n_failed} failed. "
             "Metrics are mean ± std over seeds [95 % CI of the mean]; accuracy, sensitivity and "
             "specificity in percent, AUC as a fraction.", ""]
    if summary.swept:
        lines += ["Swept: " + ", ".join(f"`{k}`" for k in summary.swept), ""]
    if summary.common:
        lines += ["Same for every point: " + " ".join(f"`{k}={v}`" for k, v in summary.common.items()), ""]
    lines += [*format_table(summary, out_dir), ""]
    if plotted:
        lines += [f"![test accuracy]({SUMMARY_PNG})", ""]
    lines += [*format_significance(summary, out_dir), ""]
    return "\n".join(lines)


def parse_number(text: str) -> float | int | str:
    """Numbers typed in overrides become numbers, so the plot spaces them to scale."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def plot_points(summary: Summary, out_dir: Path) -> bool:
    """Write summary.png; False (and no stale figure left) when no point has a test accuracy."""
    from pneumolab.plots import plot_summary

    path = out_dir / SUMMARY_PNG
    finished = [p for p in summary.points if p.ok and p.stats("test_acc")["mean"] is not None]
    if not finished:
        path.unlink(missing_ok=True)
        return False
    # One or two swept keys read as a curve (and one line per value of the second);
    # more than that has no natural x axis, so each point gets its own place.
    by_point = len(summary.swept) not in (1, 2)
    x_key = "point" if by_point else summary.swept[0]
    group_key = summary.swept[1] if len(summary.swept) == 2 else None
    plotted = []
    for point in finished:
        acc = point.stats("test_acc")
        x = label_point(point, out_dir) if by_point else parse_number(point.setting(x_key))
        group = point.setting(group_key) if group_key else None
        plotted.append({"x": x, "group": group, "mean": acc["mean"], "std": acc["std"], "n": acc["n"]})
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
        for comparison in summary.comparisons:
            log.info("%s", describe_comparison(comparison, sweep_dir))
        log.info("sweep summary of %d points: %s", len(summary.points), sweep_dir / SUMMARY_MD)


def summarize_main(argv: Sequence[str] | None = None) -> None:
    """`pneumolab-summarize DIR [DIR ...] [--out OUT] [--all-pairs]`."""
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


def fail(message: str) -> NoReturn:
    print(f"pneumolab-summarize: error: {message}", file=sys.stderr)
    sys.exit(2)
