"""scripts/reproduce_report.py end to end on tiny phantom data, and REPORT.md checked against the raw results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from scipy import stats

from conftest import REPO, subprocess_env
from pneumolab.analysis.report import build_report
from pneumolab.cli.overrides import quote_path
from pneumolab.cli.reproduce import sweep_overrides

SCRIPT = REPO / "scripts" / "reproduce_report.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SPEC, "Reproducing the report": the report's mean accuracy (%) per figure.
SPEC_REPORTED = {1: 74.95, 2: 74.85, 3: 72.8, 4: 76.05, 5: 74.75, 6: 72.2, 7: 83.0, 8: 76.9}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PNEUMOLAB_DATA": str(cwd / "cache")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    done = run_script(out, "--out", ".", "--epochs", "2", "--seeds", "2", "--launcher", "basic",
                      "--", "data.limit_per_class=30")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def read_table(markdown: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with `first_column`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = split_row(lines[start])
    rows = []
    for line in lines[start + 2:]:  # past the |---| line
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, split_row(line))))
    return rows


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def numbers(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


@pytest.mark.slow
def test_table_has_the_eight_settings_with_spec_numbers(report_dir: Path) -> None:
    rows = read_table((report_dir / "REPORT.md").read_text(), "figure")
    assert [row["figure"] for row in rows] == [f"Fig. {n}" for n in range(1, 9)]
    for n, row in enumerate(rows, start=1):
        assert float(row["report, %"]) == pytest.approx(SPEC_REPORTED[n])
        seeds_ci = row["ours, 95 % CI (seeds)"]
        ours = numbers(row["ours, % (mean ± std)"]) + numbers(seeds_ci) + numbers(row["ours, 95 % CI (test set)"])
        assert len(ours) == 6 or "seeds equal" in seeds_ci, row
        assert all(0.0 <= x <= 100.0 for x in ours), row
        assert 0.0 <= float(row["ensemble, %"]) <= 100.0
        assert row["report vs our test-set CI"] in ("inside", "above", "below")
        assert row["diverged seeds"] == "0/2"


@pytest.mark.slow
def test_report_numbers_are_read_from_results_json_with_their_test_set_verdict(report_dir: Path) -> None:
    rows = {row["figure"]: row for row in read_table((report_dir / "REPORT.md").read_text(), "figure")}
    for path in (report_dir / "runs").glob("*/results.json"):
        results = json.loads(path.read_text())
        figure = results["config"]["report_figure"]["figure"]
        acc, row = results["summary"]["test_acc"], rows[f"Fig. {figure}"]
        low, high = numbers(row["ours, 95 % CI (test set)"])
        assert (low, high) == pytest.approx((100 * acc["boot95_low"], 100 * acc["boot95_high"]), abs=0.006)
        assert float(row["ensemble, %"]) == pytest.approx(100 * results["ensemble"]["test_acc"], abs=0.006)
        reported = SPEC_REPORTED[figure]
        position = "above" if reported > high else "below" if reported < low else "inside"
        assert row["report vs our test-set CI"] == position


@pytest.mark.slow
def test_report_quotes_paths_as_typed(report_dir: Path) -> None:
    text = (report_dir / "REPORT.md").read_text()
    assert str(report_dir) not in text and "/tmp" not in text
    assert "- Sweep directory: `runs`" in text
    assert " hydra.sweep.dir=runs " in text  # the script ran in report_dir with --out . : as typed


@pytest.mark.slow
def test_every_referenced_figure_is_a_png(report_dir: Path) -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report_dir / "REPORT.md").read_text())
    assert len(images) == 6  # four pairs of curves (Fig. 1-8), two trends
    for name in images:
        assert (report_dir / name).read_bytes().startswith(PNG_SIGNATURE), name


def accuracies_by_seed(sweep_dir: Path) -> dict[int, dict[int, float]]:
    """{figure: {seed: test accuracy}} of the sweep's finished jobs (diverged seeds left out)."""
    accuracies = {}
    for path in sweep_dir.glob("*/results.json"):
        results = json.loads(path.read_text())
        accuracies[results["config"]["report_figure"]["figure"]] = {
            e["seed"]: e["test_acc"] for e in results["per_seed"] if e["test_acc"] is not None}
    return accuracies


