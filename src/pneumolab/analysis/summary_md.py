"""summary.md: a sweep's points, their two intervals, and the tests between them.

A sweep of a few dozen points gets one table row per point. Past that
(`points.MANY_POINTS`) a table of every point helps nobody: summary.md then leads with
the best points ranked and one main-effect table per swept key, and summary.csv keeps
every point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pneumolab.record.bootstrap import RESAMPLES
from pneumolab.record.metric_table import BY_KEY, METRICS
from pneumolab.record.metrics import ALPHA, ECE_BINS, POWER, summarize
from pneumolab.analysis.summary import Summary
from pneumolab.analysis.points import LEADERS, MANY_POINTS, Comparison, Point, differing_keys, rank_points


DASH = "–"
NO_TEST_SET_INTERVAL = "no test-set interval†"  # boot_notes says why under the table


def join_words(words: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else ""


def units_note() -> str:
    """Which columns are percent and which fractions, and which way is better, from the metric table."""
    percent = [m.label for m in METRICS if m.percent]
    fraction = [m.label for m in METRICS if not m.percent]
    lower = [m.label for m in METRICS if not m.higher_is_better]
    text = f"{join_words(percent)} in percent; {join_words(fraction)} as fractions. "
    return text[0].upper() + text[1:] + f"Lower is better for {join_words(lower)}, higher for the rest."


INTERVALS_NOTE = (
    "Each metric is mean ± std over seeds, then two 95 % intervals of the mean: **seeds** covers training "
    "again with other seeds and testing on these same images (Student t over seeds); **test set** covers "
    f"testing on another test set of the same size and class balance (bootstrap over test images, "
    f"{RESAMPLES} resamples). Compare points of one sweep, which share the test images, with the seeds "
    "interval; quote a number as a property of the model with the test-set interval. "
    f"{units_note()} *Balanced accuracy*: the mean of sensitivity and specificity, which the class "
    f"balance does not sway. *ECE* (expected calibration error, {ECE_BINS} equal-width bins of P(pneumonia)) "
    "and *Brier score* (mean squared error of P(pneumonia)) judge the predicted probabilities, not only "
    "the verdicts. *Ensemble*: the accuracy of the mean probability over a point's seeds. A seeds "
    "interval marked * reached past 0 or 100 % and is clipped.")


def label_point(point: Point, out_dir: Path) -> str:
    """The job dir as seen from the summary's folder: "3" in a sweep, "../other/0" across sweeps."""
    label = os.path.relpath(point.job_dir, Path(out_dir).resolve())
    return point.job_dir.name if label == "." else label


def scale_of(metric: str) -> tuple[float, str, int]:
    """(factor, unit, digits) of the metric table: percent, or a fraction such as the AUC."""
    return BY_KEY[metric].scale


def format_stat(metric: str, stats: dict[str, Any]) -> str:
    """"74.9 ± 1.2 % seeds [72.1, 77.7], test set [70.0, 79.0]", saying so when there is no spread to show."""
    if not stats or stats.get("mean") is None:
        return DASH
    scale, unit, digits = scale_of(metric)
    # std is null with one seed (no spread measured, never 0).
    mean, std, n = stats["mean"] * scale, None if stats["std"] is None else stats["std"] * scale, stats["n"]

    def pair(low: float, high: float) -> str:
        return f"[{low * scale:.{digits}f}, {high * scale:.{digits}f}]"

    if n == 1:
        text = f"{mean:.{digits}f}{unit} (1 seed: no spread)"
    elif std == 0:
        text = f"{mean:.{digits}f}{unit} (all {n} seeds equal: no seed spread)"
    else:
        clipped = "*" if stats.get("ci95_clipped") else ""
        text = f"{mean:.{digits}f} ± {std:.{digits}f}{unit} seeds {pair(stats['ci95_low'], stats['ci95_high'])}{clipped}"
    if stats.get("boot95_low") is not None:
        text += f", test set {pair(stats['boot95_low'], stats['boot95_high'])}"
    elif stats.get("boot95_note"):
        text += f", {NO_TEST_SET_INTERVAL}"
    return text


