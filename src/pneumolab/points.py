"""Sweep points read back from their job files, and the comparisons a summary draws between them.

A point is a job directory: `results.json` of a finished point, `error.json` of a
failed one. A results.json that cannot be read, or is not shaped like one, makes a
failed point with the reason, never a crash or a silently missing row.

A point's settings are its overrides. The swept keys are the override keys whose value
differs between points; a point that did not override a key gets the value from its
resolved config, so a plain run compares fairly with a sweep point that set the default.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pneumolab.metrics import ALPHA, holm, power_line, welch_ttest
from pneumolab.results import FAILURE, RESULTS

NOT_SET = "(not set)"
SUMMARY_STATS = ("mean", "std", "ci95_low", "ci95_high", "n")
SUMMARY_METRICS = ("test_acc", "test_auc", "test_sensitivity", "test_specificity", "val_acc")
# Past this many finished points a summary ranks them and tests only the leaders (see `compare_points`).
MANY_POINTS = 36
LEADERS = 10


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

    def seed_values(self, metric: str = "test_acc") -> list[float | None]:
        return [entry.get(metric) for entry in self.per_seed]

    @property
    def n_diverged(self) -> int:
        return sum(bool(entry["diverged"]) for entry in self.per_seed)

    def stats(self, metric: str) -> dict[str, Any]:
        """results.json's summary of `metric` (mean, std, ci95_*, boot95_*, n); empty for a failed point."""
        return self.results["summary"][metric] if self.results else {}

    @property
    def mean_acc(self) -> float | None:
        return self.stats("test_acc").get("mean")

    @property
    def ensemble_acc(self) -> float | None:
        ensemble = (self.results or {}).get("ensemble")
        return ensemble.get("test_acc") if isinstance(ensemble, dict) else None

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
    """Welch's t-test on per-seed test accuracy between two points, with its Holm-adjusted p and power."""

    a: Point
    b: Point
    differing: tuple[str, ...]
    shared: tuple[str, ...]
    test: dict[str, Any]
    p_holm: float | None
    power: dict[str, Any]

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


# --- reading points -----------------------------------------------------------


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`key=value` overrides as {key: value}, without the +/++/~ prefixes Hydra allows."""
    parsed = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def natural_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    """Sort job dirs 2 before 10 (Hydra names them by job number)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in path.parts)


def load_json(path: Path) -> tuple[Any, str | None]:
    """(parsed content, None), or (None, why it cannot be read); (None, None) when absent."""
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    except ValueError as exc:  # truncated or not JSON at all (UnicodeDecodeError is one too)
        return None, f"is not valid JSON ({exc})"


def results_problem(results: Any) -> str | None:
    """What keeps `results` from being a results.json a summary can use; None when nothing does."""
    if not isinstance(results, dict):
        return f"holds a JSON {type(results).__name__}, not an object with per_seed and summary"
    per_seed, summary = results.get("per_seed"), results.get("summary")
    if not isinstance(per_seed, list) or not all(
            isinstance(e, dict) and {"test_acc", "diverged"} <= e.keys() for e in per_seed):
        return "has no per_seed list of seeds with test_acc and diverged"
    if not isinstance(summary, dict):
        return "has no summary"
    for metric in SUMMARY_METRICS:
        entry = summary.get(metric)
        if not isinstance(entry, dict) or not set(SUMMARY_STATS) <= entry.keys():
            return f"has no summary of {metric} with {', '.join(SUMMARY_STATS)}"
    if not isinstance(results.get("overrides", []), list) or not isinstance(results.get("config", {}), dict):
        return "has overrides or config of the wrong type"
    return None


def read_point(job_dir: Path) -> Point | None:
    """The point in `job_dir`, or None when it holds neither file.

    A directory can hold both files: a re-run that failed after an older success, or
    a success after an older failure. The newer file tells the point's current state.
    """
    results_path, failure_path = job_dir / RESULTS, job_dir / FAILURE
    if results_path.is_file() and failure_path.is_file():
        newer_failure = failure_path.stat().st_mtime_ns >= results_path.stat().st_mtime_ns
        return read_failure(job_dir) if newer_failure else read_results(job_dir)
    if results_path.is_file():
        return read_results(job_dir)
    return read_failure(job_dir) if failure_path.is_file() else None


