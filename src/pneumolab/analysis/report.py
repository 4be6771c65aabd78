"""REPORT.md: the course report's eight settings, read back from the sweep that ran them
(`pneumolab-report`, cli/reproduce.py, runs it), set against the report's numbers.

The settings live in conf/experiment/report/ (one file per figure of the report) and
share what the report leaves open through conf/experiment/report_settings.yaml. Jobs
are matched to the report's figures through the `report_figure` their config carries,
not through job numbers, so a sweep with extra points or a different launch order still
maps every job to the right figure. A failed or missing job becomes a line in the
report, never a crash, so a long real-data sweep always ends with a readable report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import OmegaConf

from pneumolab.config import config_dir
from pneumolab.files import atomic_write_text, written_together
from pneumolab.record.metrics import ALPHA
from pneumolab.record.names import FAILURE, METRICS_CSV, REPORT_MD, RESULTS, RUN_RECORD
from pneumolab.outputs.plots import plot_curves_grid, plot_summary
from pneumolab.record.results import read_json, read_metrics_csv
from pneumolab.analysis.points import (Point, all_pneumonia_rate, compare_seed_pairs, natural_key, node_at,
                                       read_point)
from pneumolab.analysis.summary_md import p_phrase, seeds_tested, table

REPORT_GROUP = "report"  # conf/experiment/report/: one config per figure of the report
SHARED_SETTINGS = "report_settings"  # conf/experiment/report_settings.yaml, included by every figure
DASH = "—"  # REPORT.md's mark for no value (summary.md's is "–")


# --- the settings ---------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One figure of the report, as its experiment config declares it."""

    figure: int
    tag: str
    caption: str
    reported_acc: float

    @staticmethod
    def from_config(config: dict) -> Setting | None:
        meta = config.get("report_figure")
        if not meta:
            return None
        return Setting(int(meta["figure"]), str(config.get("tag") or f"fig{meta['figure']}"),
                       str(meta["caption"]), float(meta["reported_acc"]))


def experiment_dir() -> Path:
    return Path(config_dir(), "experiment")


def report_config_files() -> list[Path]:
    return sorted((experiment_dir() / REPORT_GROUP).glob("*.yaml"))


def report_experiments() -> list[str]:
    """The `experiment=` choices of the eight settings: report/fig1_bce, ..."""
    return [f"{REPORT_GROUP}/{path.stem}" for path in report_config_files()]


def load_report_configs() -> dict[int, dict]:
    """The experiment configs of the report's settings as written, by figure number."""
    configs = (OmegaConf.to_container(OmegaConf.load(path)) for path in report_config_files())
    return {int(c["report_figure"]["figure"]): c for c in configs if c.get("report_figure")}


# --- reading a finished sweep -----------------------------------------------


def has_jobs(sweep_dir: Path) -> bool:
    """Whether any job of the sweep finished or failed (a sweep can fail before its first job)."""
    return any((p / RESULTS).is_file() or (p / FAILURE).is_file() for p in sweep_dir.glob("*/"))


def find_sweep_dir(directory: Path) -> Path:
    """A previous run of the script keeps its sweep in DIR/runs; any other multirun dir is the sweep itself."""
    return directory / "runs" if (directory / "runs").is_dir() else directory


def read_sweep(sweep_dir: Path) -> tuple[list[Point], list[Path]]:
    """Every job that finished or failed, read as sweep summaries read it (the newer of its files wins),
    and the job directories that did neither. Only the sweep's own job directories count, not folders
    further down (`points.find_points` would search those too)."""
    jobs, unfinished = [], []
    for path in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=natural_key):
        job = read_point(path)
        if job is not None:
            jobs.append(job)
        elif (path / ".hydra").is_dir():
            unfinished.append(path)
    return jobs, unfinished


# --- the comparisons the report draws conclusions from -----------------------


@dataclass(frozen=True)
class HeadComparison:
    label: str
    bce: int  # figure numbers
    ce: int