def boot_notes(points: Sequence[Point], out_dir: Path) -> list[str]:
    """Under a table: why the cells marked NO_TEST_SET_INTERVAL have none (results.json's `boot95_note`),
    each reason once with the points it holds for; [] when every interval stands."""
    reasons: dict[str, dict[str, None]] = {}
    for point in points:
        for metric in METRICS:
            stats = point.stats(metric.key)
            if stats.get("boot95_low") is None and stats.get("boot95_note"):
                reasons.setdefault(stats["boot95_note"], {})[label_point(point, out_dir)] = None
    return ["", *(f"† No test-set interval: {note} (point{'s' if len(labels) > 1 else ''} {join_words(list(labels))})."
                  for note, labels in reasons.items())] if reasons else []


def percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f} %"


def escape_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in rows]


def status_cells(point: Point) -> list[str]:
    if point.ok:
        return [str(len(point.per_seed)), str(point.n_diverged), "ok"]
    return [DASH, DASH, f"failed: {point.error}"]


def format_points(summary: Summary, out_dir: Path) -> list[str]:
    keys = (*summary.labels, *summary.swept)
    header = ["point", *keys, METRICS[0].label, "ensemble", *(m.label for m in METRICS[1:]),
              "seeds", "diverged", "status"]
    rows = []
    for point in summary.points:
        stats = [format_stat(m.key, point.stats(m.key)) for m in METRICS]
        rows.append([label_point(point, out_dir), *(point.setting(k) for k in keys), stats[0],
                     percent(point.ensemble_acc), *stats[1:], *status_cells(point)])
    return table(header, rows) + boot_notes(summary.points, out_dir)


def format_leaders(summary: Summary, out_dir: Path) -> list[str]:
    metric = BY_KEY[summary.metric]
    ranked = rank_points(summary.points, metric.key)[:LEADERS]
    shown = list(dict.fromkeys([metric.key, "test_acc"]))
    rows = [[str(i), label_point(p, out_dir), " ".join(f"{k}={p.setting(k)}" for k in summary.swept),
             *(format_stat(key, p.stats(key)) for key in shown), percent(p.ensemble_acc),
             format_stat("val_acc", p.stats("val_acc"))] for i, p in enumerate(ranked, 1)]
    return [f"## The best {len(ranked)} points by mean {metric.label}", "",
            *table(["rank", "point", "settings", *(BY_KEY[key].label for key in shown), "ensemble", "val accuracy"],
                   rows), *boot_notes(ranked, out_dir)]


def value_text(metric: str, value: float | None) -> str:
    """A value of `metric` as a person reads it: "74.9 %", or "0.812" for a fraction."""
    if value is None:
        return DASH
    scale, unit, digits = scale_of(metric)
    return f"{scale * value:.{digits}f}{unit}"


def diff_text(metric: str, diff: float | None) -> str:
    """A difference of `metric`: "+1.2 pt" (percentage points), or "+0.023" for a fraction."""
    if diff is None:
        return DASH
    scale, unit, digits = scale_of(metric)
    return f"{scale * diff:+.{digits}f}{' pt' if unit else ''}"


def main_effect(points: Sequence[Point], key: str, value: str, metric: str = "test_acc") -> dict[str, Any]:
    """The mean `metric` of the points with `key=value`, over every value of the other keys."""
    members = [p for p in points if p.setting(key) == value]
    best = rank_points(members, metric)
    return {"n": len(members), "best": best[0] if best else members[0],
            **summarize([p.mean(metric) for p in members])}


def format_main_effects(summary: Summary, out_dir: Path) -> list[str]:
    metric = BY_KEY[summary.metric]
    ranked = rank_points(summary.points, metric.key)
    scale, _, digits = metric.scale
    lines = ["## Main effects", "",
             f"For each swept key, each value's mean {metric.label} over the finished points holding it "
             "(so over every value of the other keys), with a Student-t 95 % interval over those points.", ""]
    for key in summary.swept:
        values = list(dict.fromkeys(p.setting(key) for p in ranked))
        rows = []
        for value in values:
            effect = main_effect(ranked, key, value, metric.key)
            rows.append([value, str(effect["n"]), value_text(metric.key, effect["mean"]),
                         DASH if effect["ci95_low"] is None else  # one point: no interval
                         f"[{scale * effect['ci95_low']:.{digits}f}, {scale * effect['ci95_high']:.{digits}f}]",
                         f"{label_point(effect['best'], out_dir)} "
                         f"({value_text(metric.key, effect['best'].mean(metric.key))})"])
        lines += [f"### `{key}`", "", *table([key, "points", f"mean {metric.label}", "95 % CI over points",
                                               "best point"], rows), ""]
    return lines