def read_results(job_dir: Path) -> Point:
    results, unreadable = load_json(job_dir / RESULTS)
    problem = unreadable or results_problem(results)
    if problem:
        return Point(job_dir, (), {}, None, f"{RESULTS} {problem}; re-run this point to write it again")
    return Point(job_dir, tuple(results.get("overrides", ())), results.get("config", {}), results, None)


def read_failure(job_dir: Path) -> Point:
    failure, unreadable = load_json(job_dir / FAILURE)
    if not isinstance(failure, dict):
        return Point(job_dir, (), {}, None, f"{FAILURE} {unreadable or 'is not a JSON object'}")
    overrides = failure.get("overrides", ())
    config = failure.get("config", {})
    error = str(failure.get("error", "unknown error")).strip().splitlines() or ["unknown error"]
    return Point(job_dir, tuple(overrides) if isinstance(overrides, list) else (),
                 config if isinstance(config, dict) else {}, None, error[0])


def find_points(roots: Sequence[Path]) -> list[Point]:
    """Every point under `roots`, each once, in the order of the roots, then of job number."""
    job_dirs: dict[Path, None] = {}
    for root in roots:
        found = {path.parent for name in (RESULTS, FAILURE) for path in Path(root).rglob(name)}
        for job_dir in sorted(found, key=natural_key):
            job_dirs.setdefault(job_dir.resolve(), None)
    return [point for point in map(read_point, job_dirs) if point is not None]


# --- settings and comparisons ----------------------------------------------------


def list_override_keys(points: Sequence[Point]) -> list[str]:
    """Every key any point overrides, in the order they were typed."""
    return list(dict.fromkeys(key for p in points for key in parse_overrides(p.overrides)))


def find_swept_keys(points: Sequence[Point]) -> list[str]:
    """Override keys whose value differs between points."""
    return [key for key in list_override_keys(points) if len({p.setting(key) for p in points}) > 1]


def find_common_settings(points: Sequence[Point], swept: Sequence[str]) -> dict[str, str]:
    return {key: points[0].setting(key) for key in list_override_keys(points) if key not in swept}


def rank_points(points: Sequence[Point]) -> list[Point]:
    """Finished points with a test accuracy, best mean first."""
    return sorted((p for p in points if p.ok and p.mean_acc is not None), key=lambda p: -p.mean_acc)


def candidate_pairs(points: Sequence[Point], swept: Sequence[str], all_pairs: bool) -> list[tuple[Point, Point]]:
    """The pairs a summary tests: those differing in one setting (or every pair) of a small sweep;
    of a sweep of many points, the best point against each of the next LEADERS - 1 (or every
    pair of the LEADERS), few enough to correct and to show."""
    finished = [p for p in points if p.ok]
    if len(finished) <= MANY_POINTS:
        pairs = itertools.combinations(finished, 2)
        return [(a, b) for a, b in pairs if all_pairs or sum(a.setting(k) != b.setting(k) for k in swept) == 1]
    leaders = rank_points(finished)[:LEADERS]
    if all_pairs:
        return list(itertools.combinations(leaders, 2))
    return [(leaders[0], other) for other in leaders[1:]]


def compare_points(points: Sequence[Point], swept: Sequence[str], all_pairs: bool) -> list[Comparison]:
    """Welch's t-test for each candidate pair, Holm-adjusted together, with each pair's power line."""
    pairs = candidate_pairs(points, swept, all_pairs)
    with warnings.catch_warnings():
        # One side's seeds all scoring the same (a deterministic point) makes scipy warn
        # about precision loss in the variance; the test result is still well defined.
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        tests = [welch_ttest(a.seed_values(), b.seed_values()) for a, b in pairs]
    adjusted = holm([t["p"] for t in tests])
    comparisons = []
    for (a, b), test, p_holm in zip(pairs, tests, adjusted):
        differing = tuple(k for k in swept if a.setting(k) != b.setting(k))
        shared = tuple(k for k in swept if k not in differing)
        comparisons.append(Comparison(a, b, differing, shared, test, p_holm,
                                      power_line(a.seed_values(), b.seed_values())))
    return comparisons