@dataclass(frozen=True)
class Trend:
    label: str
    key: str  # dotted config key of the varied value
    figures: tuple[int, ...]
    image: str
    note: str = ""
    schedule: bool = False  # the value acts through the learning-rate schedule: only a run where the LR changed shows it


HEAD_COMPARISONS = (
    HeadComparison("default setting (batch 32, StepLR step 10, base lr)", bce=1, ce=2),
    HeadComparison("combined setting (batch 128, StepLR step 3, lr 1e-6)", bce=8, ce=7),
)
TRENDS = (
    Trend("batch size", "data.batch_size", (2, 3, 4), "trend_batch_size.png",
          note="The report also quotes 73.75 % for CE at batch 32 in its batch-size section; "
               "the table uses Fig. 2's 74.85 %."),
    Trend("StepLR step size", "scheduler.step_size", (5, 2, 6), "trend_step_size.png", schedule=True),
)
CURVE_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8))  # the report's sections: heads, batch size, step size, combined


@dataclass(frozen=True)
class Detail:
    """A setting the report leaves open (or states in passing), and why it has its value."""

    label: str
    keys: tuple[str, ...]  # the first key present in a job's config gives the value
    source: str
    reason: str
    skip_figures: tuple[int, ...] = ()


FIXED_DETAILS = (
    Detail("optimizer", ("optimizer.name",), "our choice",
           "The report names none. Adam trains this small MLP well at its standard settings, so "
           "differences between settings are not differences in optimizer tuning."),
    Detail("base learning rate", ("optimizer.lr",), "our choice",
           "The report only gives the 1e-6 of Fig. 7 and 8. 1e-3 is Adam's standard default "
           "(Kingma & Ba, and PyTorch's).", skip_figures=(7, 8)),
    Detail("epochs", ("trainer.epochs",), "our choice",
           "The report says accuracy flattens after about 20 epochs and 60 epochs did not help; "
           "30 covers the plateau and, at StepLR step 10, two learning-rate decays."),
    Detail("image size", ("data.image_size", "data.size"), "our choice",
           "The report does not give it; 28 × 28 is PneumoniaMNIST's base size and the default "
           "of every data source here."),
    Detail("StepLR gamma", ("scheduler.gamma",), "the report", "Stated in the report (\"even with gamma 0.1\")."),
    Detail("hidden layers", ("model.hidden_sizes",), "the report", "Three hidden layers of 128 nodes."),
    Detail("LeakyReLU negative slope", ("model.negative_slope",), "our choice",
           "The report names LeakyReLU without a slope; 0.01 is PyTorch's default."),
    Detail("dropout", ("model.dropout",), "our choice", "The report mentions none."),
    Detail("weights tested", ("trainer.eval_checkpoint",), "our choice",
           "The report mentions no early stopping, so the weights after the last epoch are tested."),
)


# --- formatting ---------------------------------------------------------------


def first_value(config: dict, keys: Sequence[str]) -> Any:
    return next((v for v in (node_at(config, k) for k in keys) if v is not None), None)


def percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.2f}"


def mean_std(stat: dict, scale: Callable[[float | None], str] = percent) -> str:
    return DASH if not stat.get("n") else f"{scale(stat['mean'])} ± {scale(stat['std'])}"