def check_head_tests_against_scipy(report_dir: Path) -> None:
    """Each BCE vs CE row: scipy's paired t-test on the seeds both figures ran."""
    accuracies = accuracies_by_seed(report_dir / "runs")
    rows = read_table((report_dir / "REPORT.md").read_text(), "comparison")
    assert len(rows) == 2
    for row in rows:
        bce, ce = (int(re.match(r"Fig\. (\d)", row[side]).group(1)) for side in ("BCE, %", "CE, %"))
        seeds = sorted(accuracies[bce].keys() & accuracies[ce].keys())
        a, b = [accuracies[bce][s] for s in seeds], [accuracies[ce][s] for s in seeds]
        assert row["test"] == f"paired, {len(seeds)} seeds"
        differences = [x - y for x, y in zip(a, b)]
        if len(set(differences)) > 1:
            expected = stats.ttest_rel(a, b)
            assert float(row["t"]) == pytest.approx(expected.statistic, abs=1e-4)
            assert float(row["p"]) == pytest.approx(expected.pvalue, rel=1e-3)
        else:  # every seed moved alike: no t, and p says whether there is a difference
            assert row["t"] == "—"
            assert float(row["p"]) == (1.0 if differences[0] == 0 else 0.0)
        assert float(row["BCE − CE, points"]) == pytest.approx(100 * sum(differences) / len(seeds), abs=0.006)


@pytest.mark.slow
def test_head_tests_are_paired_and_match_scipy(report_dir: Path) -> None:
    check_head_tests_against_scipy(report_dir)


@pytest.mark.slow
def test_report_states_what_ran_and_what_it_means(report_dir: Path) -> None:
    text = (report_dir / "REPORT.md").read_text()
    assert "- Data: phantom" in text and "at most 30 per class" in text
    assert "- Epochs: 2" in text and "- Seeds: 0, 1" in text
    assert "- Command: `pneumolab -m experiment=report/fig1_bce," in text
    agreement = text.split("## Where we agree and disagree with the report")[1].split("\n## ")[0]
    assert "our test-set 95 % CI" in agreement and "paired p" in agreement and "p (Holm" in agreement
    assert "batch size" in agreement and "with 80 % power" in agreement
    # Two epochs: StepLR at step 5, 10 or 20 never lowered the rate, so the step sizes are not ranked.
    step = next(line for line in agreement.splitlines() if "StepLR step size" in line)
    assert "the schedule did not act" in step and "We rank" not in step and "tied" not in step
    assert agreement.startswith("\n\n- Our jobs trained 2 epochs, not the 30 the settings declare")
    details = {row["detail"]: row["value"] for row in read_table(text, "detail")}
    assert details["optimizer"] == "adam" and details["base learning rate"] == "0.001"
    assert details["epochs"] == "2 (overridden; the shared settings say 30)"


