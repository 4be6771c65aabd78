"""Sweep points read back from their job files, and the comparisons a summary draws between them.

A point is a job directory: `results.json` of a finished point, `error.json` of a
failed one. A results.json that cannot be read, or is not shaped like one, makes a
failed point with the reason, never a crash or a silently missing row.

Points are compared by their resolved configs, key by key (flattened with dots, a config
group by its name: `head`, `data.batch_size`), never by what was typed: `experiment=X`
that changes the head, the learning rate and the batch size is three differences, and
a plain run compares fairly with a sweep point that set the default. A config group's
option carries the keys under it (`model=cnn` brings `model.channels`): those count as
part of that one difference unless typed on a command line. Keys that are not settings
(`NOT_SETTINGS`: the seeds, labels, where logs and caches go) are never compared.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

from pneumolab.config import config_leaves
from pneumolab.record.metric_table import BY_KEY
from pneumolab.record.metrics import ALPHA, compare_seeds, holm
from pneumolab.record.results import FAILURE, RESULTS, read_json, results_problem

NOT_SET = "(not set)"
SeedValues = dict[int, float | None]  # {seed: a metric's value}, None for a diverged seed
# Past this many finished points a summary ranks them and tests only the leaders (see `compare_points`).
MANY_POINTS = 36
LEADERS = 10
# Resolved config keys (and the keys under them) that are not settings of an experiment, never
# compared: the seeds are its replicates, not a setting; a tag and a report figure's caption label
# it; a logger, a cache folder, threads and processes change where and how fast it runs, not its numbers.
NOT_SETTINGS = ("trainer.seeds", "tag", "report_figure", "logger", "data.cache_dir", "trainer.threads",
                "trainer.processes")


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

    def values_by_seed(self, metric: str = "test_acc") -> SeedValues:
        """{seed: value}: what pairs a seed with the same seed of another point."""
        return {entry["seed"]: entry.get(metric) for entry in self.per_seed}

    def n_values(self, metric: str = "test_acc") -> int:
        """How many seeds have a value of `metric` (a diverged seed has none)."""
        return sum(v is not None for v in self.seed_values(metric))

    def mean(self, metric: str = "test_acc") -> float | None:
        return self.stats(metric).get("mean")

    @cached_property
    def settings(self) -> dict[str, Any]:
        """The resolved config as {dotted key: value}, a config group by its name, without NOT_SETTINGS."""
        return {key: value for key, value in flatten_config(self.config) if not is_excluded(key)}

    @cached_property
    def groups(self) -> frozenset[str]:
        """The config groups of the resolved config (`head`, `model`, ...): the nodes that carry a name."""
        return frozenset(key for key, _ in flatten_config(self.config, groups_only=True))

    @cached_property
    def typed(self) -> frozenset[str]:
        """The keys this point's command line set."""
        return frozenset(parse_overrides(self.overrides))

    @cached_property
    def _compared(self) -> dict[str, str]:
        return {key: canonical(value) for key, value in self.settings.items()}

    def compared_value(self, key: str) -> str:
        """The resolved value of `key` as compared: JSON, a missing key equal to null."""
        return self._compared.get(key, "null")

    @property
    def n_diverged(self) -> int:
        return sum(bool(entry["diverged"]) for entry in self.per_seed)

    def stats(self, metric: str) -> dict[str, Any]:
        """results.json's summary of `metric` (mean, std, ci95_*, boot95_*, n); empty for a failed point,
        or for a metric its results.json is too old to hold."""
        return self.results["summary"].get(metric, {}) if self.results else {}

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
        leaves = dict(config_leaves(self.config))
        if key not in leaves:
            return NOT_SET
        node = leaves[key]
        return node if isinstance(node, str) else json.dumps(node, separators=(",", ":"))


@dataclass(frozen=True)
class Comparison:
    """The t-test on a per-seed metric (test accuracy unless asked) between two points, paired on
    their shared seeds or else Welch's (`metrics.compare_seeds`), with its Holm-adjusted p and power."""

    a: Point
    b: Point
    differing: tuple[str, ...]
    shared: tuple[str, ...]
    test: dict[str, Any]
    p_holm: float | None
    power: dict[str, Any]
    metric: str = "test_acc"

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
    results, unreadable = read_json(job_dir / RESULTS)
    problem = unreadable or results_problem(results)
    if problem:
        return Point(job_dir, (), {}, None, f"{RESULTS} {problem}; re-run this point to write it again")
    return Point(job_dir, tuple(results.get("overrides", ())), results.get("config", {}), results, None)


def read_failure(job_dir: Path) -> Point:
    failure, unreadable = read_json(job_dir / FAILURE)
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


