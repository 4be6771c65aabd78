"""One unit: what a person reads (log lines, figures, summary.md) is in percent with one decimal;
results.json and summary.csv keep fractions."""

from __future__ import annotations

import logging
import math
import re

from pneumolab.record.metric_table import mean_std_percent
from pneumolab.engine.progress import EpochReport

LOG_LINE = re.compile(r"^test acc \d+\.\d ± \d+\.\d % over \d+ seeds \(\d+ diverged\) in [\d.]+ s -> .+$")


def test_the_job_line_gives_test_accuracy_in_percent_with_one_decimal():
    assert mean_std_percent({"mean": 0.8631, "std": 0.0053, "n": 5}) == "86.3 ± 0.5 %"
    assert mean_std_percent({"mean": 0.5, "std": None, "n": 1}) == "50.0 %"
    assert mean_std_percent({"mean": None, "std": None, "n": 0}) == "–"  # every seed diverged
    line = f"test acc {mean_std_percent({'mean': 0.7617, 'std': 0.0042, 'n': 5})} over 5 seeds (0 diverged) in 9.8 s -> /x"
    assert LOG_LINE.match(line) and "76.2 ± 0.4 %" in line


def test_the_progress_line_gives_validation_accuracy_in_percent(caplog):
    report = EpochReport([0, 1])
    report.tty = False
    report.note([0, 1], {"epoch": [5, 5], "train_loss": [0.41, 0.43], "val_acc": [0.9612, 0.9488]})
    line = report.line(5, 30)
    assert re.search(r"\| val acc 95\.5 % \(94\.9-96\.1\) \|", line), line
    assert "0.9" not in line.split("val acc")[1].split("|")[0]  # no fraction left
    report.note([0], {"epoch": [6], "train_loss": [math.nan], "val_acc": [math.nan]})
    assert "val acc 94.9 % (94.9-94.9)" in report.line(6, 30)
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        report(10, 30, [0, 1], {"epoch": [10, 10], "train_loss": [0.3, 0.3], "val_acc": [0.97, 0.96]})
    assert re.search(r"val acc 96\.5 % \(96\.0-97\.0\)", caplog.records[-1].getMessage())