def fraction(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


SEEDS_INTERVAL = ("The seeds CI (Student t over seeds, clipped to [0, 100] %) covers training again with other "
                  "seeds and testing on the same images; it compares our settings, which share those images.")
TEST_SET_INTERVAL = ("The test-set CI (bootstrap over test images, class balance kept) covers drawing another test "
                     "set of the same size; it is the one to set a number from another test run against.")


def ci_text(stat: dict) -> str:
    if not stat.get("n"):
        return DASH
    if stat["n"] == 1:
        return "1 seed: no spread"
    if stat["std"] == 0:
        return f"all {stat['n']} seeds equal"
    clipped = " (clipped)" if stat.get("ci95_clipped") else ""
    return f"[{percent(stat['ci95_low'])}, {percent(stat['ci95_high'])}]{clipped}"


def boot_text(stat: dict) -> str:
    if stat.get("boot95_low") is None:
        return DASH
    return f"[{percent(stat['boot95_low'])}, {percent(stat['boot95_high'])}]"


def boot_position(reported: float, stat: dict) -> str | None:
    """Where the report's value lies against our test-set 95 % CI (inside, above, below); None without one."""
    if stat.get("boot95_low") is None:
        return None
    if reported > stat["boot95_high"]:
        return "above"
    if reported < stat["boot95_low"]:
        return "below"
    return "inside"


def plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return DASH if value is None else str(value)


def scientific(value: Any) -> str:
    return f"{value:.0e}" if isinstance(value, (int, float)) else plain(value)


def signed_pp(diff: float | None) -> str:
    return DASH if diff is None else f"{100 * diff:+.2f}"


def distinct(values: Iterable[Any]) -> str:
    unique = list(dict.fromkeys(plain(v) for v in values))
    return ", ".join(unique) if unique else DASH


def ranking(accuracies: Sequence[tuple[str, float]], numbers: bool = True) -> str:
    """(name, accuracy) pairs best first, e.g. "128 > 32 = 64 (76.05 > 74.85 = 74.85 %)"."""
    order = sorted(accuracies, key=lambda item: -item[1])
    names, values = [order[0][0]], [percent(order[0][1])]
    for (_, previous), (name, acc) in zip(order, order[1:]):
        sign = " = " if acc == previous else " > "
        names.append(sign + name)
        values.append(sign + percent(acc))
    return "".join(names) + (f" ({''.join(values)} %)" if numbers else "")


# --- the report -----------------------------------------------------------------


class Report:
    """The sweep of the report's settings, each job placed at its figure, and what went wrong."""

    def __init__(self, sweep_dir: Path, out_dir: Path) -> None:
        self.sweep_dir = sweep_dir
        self.out_dir = out_dir
        self.run_record = read_json(sweep_dir / RUN_RECORD)[0] or {}
        all_jobs, unfinished = read_sweep(sweep_dir)
        # What the config files declare; what ran (the jobs' configs) takes precedence where known.
        self.declared = load_report_configs()
        self.settings = {figure: Setting.from_config(config) for figure, config in self.declared.items()}
        self.jobs: dict[int, Point] = {}
        self.problems: list[str] = []
        for job in all_jobs:
            self.place(job)
        for figure in sorted(set(self.settings) - set(self.jobs)):
            self.problems.append(f"Fig. {figure} ({self.settings[figure].tag}) has no finished or failed job in the sweep.")
        for path in unfinished:
            self.problems.append(f"Job {path.name} did not finish (no {RESULTS} or {FAILURE}); re-run the sweep to complete it.")

    def place(self, job: Point) -> None:
        setting = Setting.from_config(job.config)
        if setting is None:
            self.problems.append(f"Job {job.job_dir.name} is not one of the report's settings (no report_figure); ignored.")
        elif setting.figure in self.jobs:
            self.problems.append(f"Fig. {setting.figure} has more than one job; job {job.job_dir.name} is ignored.")
        else:
            self.jobs[setting.figure] = job
            self.settings[setting.figure] = setting
            if job.error is not None:
                self.problems.append(f"Fig. {setting.figure} ({setting.tag}) failed: {job.error}")

    @property
    def figures(self) -> list[int]:
        return sorted(self.settings)

    def finished(self, figures: Iterable[int]) -> list[Point]:
        return [self.jobs[f] for f in figures if f in self.jobs and self.jobs[f].results]

    def stat(self, figure: int, key: str = "test_acc") -> dict:
        """results.json's summary of `key` for the figure; {"n": 0} without a finished job (no seed to count)."""
        job = self.jobs.get(figure)
        return (job.stats(key) if job else {}) or {"n": 0}

    def value(self, figure: int, key: str) -> Any:
        job = self.jobs.get(figure)
        return node_at(job.config, key) if job else None

    def accuracies(self, figure: int) -> list[float | None]:
        job = self.jobs.get(figure)
        return job.seed_values() if job else []

    def accuracies_by_seed(self, figure: int) -> dict[int, float | None]:
        job = self.jobs.get(figure)
        return job.values_by_seed() if job else {}

    def lr_changes(self, figure: int) -> int | None:
        """How often the learning rate changed from one epoch to the next in the figure's run (the most of any
        seed), read from its metrics.csv: what its schedule did, not what its config says; None without one."""
        job = self.jobs.get(figure)
        if job is None or not (job.job_dir / METRICS_CSV).is_file():
            return None
        histories = read_metrics_csv(job.job_dir / METRICS_CSV)
        return max((sum(a != b for a, b in zip(h["lr"], h["lr"][1:])) for h in histories), default=0)

    def head_tests(self) -> list[tuple[HeadComparison, dict, float | None, dict]]:
        """(comparison, t-test, Holm-adjusted p over both comparisons, power line) per head comparison: paired
        on the seeds both figures ran (the report's settings share them), else Welch's."""
        tests = compare_seed_pairs([(self.accuracies_by_seed(c.bce), self.accuracies_by_seed(c.ce))
                                    for c in HEAD_COMPARISONS])
        return [(c, test, p_holm, power) for c, (test, power, p_holm) in zip(HEAD_COMPARISONS, tests)]


# --- the sections of REPORT.md ---------------------------------------------------


def for_people(report: Report, text: str) -> str:
    """`text` with the absolute forms of the sweep's paths back as they were typed (relative stays relative)."""
    for typed in report.run_record.get("typed_paths", []):
        text = text.replace(str(Path(typed).expanduser().resolve()), typed)
    return text


def header_section(report: Report) -> list[str]:
    done = report.finished(report.figures)
    training = sum(job.results["wall_seconds"] for job in done)
    wall = report.run_record.get("wall_seconds")
    lines = [
        "# Reproducing the report: normal vs pneumonia chest X-rays with a small MLP",
        "",
        "The eight settings of the course report (`seed_report.txt`), each trained once per seed "
        "and tested on the held-out test split. Accuracies are percentages; the report's are "
        "means over five runs, ours are mean ± sample std over seeds with two 95 % intervals. "
        f"{SEEDS_INTERVAL} {TEST_SET_INTERVAL}",
        "",
        f"- Data: {for_people(report, distinct(job.results['data'] for job in done))}",
        f"- Epochs: {distinct(node_at(job.config, 'trainer.epochs') for job in done)}",
        f"- Seeds: {distinct(', '.join(map(str, job.results.get('seeds', []))) for job in done)}",
        f"- Device: {distinct(job.results['device'] for job in done)}",
        f"- Training time: {training:.1f} s summed over {len(done)} jobs"
        + (f"; the last sweep command took {wall:.1f} s wall time (a re-run skips finished settings)"
           if wall is not None else ""),
        f"- Sweep directory: `{os.path.relpath(report.sweep_dir, report.out_dir)}` (beside this file)",
    ]
    if "command" in report.run_record:
        lines.append(f"- Command: `{report.run_record['command']}`")
    return lines


def results_section(report: Report) -> list[str]:
    rows = []
    for figure in report.figures:
        setting, acc = report.settings[figure], report.stat(figure)
        job = report.jobs.get(figure)
        diverged = f"{job.n_diverged}/{len(job.per_seed)}" if job and job.ok else DASH
        rows.append([
            f"Fig. {figure}", setting.tag, plain(report.value(figure, "head.name")),
            plain(report.value(figure, "data.batch_size")), plain(report.value(figure, "scheduler.step_size")),
            scientific(report.value(figure, "optimizer.lr")), percent(setting.reported_acc), mean_std(acc),
            ci_text(acc), boot_text(acc), percent(job.ensemble_acc if job else None),
            mean_std(report.stat(figure, "test_auc"), fraction), boot_position(setting.reported_acc, acc) or DASH,
            diverged,
        ])
    header = ["figure", "setting", "head", "batch", "step", "lr", "report, %", "ours, % (mean ± std)",
              "ours, 95 % CI (seeds)", "ours, 95 % CI (test set)", "ensemble, %", "AUC (mean ± std)",
              "report vs our test-set CI", "diverged seeds"]
    return ["## Results", "", *table(header, rows), "",
            "*Ensemble*: the accuracy of the mean probability over a setting's seeds. The report's number is "
            "set against the test-set interval, the one that covers how far another draw of test images "
            "(which the report's number also is) can move ours."]


def agreement_section(report: Report) -> list[str]:
    lines = ["## Where we agree and disagree with the report", ""]
    if shorter := shorter_run_text(report):
        lines.append(f"- {shorter}")
    lines += [f"- {text}" for text in ci_findings(report)]
    lines += [f"- {describe_heads(report, *test)}" for test in report.head_tests()]
    lines += [f"- {describe_trend(report, t)}" for t in TRENDS]
    if report.problems:
        lines.append(f"- {len(report.problems)} problem(s) with the sweep limit these conclusions; see Problems below.")
    return lines


def shorter_run_text(report: Report) -> str:
    """A warning when the jobs trained fewer epochs than the settings declare: the report's numbers then come
    from a longer training than ours, and no agreement or disagreement below is about the settings as written."""
    declared = node_at(shared_settings(), "trainer.epochs")
    ran = {node_at(job.config, "trainer.epochs") for job in report.finished(report.figures)}
    if declared is None or not ran or max(ran) >= declared:
        return ""
    return (f"Our jobs trained {distinct(sorted(ran))} epochs, not the {declared} the settings declare: every "
            "comparison with the report below sets a shorter training against the report's, so it tests this "
            "run, not the report's claims.")


def ci_findings(report: Report) -> list[str]:
    groups: dict[str | None, list[int]] = {}
    for figure in report.figures:
        groups.setdefault(boot_position(report.settings[figure].reported_acc, report.stat(figure)), []).append(figure)

    def detail(figure: int) -> str:
        acc = report.stat(figure)
        return (f"Fig. {figure} (report {percent(report.settings[figure].reported_acc)} %, "
                f"ours {percent(acc['mean'])} % {boot_text(acc)})")

    inside = groups.get("inside", [])
    findings = [f"The report's accuracy lies inside our test-set 95 % CI (bootstrap over test images) for "
                f"{len(inside)} of {len(report.figures)} settings"
                + (f": {', '.join(f'Fig. {f}' for f in inside)}." if inside else ".")]
    for position, verb in (("above", "higher than"), ("below", "lower than")):
        if groups.get(position):
            findings.append(f"The report's accuracy is {verb} our whole test-set CI for "
                            + "; ".join(detail(f) for f in groups[position]) + ".")
    for figure in groups.get(None, []):
        # boot95_note says why: too few test images of a class, or no seed with a result.
        findings.append(f"No test-set CI for Fig. {figure}: "
                        f"{report.stat(figure).get('boot95_note') or 'no seed with a result'}.")
    return findings


def describe_heads(report: Report, comparison: HeadComparison, test: dict, p_holm: float | None,
                   power: dict) -> str:
    bce, ce = report.settings[comparison.bce], report.settings[comparison.ce]
    reported = bce.reported_acc - ce.reported_acc
    winner = "BCE" if reported > 0 else "CE"
    said = (f"At the {comparison.label} the report found {winner} ahead by {abs(100 * reported):.2f} points "
            f"(Fig. {comparison.bce} vs {comparison.ce}: {percent(bce.reported_acc)} vs {percent(ce.reported_acc)} %).")
    if test["p"] is None:
        return f"{said} We cannot test this: fewer than two seeds with a result on a side."
    ours = (f"we find BCE − CE = {signed_pp(test['diff'])} points ({test['kind']} {p_phrase(test['p'])}, "
            f"{p_phrase(p_holm, 'p (Holm, over both head comparisons)')})")
    significant = p_holm < ALPHA
    same_direction = test["diff"] * reported > 0
    if same_direction and significant:
        verdict = f"We agree: {ours}, beyond seed-to-seed noise."
    elif same_direction:
        verdict = f"Same direction, but not significant: {ours}, within seed-to-seed noise."
    elif significant:
        verdict = f"We disagree: {ours}, significantly the other way."
    else:
        verdict = f"We see no support for it: {ours}, not significant."
    return f"{said} {verdict} {power_text(power)}"


def power_text(power: dict) -> str:
    if power["min_detectable"] is None:
        return ""
    if power["std"] == 0:
        return "Every seed of both sides scored the same: there is no seed spread to size a test by."
    needed = power["seeds_needed"]
    return (f"These seeds detect a difference of {100 * power['min_detectable']:.2f} points with 80 % power; "
            + (f"the observed difference needs {needed} seeds per side." if needed else
               "no practical number of seeds detects the observed difference."))


def describe_trend(report: Report, trend: Trend) -> str:
    reported = [(plain(node_at(report.declared.get(f, {}), trend.key)), report.settings[f].reported_acc)
                for f in trend.figures]
    said = f"CE {trend.label}: the report ranks {ranking(reported)}."
    if any(not report.stat(f).get("n") for f in trend.figures):
        return f"{said} We lack results for part of this trend."
    idle = [f for f in trend.figures if trend.schedule and report.lr_changes(f) == 0]
    epochs = distinct(report.value(f, "trainer.epochs") for f in trend.figures)
    if idle and len(idle) == len(trend.figures):
        return (f"{said} Our run cannot rank them: in {epochs} epochs the learning rate never changed at any "
                f"{trend.label} ({distinct(report.value(f, trend.key) for f in idle)}), so the schedule did not act "
                f"and the settings trained alike. Train more epochs than the {trend.label} to compare them.")
    ours = [(plain(report.value(f, trend.key)), report.stat(f)["mean"]) for f in trend.figures]
    best = max(acc for _, acc in ours)
    if ranking(ours, numbers=False) == ranking(reported, numbers=False):
        verdict = "the same order"
    elif max(reported, key=lambda item: item[1])[0] in [name for name, acc in ours if acc == best]:
        verdict = "the same best setting" + (" (tied)" if sum(acc == best for _, acc in ours) > 1 else "")
    else:
        verdict = "a different best setting"
    caveat = (f" In {epochs} epochs the learning rate never changed at {trend.label} "
              f"{distinct(report.value(f, trend.key) for f in idle)}: those settings trained as without a schedule, "
              f"and their order among themselves says nothing about the {trend.label}." if idle else "")
    return f"{said} We rank {ranking(ours)}: {verdict}. {noise_text(report, trend, best - min(a for _, a in ours))}{caveat}"


def noise_text(report: Report, trend: Trend, spread: float) -> str:
    """Whether the seeds can tell the trend's settings apart: their span against the seed-to-seed std."""
    stds = [report.stat(f)["std"] for f in trend.figures if report.stat(f).get("std") is not None]  # null: 1 seed
    if not stds:
        return (f"Our settings span {100 * spread:.2f} points with no seed-to-seed spread to set it against (one "
                "seed each), so this order neither confirms nor contradicts the report's.")
    if spread <= max(stds):
        return (f"Our settings span only {100 * spread:.2f} points, within a seed-to-seed std of up to "
                f"{100 * max(stds):.2f} points: these seeds do not order them, so this neither confirms nor "
                "contradicts the report's order.")
    return f"Our settings span {100 * spread:.2f} points, against a seed-to-seed std of up to {100 * max(stds):.2f} points."


def heads_section(report: Report) -> list[str]:
    rows = []
    for c, test, p_holm, power in report.head_tests():
        rows.append([
            c.label, f"Fig. {c.bce}: {mean_std(report.stat(c.bce))} (n={report.stat(c.bce)['n']})",
            f"Fig. {c.ce}: {mean_std(report.stat(c.ce))} (n={report.stat(c.ce)['n']})",
            signed_pp(test["diff"]), seeds_tested(test, report.stat(c.bce)["n"], report.stat(c.ce)["n"]), DASH if test["t"] is None else f"{test['t']:.4f}",
            DASH if test["p"] is None else f"{test['p']:.4g}", DASH if p_holm is None else f"{p_holm:.4g}",
            "yes" if p_holm is not None and p_holm < ALPHA else "no",
            DASH if power["min_detectable"] is None else f"{100 * power['min_detectable']:.2f}",
            plain(power["seeds_needed"]),
            signed_pp(report.settings[c.bce].reported_acc - report.settings[c.ce].reported_acc),
        ])
    header = ["comparison", "BCE, %", "CE, %", "BCE − CE, points", "test", "t", "p", "p (Holm)", "significant at 5 %",
              "detectable at 80 % power, points", "seeds needed per side", "report's BCE − CE, points"]
    return [
        "## BCE vs CE (t-test over seeds)", "",
        "Two-sided t-test on the per-seed test accuracies, paired on the seeds both figures ran (a seed starts "
        "both heads from the same batches and holdout, so its two runs are no independent samples), Welch's "
        "when they share fewer than two; a diverged seed has no accuracy and leaves its pair out. BCE − CE is "
        "the mean over the seeds the test used. Both comparisons are tested together, so their p-values are "
        "Holm-adjusted and the verdict uses p (Holm). When every difference (paired) or every accuracy (Welch) "
        "is the same there is no variance: t is undefined and p is 1 when there is no difference, 0 when there "
        "is. *Detectable*: the smallest true difference these seeds find with 80 % power, from their spread; "
        "*seeds needed*: seeds per side that find the observed difference with 80 % power.", "",
        *table(header, rows),
    ]


def trend_section(report: Report, trend: Trend) -> list[str]:
    rows = [[plain(report.value(f, trend.key)), f"Fig. {f}", percent(report.settings[f].reported_acc),
             mean_std(report.stat(f)), ci_text(report.stat(f)), boot_text(report.stat(f))] for f in trend.figures]
    lines = [f"## CE head: {trend.label}", "",
             *table([trend.label, "figure", "report, %", "ours, % (mean ± std)", "ours, 95 % CI (seeds)",
                              "ours, 95 % CI (test set)"], rows)]
    if trend.note:
        lines += ["", trend.note]
    if plot_trend(report, trend):
        lines += ["", f"![Test accuracy vs {trend.label}, CE head]({trend.image})"]
    return lines


def curves_section(report: Report) -> list[str]:
    lines = ["## Curves (the report's Fig. 1–8)", "",
             "Accuracy and loss per epoch, train vs validation: the mean over seeds with a min–max band."]
    for pair in CURVE_PAIRS:
        image = plot_curve_pair(report, pair)
        names = " and ".join(f"Fig. {f}" for f in pair)
        lines.append("")
        if image is None:
            lines.append(f"{names}: no curves (no finished job).")
            continue
        lines.append(f"![{names}]({image})")
        lines += [f"- Fig. {f}. {report.settings[f].caption}." for f in pair if f in report.settings]
    return lines


def shared_settings() -> dict:
    """conf/experiment/report_settings.yaml as written: what the report leaves open, fixed once."""
    return OmegaConf.to_container(OmegaConf.load(experiment_dir() / f"{SHARED_SETTINGS}.yaml"))


def details_section(report: Report) -> list[str]:
    shared = shared_settings()
    rows = []
    for detail in FIXED_DETAILS:
        ran = distinct(first_value(job.config, detail.keys)
                       for f, job in report.jobs.items() if job.results and f not in detail.skip_figures)
        chosen = first_value(shared, detail.keys)
        if chosen is not None and ran != plain(chosen):
            ran += f" (overridden; the shared settings say {plain(chosen)})"
        rows.append([detail.label, ran, detail.source, detail.reason])
    return [
        "## Fixed details", "",
        f"What the report leaves open is fixed once, in `conf/experiment/{SHARED_SETTINGS}.yaml`, which all "
        "eight settings include. The values below are read back from the jobs' configs, so they show "
        "what ran, command-line overrides included.", "",
        *table(["detail", "value", "from", "why"], rows),
    ]


def problems_section(report: Report) -> list[str]:
    return ["## Problems", "", *(f"- {p}" for p in report.problems)] if report.problems else []


# --- figures ------------------------------------------------------------


def plot_trend(report: Report, trend: Trend) -> bool:
    """Our mean with both its intervals and the report's mean against the varied value, as two lines,
    over the accuracy of always answering pneumonia on our test set."""
    x = {f: report.value(f, trend.key) for f in trend.figures if report.value(f, trend.key) is not None}
    ours = [{"x": x[f], "group": "ours", "mean": report.stat(f)["mean"],
             "low": report.stat(f)["ci95_low"], "high": report.stat(f)["ci95_high"],
             "boot_low": report.stat(f).get("boot95_low"), "boot_high": report.stat(f).get("boot95_high"),
             "seeds": [a for a in report.accuracies(f) if a is not None]} for f in x if report.stat(f).get("n")]
    if not ours:
        return False
    reported = [{"x": x[f], "group": "report (mean of 5 runs)", "mean": report.settings[f].reported_acc} for f in x]
    rates = dict.fromkeys(round(r, 9) for f in x if f in report.jobs
                          and (r := all_pneumonia_rate(report.jobs[f].results)) is not None)
    plot_summary(ours + reported, report.out_dir / trend.image, x_key=trend.label, group_key="source",
                 title=f"CE head: test accuracy vs {trend.label}",
                 reference=[(r, f"always answering pneumonia (our test set): {100 * r:.1f} %") for r in rates])
    return True


def plot_curve_pair(report: Report, pair: tuple[int, ...]) -> str | None:
    histories = []
    for job in report.finished(pair):
        setting = Setting.from_config(job.config)
        title = (f"Fig. {setting.figure}: {setting.tag} — report {percent(setting.reported_acc)} %, "
                 f"ours {mean_std(job.stats('test_acc'))} %")
        if (job.job_dir / METRICS_CSV).is_file():
            histories.append((title, read_metrics_csv(job.job_dir / METRICS_CSV)))
    if not histories:
        return None
    image = "curves_" + "_".join(f"fig{f}" for f in pair) + ".png"
    plot_curves_grid(histories, report.out_dir / image, ncols=1)
    return image


def write_report(report: Report) -> Path:
    report.out_dir.mkdir(parents=True, exist_ok=True)
    sections = [
        header_section(report), results_section(report), agreement_section(report), heads_section(report),
        *(trend_section(report, t) for t in TRENDS), curves_section(report), details_section(report),
        problems_section(report),
    ]
    text = "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"
    path = report.out_dir / REPORT_MD
    atomic_write_text(path, text)
    return path


def build_report(sweep_dir: Path, out_dir: Path) -> Report:
    """Write REPORT.md and its figures into `out_dir`, which appear together (a stop half-way leaves the
    previous ones); the returned report lists any problems."""
    report = Report(sweep_dir, out_dir)
    with written_together():
        write_report(report)
    return report