def flatten_config(config: Any, groups_only: bool = False) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each leaf of a resolved config (config.config_leaves); with `groups_only`,
    only the config groups (head, model, ...)."""
    for key, value in config_leaves(config):
        if not groups_only or isinstance(node_at(config, key), dict):
            yield key, value


def node_at(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def is_excluded(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_SETTINGS)


def canonical(value: Any) -> str:
    """A value as compared: 32 and 32.0 differ, a list compares by its items."""
    return json.dumps(value, sort_keys=True, default=str)


def group_of(key: str, groups: frozenset[str]) -> str | None:
    """The config group whose option holds `key` (model for model.channels), if any."""
    parents = [g for g in groups if key.startswith(g + ".")]
    return max(parents, key=len) if parents else None


def list_override_keys(points: Sequence[Point]) -> list[str]:
    """Every key any point overrides, in the order they were typed."""
    return list(dict.fromkeys(key for p in points for key in parse_overrides(p.overrides)))


def find_swept_keys(points: Sequence[Point]) -> list[str]:
    """Override keys whose typed value differs between points (experiment=... included)."""
    return [key for key in list_override_keys(points) if len({p.setting(key) for p in points}) > 1]


def find_differing_settings(points: Sequence[Point]) -> list[str]:
    """Resolved settings whose values differ between points, key by key: typed keys first, in the
    order typed, then in config order. A key under a config group differs when it differs between
    points holding the same option of that group, or when a command line set it; otherwise it
    came with the option, and the group's own key counts it. Points without a config (a results
    file that could not be read) take no part."""
    configured = [p for p in points if p.settings]
    if len(configured) < 2:
        return []
    groups = frozenset().union(*(p.groups for p in configured))
    typed = frozenset().union(*(p.typed for p in configured))
    keys = dict.fromkeys([k for k in list_override_keys(configured) if any(k in p.settings for p in configured)]
                         + [k for p in configured for k in p.settings])
    differing = []
    for key in keys:
        group = group_of(key, groups)
        if group is None or key in typed:
            differs = len({p.compared_value(key) for p in configured}) > 1
        else:
            by_option: dict[str, set[str]] = defaultdict(set)
            for p in configured:
                by_option[p.compared_value(group)].add(p.compared_value(key))
            differs = any(len(values) > 1 for values in by_option.values())
        if differs:
            differing.append(key)
    return differing


def find_label_keys(points: Sequence[Point], swept: Sequence[str]) -> list[str]:
    """Typed keys whose values differ between points but that are no compared setting: `experiment`,
    `debug`, `trainer.seeds`. A summary shows them beside the settings and never counts them."""
    settings = frozenset().union(*(p.settings.keys() for p in points)) if points else frozenset()
    return [key for key in find_swept_keys(points) if key not in swept and key not in settings]


def differing_keys(a: Point, b: Point, keys: Sequence[str]) -> tuple[str, ...]:
    """The keys of `keys` in which two points' resolved configs differ, one difference each; a key
    that came with a different option of its config group (and that no command line set) is part
    of the group's difference."""
    groups, typed = a.groups | b.groups, a.typed | b.typed
    differing = []
    for key in keys:
        if a.compared_value(key) == b.compared_value(key):
            continue
        group = group_of(key, groups)
        if group is not None and key not in typed and a.compared_value(group) != b.compared_value(group):
            continue
        differing.append(key)
    return tuple(differing)


def find_common_settings(points: Sequence[Point], swept: Sequence[str]) -> dict[str, str]:
    labels = find_label_keys(points, swept)
    return {key: points[0].setting(key) for key in list_override_keys(points) if key not in swept and key not in labels}


def rank_points(points: Sequence[Point], metric: str = "test_acc") -> list[Point]:
    """Finished points with a value of `metric`, best mean first (lowest first for ECE and the like)."""
    sign = -1 if BY_KEY[metric].higher_is_better else 1
    return sorted((p for p in points if p.ok and p.mean(metric) is not None), key=lambda p: sign * p.mean(metric))


def candidate_pairs(points: Sequence[Point], swept: Sequence[str], all_pairs: bool,
                    metric: str = "test_acc") -> list[tuple[Point, Point]]:
    """The pairs a summary tests: those differing in exactly one setting (or every pair) of a small
    sweep; of a sweep of many points, the best point against each of the next LEADERS - 1 (or every
    pair of the LEADERS), few enough to correct and to show. Never two points of the same settings."""
    finished = [p for p in points if p.ok]
    if len(finished) <= MANY_POINTS:
        pairs = itertools.combinations(finished, 2)
        return [(a, b) for a, b in pairs if len(differing_keys(a, b, swept)) == 1
                or (all_pairs and differing_keys(a, b, swept))]
    leaders = rank_points(finished, metric)[:LEADERS]
    pairs = itertools.combinations(leaders, 2) if all_pairs else ((leaders[0], other) for other in leaders[1:])
    return [(a, b) for a, b in pairs if differing_keys(a, b, swept)]