def format_failed(summary: Summary, out_dir: Path) -> list[str]:
    if not summary.failed:
        return []
    return ["## Failed points", "",
            *(f"- {label_point(p, out_dir)} ({' '.join(p.overrides) or 'no overrides'}): {p.error}"
              for p in summary.failed), ""]


def side(c: Comparison, point: Point, out_dir: Path) -> str:
    return " ".join(f"{k}={point.setting(k)}" for k in c.differing) or label_point(point, out_dir)


def p_text(p: float | None) -> str:
    """A p-value in a table cell: "< 0.001" or "0.012"."""
    return DASH if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def p_phrase(p: float | None, name: str = "p") -> str:
    """A p-value in a sentence: "p < 0.001", "p = 0.012" (or "Holm p = 0.048" with `name`)."""
    if p is None:
        return f"{name}: no test"
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def verdict(c: Comparison) -> str:
    if c.test["diff"] is None:
        return f"no test: a side has no {BY_KEY[c.metric].label}"
    if c.test["p"] is None:
        return "no test: it needs at least 2 seeds on each side"
    return "significant" if c.significant else "not significant"


def describe_comparison(c: Comparison, out_dir: Path) -> str:
    """One line for the log: "head=bce vs head=ce at data.batch_size=32: test accuracy +0.1 pt, paired p = 0.433,
    Holm p = 0.866, not significant (points 0 and 1)"."""
    context = f" at {', '.join(f'{k}={c.a.setting(k)}' for k in c.shared)}" if c.shared else ""
    holm_text = f", {p_phrase(c.p_holm, 'Holm p')}" if c.p_holm != c.test["p"] else ""
    return (f"{side(c, c.a, out_dir)} vs {side(c, c.b, out_dir)}{context}: {BY_KEY[c.metric].label} "
            f"{diff_text(c.metric, c.test['diff'])}, {c.test['kind']} {p_phrase(c.test['p'])}{holm_text}, {verdict(c)} "
            f"(points {label_point(c.a, out_dir)} and {label_point(c.b, out_dir)})")


def seeds_tested(test: dict[str, Any], n_a: int, n_b: int) -> str:
    """Which test ran on which seeds (`metrics.compare_seeds`; n_a and n_b seeds with a value): "paired, 5 seeds",
    "paired, 3 seeds (2 not on both sides left out)", "Welch, 3 vs 5 seeds"."""
    if test["kind"] == "paired":
        left_out = test["left_out"]
        return f"paired, {len(test['seeds'])} seeds" + (f" ({left_out} not on both sides left out)" if left_out else "")
    return f"Welch, {n_a} vs {n_b} seeds"


def comparison_row(c: Comparison, out_dir: Path) -> list[str]:
    context = f" at {', '.join(f'{k}={c.a.setting(k)}' for k in c.shared)}" if c.shared else ""
    detectable, needed = c.power["min_detectable"], c.power["seeds_needed"]
    if c.power["std"] == 0:
        detectable_text, needed_text = "no seed spread", DASH
    else:
        detectable_text = diff_text(c.metric, detectable).lstrip("+")
        needed_text = DASH if needed is None else str(needed)
    return [f"{side(c, c.a, out_dir)} vs {side(c, c.b, out_dir)}{context}", diff_text(c.metric, c.test["diff"]),
            seeds_tested(c.test, c.a.n_values(c.metric), c.b.n_values(c.metric)), p_text(c.test["p"]), p_text(c.p_holm), verdict(c), detectable_text, needed_text,
            f"{label_point(c.a, out_dir)} vs {label_point(c.b, out_dir)}"]


def repeats_text(summary: Summary, out_dir: Path) -> str:
    """The pairs left untested because a tested pair asks the same question."""
    listed = ", ".join(f"{label_point(a, out_dir)} vs {label_point(b, out_dir)}" for a, b in summary.repeats)
    return (f"Not tested, as repeats ({listed}): these points hold the same settings as a tested pair's, run again "
            "(another sweep, other seed counts), so they ask its question again, largely on the same seeds, and as "
            "further tests they would only weaken Holm's adjustment. Each question is tested once, on the pair that "
            "shares the most seeds.")


