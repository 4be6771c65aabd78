"""The metrics a job summarizes over seeds: one table that results.json, the bootstrap,
summary.md, summary.csv and the sweep readers all take their names from.

Kept free of numpy and torch: reading a sweep's summary should not pay for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str  # as results.json names it, in per_seed entries, summary and (test metrics) ensemble
    label: str  # as summary.md heads its column
    higher_is_better: bool
    percent: bool  # shown in percent in summary.md; else as a fraction (all are fractions in json and csv)
    test_set: bool = True  # measured on the test images: bootstrapped over them, and in the ensemble
    # results.json files from before the metric existed lack it; a summary shows – there instead of
    # calling the point failed.
    always_recorded: bool = True

    @property
    def scale(self) -> tuple[float, str, int]:
        """(factor, unit, digits) of summary.md: 74.9 %, or 0.812 for a fraction."""
        return (100.0, " %", 1) if self.percent else (1.0, "", 3)


# Test accuracy first: summary.md puts the ensemble's accuracy right after it.
METRICS = (
    Metric("test_acc", "test accuracy", higher_is_better=True, percent=True),
    Metric("test_balanced_acc", "balanced accuracy", higher_is_better=True, percent=True, always_recorded=False),
    Metric("test_auc", "AUC", higher_is_better=True, percent=False),
    Metric("test_sensitivity", "sensitivity", higher_is_better=True, percent=True),
    Metric("test_specificity", "specificity", higher_is_better=True, percent=True),
    Metric("test_ece", "ECE", higher_is_better=False, percent=False, always_recorded=False),
    Metric("test_brier", "Brier score", higher_is_better=False, percent=False, always_recorded=False),
    Metric("val_acc", "val accuracy", higher_is_better=True, percent=True, test_set=False),
    # Threshold-free and class-balanced measures on validation: what recipes are chosen on.
    Metric("val_balanced_acc", "val balanced accuracy", higher_is_better=True, percent=True, test_set=False,
           always_recorded=False),
    Metric("val_auc", "val AUC", higher_is_better=True, percent=False, test_set=False, always_recorded=False),
)
SUMMARY_KEYS = tuple(m.key for m in METRICS)
TEST_SET_KEYS = tuple(m.key for m in METRICS if m.test_set)
BY_KEY = {m.key: m for m in METRICS}


def mean_std_percent(stats: dict) -> str:
    """"86.3 ± 0.5 %": a summary's mean ± std over seeds in percent, one decimal ("–" without a seed)."""
    mean, std = (stats.get(k) if stats.get("n") else None for k in ("mean", "std"))
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f} %" if std is not None and math.isfinite(std) else f"{100 * mean:.1f} %"