def settings_of(point: Point, swept: Sequence[str]) -> tuple[str, ...]:
    return tuple(point.compared_value(key) for key in swept)


def drop_repeats(pairs: Sequence[tuple[Point, Point]], swept: Sequence[str],
                 metric: str) -> tuple[list[tuple[Point, Point]], list[tuple[Point, Point]]]:
    """(tested, repeats): one pair per two settings. Points of the same settings are one setting run again
    (another sweep, other seed counts; seeds 0-2 of a 3-seed run are seeds 0-2 of a 5-seed one), so their
    other pairs ask the same question again on the same seeds; counted as tests they would only dilute
    Holm's adjustment. The pair kept shares the most seeds, then holds the most."""
    best: dict[frozenset, tuple[Point, Point]] = {}
    for a, b in pairs:
        question = frozenset((settings_of(a, swept), settings_of(b, swept)))
        if question not in best or seed_coverage(a, b, metric) > seed_coverage(*best[question], metric):
            best[question] = (a, b)
    kept = {(id(a), id(b)) for a, b in best.values()}
    return ([(a, b) for a, b in pairs if (id(a), id(b)) in kept],
            [(a, b) for a, b in pairs if (id(a), id(b)) not in kept])


def seed_coverage(a: Point, b: Point, metric: str) -> tuple[int, int]:
    """(seeds both points scored, seeds scored in all): which of two pairs asking one question tests it on more."""
    values_a, values_b = a.values_by_seed(metric), b.values_by_seed(metric)
    shared = sum(values_a[s] is not None and values_b.get(s) is not None for s in values_a)
    return shared, a.n_values(metric) + b.n_values(metric)


def compare_seed_pairs(pairs: Sequence[tuple[SeedValues, SeedValues]]) -> list[tuple[dict, dict, float | None]]:
    """(t-test, power line, Holm-adjusted p) per pair of {seed: value}: each pair tested by
    `metrics.compare_seeds` (paired on shared seeds, else Welch's); the p-values are adjusted together,
    since the pairs are read as one family of tests."""
    tests = [compare_seeds(a, b) for a, b in pairs]
    adjusted = holm([test["p"] for test, _ in tests])
    return [(test, power, p_holm) for (test, power), p_holm in zip(tests, adjusted)]


def compare_points(points: Sequence[Point], swept: Sequence[str], all_pairs: bool,
                   metric: str = "test_acc") -> tuple[list[Comparison], list[tuple[Point, Point]]]:
    """(comparisons, repeats): the t-test on the per-seed `metric` of each candidate pair (paired on shared
    seeds, else Welch's), Holm-adjusted together, with each pair's power line; and the pairs left untested
    as repeats of a tested one (`drop_repeats`)."""
    pairs, repeats = drop_repeats(candidate_pairs(points, swept, all_pairs, metric), swept, metric)
    tests = compare_seed_pairs([(a.values_by_seed(metric), b.values_by_seed(metric)) for a, b in pairs])
    comparisons = []
    for (a, b), (test, power, p_holm) in zip(pairs, tests):
        differing = differing_keys(a, b, swept)
        shared = tuple(k for k in swept if k not in differing and a.compared_value(k) == b.compared_value(k))
        comparisons.append(Comparison(a, b, differing, shared, test, p_holm, power, metric))
    return comparisons, repeats


# --- what a figure measures against -----------------------------------------------


def all_pneumonia_rate(results: dict[str, Any] | None, split: str = "test") -> float | None:
    """The accuracy of always answering pneumonia on a run's `split`: (fn + tp) / total of a test
    confusion matrix [[tn, fp], [fn, tp]], else the class counts results.json records; None if neither."""
    if not results:
        return None
    if split == "test":
        for entry in results.get("per_seed") or ():
            confusion = entry.get("test_confusion") if isinstance(entry, dict) else None
            try:
                (tn, fp), (fn, tp) = confusion
                total = tn + fp + fn + tp
            except (TypeError, ValueError):
                continue
            if total > 0:
                return (fn + tp) / total
    counts = ((results.get("data_summary") or {}).get("counts") or {}).get(split) or {}
    total = sum(v for v in counts.values() if isinstance(v, (int, float)))
    return counts.get("PNEUMONIA", 0) / total if total and "PNEUMONIA" in counts else None
