"""Results as one tidy pandas DataFrame: what `pneumolab.load` returns, for notebooks.

This module owns the layout of that table. It reads job dirs through `pneumolab.analysis.points`
(the same reading a sweep summary does) and lays them out as rows:

- one row per point and seed (`kind` "seed"), a diverged seed included (`diverged` True,
  NaN metrics), and one `kind` "ensemble" row per finished point (`seed` NA);
- one row per failed point (`status` "failed", `error` its message, NaN metrics);

and columns: `point` (the job dir) and `sweep` (the multirun dir holding it, else NA);
every setting that differs between the points loaded (resolved config keys flattened
with dots, a config group by its name: `head`, `data.batch_size`; plus swept overrides
the config does not hold, like `experiment`); `kind`, `seed`, `diverged`; a column per
numeric metric of results.json's per-seed and ensemble entries, fractions as stored;
`status` and `error`. Torch-free; pandas is imported when `load` is called, and it
comes with the `notebook` extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from pneumolab.config import config_leaves
from pneumolab.errors import PneumolabError
from pneumolab.analysis.points import NOT_SET, Point, find_points, find_swept_keys
from pneumolab.record.results import FAILURE, RESULTS

if TYPE_CHECKING:
    import pandas

# Metrics in this order first; any other numeric per-seed or ensemble key follows as found.
METRIC_ORDER = ("test_acc", "test_balanced_acc", "test_auc", "test_sensitivity", "test_specificity",
                "test_f1", "test_ece", "test_brier", "val_acc")
NOT_METRICS = frozenset({"seed", "n_seeds"})  # numbers that say which seeds, not how well
SWEEP_MARKER = "multirun.yaml"  # Hydra writes it at the top of every multirun dir
MISSING = object()


class NoResultsError(PneumolabError):
    """A path given to `pneumolab.load` that does not exist or holds no job results."""


def load(path: str | os.PathLike, *paths: str | os.PathLike) -> "pandas.DataFrame":
    """A run dir, a sweep dir, or several (or folders holding them) as one tidy DataFrame.

    See this module's docstring for the rows and columns. Raises ImportError when pandas
    is missing, NoResultsError (a PneumolabError) naming a path that is missing or holds
    no results.json or error.json.
    """
    pd = import_pandas()
    located = locate_points([path, *paths])
    points = [point for point, _ in located]
    settings = differing_settings(points)
    metrics = metric_keys(points)
    rows = [row for i, (point, sweep) in enumerate(located)
            for row in point_rows(point, sweep, {key: values[i] for key, values in settings.items()}, metrics)]
    return build_frame(pd, rows, list(settings), metrics)


def import_pandas():
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("pneumolab.load needs pandas, which is not installed: "
                          "pip install 'pneumolab[notebook]' (or pip install pandas).") from exc
    return pandas


# --- finding the points -----------------------------------------------------------


def locate_points(paths: Sequence[str | os.PathLike]) -> list[tuple[Point, str | None]]:
    """Every point under `paths` with its sweep dir, each once, in the order of the paths."""
    located: dict[Path, tuple[Point, str | None]] = {}
    for path in paths:
        root = resolve_root(path)
        points = find_points([root])
        if not points:
            raise NoResultsError(f"{path} holds no {RESULTS} or {FAILURE}: pass pneumolab.load a run dir, "
                                 f"a sweep dir (pneumolab -m ... hydra.sweep.dir=DIR) or a folder holding them.")
        for point in points:
            located.setdefault(point.job_dir, (point, sweep_dir(point.job_dir, root)))
    return list(located.values())


def resolve_root(path: str | os.PathLike) -> Path:
    """`path` as an absolute dir; a results.json or error.json stands for its job dir."""
    root = Path(path).expanduser()
    if not root.exists():
        raise NoResultsError(f"{path} does not exist: pass pneumolab.load a run dir, a sweep dir or a "
                             f"folder holding them (a job dir's last log line names it).")
    if root.is_file() and root.name in (RESULTS, FAILURE):
        root = root.parent
    return root.resolve()


def sweep_dir(job_dir: Path, root: Path) -> str | None:
    """The nearest dir above `job_dir` holding multirun.yaml, looking no higher than `root`
    (or than the job dir's parent when `root` is the job dir); else `root` if it is above
    the job dir; else None (a plain run)."""
    top = root if root != job_dir else job_dir.parent
    for parent in job_dir.parents:
        if (parent / SWEEP_MARKER).is_file():
            return str(parent)
        if parent == top:
            break
    return str(root) if root != job_dir else None


# --- columns ------------------------------------------------------------------------


def flatten(config: Any) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each leaf of a resolved config, a group standing for itself (config.config_leaves);
    lists become tuples, so values group and compare."""
    return ((key, as_hashable(value)) for key, value in config_leaves(config))


def as_hashable(value: Any) -> Any:
    return tuple(as_hashable(v) for v in value) if isinstance(value, list) else value


def differing_settings(points: Sequence[Point]) -> dict[str, list[Any]]:
    """{column: its value for each point} for the config keys whose values differ between the
    points, then the swept override keys the config does not hold (experiment=..., debug=...)."""
    flats = [dict(flatten(point.config)) for point in points]
    compared = [flat for flat in flats if flat]  # a failed point whose file was unreadable has no config
    keys = list(dict.fromkeys(key for flat in compared for key in flat))
    settings = {key: [flat.get(key) for flat in flats] for key in keys
                if len({comparable(flat.get(key, MISSING)) for flat in compared}) > 1}
    for key in find_swept_keys(points):
        if key not in keys:
            settings[key] = [None if (value := point.setting(key)) == NOT_SET else value for point in points]
    return settings


def comparable(value: Any) -> str:
    """A key that tells 1 from 1.0 and True, and a missing key from null."""
    return "(missing)" if value is MISSING else json.dumps(value, sort_keys=True, default=str)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_keys(points: Sequence[Point]) -> list[str]:
    """Every key holding a number in some point's per-seed or ensemble entry, METRIC_ORDER first."""
    entries = [entry for point in points for entry in [*point.per_seed, ensemble_of(point)]]
    found = dict.fromkeys(key for entry in entries for key, value in entry.items()
                          if is_number(value) and key not in NOT_METRICS)
    return [key for key in METRIC_ORDER if key in found] + [key for key in found if key not in METRIC_ORDER]


def ensemble_of(point: Point) -> dict[str, Any]:
    ensemble = (point.results or {}).get("ensemble")
    return ensemble if isinstance(ensemble, dict) else {}


# --- rows ---------------------------------------------------------------------------


def point_rows(point: Point, sweep: str | None, settings: dict[str, Any],
               metrics: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of one point (with its `settings` values): its seeds and its ensemble, or one
    row saying why it failed."""
    base = {"point": str(point.job_dir), "sweep": sweep, **settings}
    if not point.ok:
        yield {**base, "kind": "seed", "seed": None, "diverged": None, "status": "failed", "error": point.error}
        return
    for entry in point.per_seed:
        yield {**base, "kind": "seed", "seed": entry.get("seed"), "diverged": bool(entry.get("diverged")),
               **metric_values(entry, metrics), "status": "ok", "error": None}
    if ensemble := ensemble_of(point):
        yield {**base, "kind": "ensemble", "seed": None, "diverged": None,
               **metric_values(ensemble, metrics), "status": "ok", "error": None}


def metric_values(entry: dict[str, Any], metrics: Sequence[str]) -> dict[str, float | None]:
    return {key: entry[key] if is_number(entry.get(key)) else None for key in metrics}


def build_frame(pd, rows: list[dict[str, Any]], settings: list[str], metrics: list[str]) -> "pandas.DataFrame":
    columns = ["point", "sweep", *settings, "kind", "seed", "diverged", *metrics, "status", "error"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    frame = frame.astype({"seed": "Int64", "diverged": "boolean"})
    frame[metrics] = frame[metrics].apply(pd.to_numeric, errors="coerce")
    return frame
