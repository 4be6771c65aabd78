"""What a summary of sweep points holds: the points, the settings they differ in, and the tests between them.

Built from the job files under one or more folders (`analysis.points`); `analysis.sweep` writes it,
`analysis.summary_md` words it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from pneumolab.analysis.points import (
    Comparison, Point, compare_points, find_common_settings, find_differing_settings, find_label_keys, find_points,
)

SEARCH_SWEEPER = "optuna"  # a sweep whose sweeper searches: plotted as the objective per trial


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