def scope_text(summary: Summary) -> str:
    if len([p for p in summary.points if p.ok]) > MANY_POINTS:
        return (f"every pair of the best {LEADERS} points" if summary.all_pairs else
                f"the best point against each of the next {LEADERS - 1}") + \
            " (a sweep this large has too many pairs to correct and show; every point is in summary.csv)"
    return "every pair of finished points" if summary.all_pairs else \
        "every pair of finished points whose resolved configs differ in exactly one setting"


def tested_text(summary: Summary) -> str:
    """Why no pair was tested, naming what differs, key by key; "" when some pair was, or none can be."""
    finished = [p for p in summary.points if p.ok]
    if summary.comparisons or len(finished) < 2:
        return ""
    hint = "`pneumolab-summarize DIR [DIR ...] --all-pairs` tests every pair anyway."
    if len(finished) == 2:
        a, b = finished
        keys = differing_keys(a, b, summary.swept)
        if not keys:
            return f"The two points' resolved configs differ in no setting: nothing to compare. {hint}"
        return (f"The two points differ in {len(keys)} settings ({', '.join(f'`{k}`' for k in keys)}), not "
                f"one, so no test can put a difference down to one of them. {hint}")
    return f"No two finished points' resolved configs differ in exactly one setting. {hint}"


def format_significance(summary: Summary, out_dir: Path) -> list[str]:
    n = len(summary.comparisons)
    metric = BY_KEY[summary.metric]
    correction = (f"The {n} p-values are Holm-adjusted together (p (Holm)), which keeps the chance of any "
                  f"false \"significant\" among them at {100 * ALPHA:.0f} %; verdicts use p (Holm). ") if n > 1 else ""
    units = ("in percentage points (pt)" if metric.percent else "as fractions")
    lines = ["## Significance", "",
             f"A t-test over seeds on {metric.label} (`{metric.key}`; two-sided, significant at p < {ALPHA}), "
             f"for {scope_text(summary)}: *paired* on the seeds both points ran (a seed starts both from the same "
             "weights and batch order, so its two runs are no independent samples; seeds only one point ran are "
             "left out), *Welch's* when they share fewer than two seeds. "
             f"Differences are {units}, first point minus second (of the paired seeds' means, for a paired test). "
             f"{correction}*Detectable*: the smallest true difference these seeds find with "
             f"{100 * POWER:.0f} % power, from their spread (of the per-seed differences, for a paired test); "
             f"*seeds needed*: seeds per side that find the observed difference with {100 * POWER:.0f} % power "
             "(– when none up to 10,000 would). "
             "Another metric: `pneumolab-summarize DIR --metric NAME` (test_auc, test_sensitivity, ...).", ""]
    if sum(p.ok for p in summary.points) < 2:
        return lines + ["Fewer than two finished points: nothing to compare."]
    if not summary.comparisons:
        return lines + [tested_text(summary)]
    header = ["comparison", "difference", "test", "p", "p (Holm)", "verdict",
              f"detectable ({100 * POWER:.0f} % power)", "seeds needed", "points"]
    rows = table(header, [comparison_row(c, out_dir) for c in summary.comparisons])
    return lines + rows + (["", repeats_text(summary, out_dir)] if summary.repeats else [])


def format_markdown(summary: Summary, out_dir: Path, plotted: bool) -> str:
    n_failed, n = len(summary.failed), len(summary.points)
    lines = ["# Sweep summary", "", f"{n} point{'s' if n != 1 else ''}: {n - n_failed} ok, {n_failed} failed.", "",
             INTERVALS_NOTE, ""]
    if summary.swept:
        lines += ["Settings that differ between points (resolved configs, key by key): "
                  + ", ".join(f"`{k}`" for k in summary.swept), ""]
    if summary.labels:
        lines += ["Also told apart by (not settings, never counted as differences): "
                  + ", ".join(f"`{k}`" for k in summary.labels), ""]
    if summary.common:
        lines += ["Same for every point: " + " ".join(f"`{k}={v}`" for k, v in summary.common.items()), ""]
    if n - n_failed > MANY_POINTS:
        lines += [*format_leaders(summary, out_dir), "", *format_main_effects(summary, out_dir),
                  *format_failed(summary, out_dir)]
    else:
        lines += [*format_points(summary, out_dir), ""]
    if plotted:
        lines += [f"![{BY_KEY['val_acc' if summary.search else summary.metric].label}](summary.png)", ""]
    lines += [*format_significance(summary, out_dir), ""]
    return "\n".join(lines)