@pytest.mark.slow
def test_failed_job_is_reported_not_fatal(report_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "runs"
    shutil.copytree(report_dir / "runs", sweep)
    job = next(p.parent for p in sweep.glob("*/results.json")
               if json.loads(p.read_text())["config"]["report_figure"]["figure"] == 7)
    config = json.loads((job / "results.json").read_text())["config"]
    (job / "results.json").unlink()
    (job / "error.json").write_text(json.dumps({"config": config, "overrides": [], "error": "boom"}))

    done = run_script(tmp_path, "--from-sweep", str(tmp_path))
    assert done.returncode == 1, done.stderr[-4000:]
    text = (tmp_path / "REPORT.md").read_text()
    assert "Fig. 7 (fig7_ce_combo) failed: boom" in text
    rows = {row["figure"]: row for row in read_table(text, "figure")}
    assert rows["Fig. 7"]["ours, % (mean ± std)"] == "—"
    assert float(rows["Fig. 7"]["report, %"]) == pytest.approx(83.0)
    assert "We cannot test this" in text


@pytest.mark.parametrize("path", ["/data/chest xray", "/data/a,b", "/data/it's", "/data/x=y[1]"])
def test_a_path_as_typed_stays_one_hydra_value(path: str) -> None:
    (override,) = OverridesParser.create().parse_overrides([f"data.root={quote_path(path, as_typed=True)}"])
    assert override.value() == path


def test_the_sweep_command_shows_plain_paths_as_typed() -> None:
    overrides = sweep_overrides(Path("out/runs"), "folder", "~/chest xray", 2, None, "basic", 1, ["data.limit_per_class=30"])
    assert overrides[0] == "-m" and overrides[1].startswith("experiment=report/fig1_bce,")
    assert overrides[2:] == ["hydra.sweep.dir=out/runs", "data=folder", "data.root='~/chest xray'", "trainer.epochs=2",
                             "data.limit_per_class=30"]


# --- REPORT.md rebuilt from the real-data sweep in docs/report (30 epochs, seeds 0-4) ---------------------


@pytest.fixture
def real_sweep(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "docs" / "report" / "runs", tmp_path / "runs")
    return tmp_path


def agreement_lines(report_dir: Path) -> list[str]:
    text = (report_dir / "REPORT.md").read_text()
    return text.split("## Where we agree and disagree with the report\n\n")[1].split("\n\n")[0].splitlines()


def test_the_real_sweeps_heads_are_paired_and_its_rankings_left_to_the_noise(real_sweep: Path) -> None:
    build_report(real_sweep / "runs", real_sweep)
    check_head_tests_against_scipy(real_sweep)
    lines = agreement_lines(real_sweep)
    assert not any("Our jobs trained" in line for line in lines)  # 30 epochs, as the settings declare
    # Both trends span less than a seed's std: neither order is called a finding.
    for label in ("CE batch size", "CE StepLR step size"):
        (line,) = [line for line in lines if line.startswith(f"- {label}:")]
        assert "these seeds do not order them, so this neither confirms nor contradicts the report's order" in line


def keep_epochs(runs: Path, epochs: int) -> None:
    """Cut each job's metrics.csv to its first `epochs` epochs and record that many in results.json: the
    learning-rate history of a shorter run (the accuracies stay the 30-epoch ones; only the LR column is read)."""
    for job in (p for p in runs.iterdir() if (p / "results.json").is_file()):
        rows = (job / "metrics.csv").read_text().splitlines()
        (job / "metrics.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if int(r.split(",")[1]) <= epochs])
                                         + "\n")
        results = json.loads((job / "results.json").read_text())
        results["config"]["trainer"]["epochs"] = epochs
        (job / "results.json").write_text(json.dumps(results))


def test_a_run_too_short_for_any_step_says_the_schedule_did_not_act(real_sweep: Path) -> None:
    keep_epochs(real_sweep / "runs", 4)
    build_report(real_sweep / "runs", real_sweep)
    lines = agreement_lines(real_sweep)
    assert lines[0] == ("- Our jobs trained 4 epochs, not the 30 the settings declare: every comparison with the "
                        "report below sets a shorter training against the report's, so it tests this run, not the "
                        "report's claims.")
    (step,) = [line for line in lines if line.startswith("- CE StepLR step size:")]
    assert step.endswith("Our run cannot rank them: in 4 epochs the learning rate never changed at any StepLR step "
                         "size (5, 10, 20), so the schedule did not act and the settings trained alike. Train more "
                         "epochs than the StepLR step size to compare them.")


def test_steps_that_never_acted_are_named_beside_one_that_did(real_sweep: Path) -> None:
    keep_epochs(real_sweep / "runs", 8)  # StepLR lowers the rate after epoch 5: step 5 acts, 10 and 20 do not
    report = build_report(real_sweep / "runs", real_sweep)
    assert [report.lr_changes(f) for f in (5, 2, 6)] == [1, 0, 0]
    (step,) = [line for line in agreement_lines(real_sweep) if line.startswith("- CE StepLR step size:")]
    assert "We rank 20 > 10 > 5" in step
    assert step.endswith("In 8 epochs the learning rate never changed at StepLR step size 10, 20: those settings "
                         "trained as without a schedule, and their order among themselves says nothing about the "
                         "StepLR step size.")


def test_a_figure_without_a_test_set_interval_says_why(real_sweep: Path) -> None:
    note = "only 8 NORMAL and 8 PNEUMONIA test images (fewer than 10 per class): too few for a bootstrap interval"
    job = next(p.parent for p in (real_sweep / "runs").glob("*/results.json")
               if json.loads(p.read_text())["config"]["report_figure"]["figure"] == 3)
    results = json.loads((job / "results.json").read_text())
    results["summary"]["test_acc"].update(boot95_low=None, boot95_high=None, boot95_note=note)
    (job / "results.json").write_text(json.dumps(results))
    build_report(real_sweep / "runs", real_sweep)
    assert f"- No test-set CI for Fig. 3: {note}." in agreement_lines(real_sweep)
