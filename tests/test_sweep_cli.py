"""Real `pneumolab -m` sweeps in subprocesses: resume after a kill, launchers, failures, Optuna search.

Every sweep is tiny (30 images per class and split, a few epochs, 2 seeds), and all of
them start together, so their start-up and training overlap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import pneumolab_command, subprocess_env
from pneumolab.cores import usable_cores
from pneumolab.analysis.summary import build_summary
from test_sweep import markdown_rows, read_csv

pytestmark = pytest.mark.slow  # real sweeps through every launcher

TINY = ["data.limit_per_class=30", "trainer.epochs=2", "trainer.seeds=2"]  # a count: seeds 0 and 1
LAUNCHERS = ("basic", "joblib", "submitit_local")
# Four seeds: the basic launcher's jobs have the machine to themselves and split them over
# two processes (on two or more cores), the parallel launchers' jobs train them in one.
LAUNCHER_SEEDS = [0, 1, 2, 3]
# Later points train longer, so the kill after the first point lands while one of them runs.
RESUMED = ["trainer.epochs=2,100,101", "data.limit_per_class=30", "trainer.seeds=[0,1]"]
TIMEOUT_S = 400


@dataclass
class Sweep:
    """A `pneumolab -m` subprocess; its output goes to a file, so no pipe fills up while it runs."""

    dir: Path
    log: Path
    proc: subprocess.Popen

    def wait(self) -> tuple[int, str]:
        self.proc.wait(timeout=TIMEOUT_S)
        return self.proc.returncode, self.log.read_text()


def start_sweep(root: Path, name: str, args: list[str]) -> Sweep:
    """Start a sweep into root/name, working in root; its output goes to root/name.log (appended)."""
    sweep_dir, log = root / name, root / f"{name}.log"
    with open(log, "a") as out:
        # A session of its own, so a kill reaches every process the sweep started.
        proc = subprocess.Popen([*pneumolab_command(), "-m", *args, f"hydra.sweep.dir={sweep_dir}"], cwd=root,
                                env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Sweep(sweep_dir, log, proc)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> Iterator[dict[str, Sweep]]:
    root = tmp_path_factory.mktemp("sweeps")
    started = {
        launcher: start_sweep(root, launcher, [f"hydra/launcher={launcher}", "head=bce,ce", *TINY,
                                               f"trainer.seeds=[{','.join(map(str, LAUNCHER_SEEDS))}]"])
        for launcher in LAUNCHERS
    }
    # A point that fails validation (batch size 0) and one that fails at run time (every seed diverges).
    started["failing"] = start_sweep(root, "failing", ["data.batch_size=16,0", "optimizer.lr=1e-3,1e30", *TINY])
    started["optuna"] = start_sweep(root, "optuna", ["hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY])
    started["resume"] = start_sweep(root, "resume", RESUMED)  # killed mid-sweep, then run again
    yield started
    for sweep in started.values():
        if sweep.proc.poll() is None:
            os.killpg(sweep.proc.pid, signal.SIGKILL)
            sweep.proc.wait()


def read_results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def test_interrupted_sweep_resumes_without_redoing_finished_points(sweeps):
    interrupted = sweeps["resume"]
    first = interrupted.dir / "0" / "results.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not first.exists():
        assert interrupted.proc.poll() is None, interrupted.wait()[1]
        assert time.monotonic() < deadline, "the first point did not finish in time"
        time.sleep(0.02)
    os.killpg(interrupted.proc.pid, signal.SIGKILL)
    interrupted.proc.wait()
    assert [p.parent.name for p in interrupted.dir.glob("*/results.json")] == ["0"], "the kill came too late"
    assert not (interrupted.dir / "summary.csv").exists()
    before = (first.stat().st_mtime_ns, first.read_bytes())

    rc, output = start_sweep(interrupted.dir.parent, interrupted.dir.name, RESUMED).wait()
    assert rc == 0, output
    assert output.count("skipped: done") == 1  # the log holds both runs; only the second skips
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before
    rows = read_csv(interrupted.dir / "summary.csv")
    assert [(r["trainer.epochs"], r["status"]) for r in rows] == [("2", "ok"), ("100", "ok"), ("101", "ok")]
    for row in rows:
        per_seed = read_results(interrupted.dir / row["point"])["per_seed"]
        assert [e["epochs_run"] for e in per_seed] == [int(row["trainer.epochs"])] * 2
    assert (interrupted.dir / "summary.md").is_file() and (interrupted.dir / "summary.png").is_file()


def test_launchers_give_the_same_summary(sweeps):
    tables = {}
    for launcher in LAUNCHERS:
        rc, output = sweeps[launcher].wait()
        assert rc == 0, output
        sweep_dir = sweeps[launcher].dir
        rows = read_csv(sweep_dir / "summary.csv")
        assert [(r["point"], r["head"], r["status"]) for r in rows] == [("0", "bce", "ok"), ("1", "ce", "ok")]
        for row in rows:
            per_seed = read_results(sweep_dir / row["point"])["per_seed"]
            accs = [entry["test_acc"] for entry in per_seed]
            assert float(row["test_acc_mean"]) == pytest.approx(np.mean(accs), abs=1e-12)
            assert float(row["test_acc_std"]) == pytest.approx(np.std(accs, ddof=1), abs=1e-12)
            assert (int(row["n_seeds"]), int(row["n_diverged"])) == (len(LAUNCHER_SEEDS), 0)
        assert (sweep_dir / "summary.png").read_bytes().startswith(b"\x89PNG")
        tables[launcher] = rows
        processes = min(usable_cores(), 2) if launcher == "basic" else 1
        for job in ("0", "1"):
            assert f"device cpu, {processes} process" in (sweep_dir / job / "cli.log").read_text()
    # CPU training is deterministic, and a seed's numbers do not depend on the process it
    # trained in, so every launcher gives the same numbers, to the last digit.
    assert tables["joblib"] == tables["basic"] == tables["submitit_local"]


def test_summary_states_the_paired_p_of_the_two_heads(sweeps):
    assert sweeps["basic"].wait()[0] == 0
    sweep_dir = sweeps["basic"].dir
    bce, ce = ([e["test_acc"] for e in read_results(sweep_dir / num)["per_seed"]] for num in ("0", "1"))
    assert np.ptp(bce) > 0 and np.ptp(ce) > 0, "the seeds must differ for scipy's test to be defined"
    # Both heads ran the same seeds, in the same order: the test pairs them (docs/statistics.md).
    expected = stats.ttest_rel(bce, ce).pvalue
    (row,) = markdown_rows((sweep_dir / "summary.md").read_text(), "Significance")
    assert row["comparison"] == "head=bce vs head=ce" and row["test"].startswith("paired")
    assert row["difference"] == f"{100 * (np.mean(bce) - np.mean(ce)):+.1f} pt"
    assert float(row["p"]) == pytest.approx(expected, abs=5e-4)
    assert row["p (Holm)"] == row["p"]  # one test: nothing to adjust
    assert row["verdict"] == ("not significant" if expected >= 0.05 else "significant")


def test_summarize_command_rebuilds_the_same_summary(sweeps, capsys):
    assert sweeps["basic"].wait()[0] == 0
    sweep_dir = sweeps["basic"].dir
    before = (sweep_dir / "summary.csv").read_text()
    for name in ("summary.csv", "summary.md", "summary.png"):
        (sweep_dir / name).unlink()
    (command,) = entry_points(group="console_scripts", name="pneumolab-summarize")
    command.load()([str(sweep_dir)])  # in this process: the sweep's own interpreter start-up is tested above
    assert (sweep_dir / "summary.csv").read_text() == before
    assert capsys.readouterr().out == (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "summary.png").is_file()


def test_failed_points_are_summarised_and_the_sweep_exits_1(sweeps):
    rc, output = sweeps["failing"].wait()
    assert rc == 1, output
    assert "Traceback" not in output
    sweep_dir = sweeps["failing"].dir
    rows = read_csv(sweep_dir / "summary.csv")
    assert [(r["data.batch_size"], r["optimizer.lr"], r["status"]) for r in rows] == [
        ("16", "0.001", "ok"), ("16", "1e+30", "failed"), ("0", "0.001", "failed"), ("0", "1e+30", "failed")]
    assert rows[1]["error"].startswith("Every seed diverged")
    assert rows[2]["error"] == rows[3]["error"] == "Invalid config value data.batch_size=0: use a batch size of at least 1."
    accs = [e["test_acc"] for e in read_results(sweep_dir / "0")["per_seed"]]
    assert float(rows[0]["test_acc_mean"]) == pytest.approx(np.mean(accs), abs=1e-12)
    assert read_results(sweep_dir / "0")["seeds"] == [0, 1]  # trainer.seeds=2
    # The diverged point's results.json stays for inspection; its newer error.json marks it failed.
    assert read_results(sweep_dir / "1")["n_diverged"] == 2
    markdown = (sweep_dir / "summary.md").read_text()
    assert "4 points: 1 ok, 3 failed" in markdown
    assert "| failed: Invalid config value data.batch_size=0: use a batch size of at least 1. |" in markdown


def test_optuna_search_maximises_mean_validation_accuracy(sweeps):
    rc, output = sweeps["optuna"].wait()
    assert rc == 0, output
    sweep_dir = sweeps["optuna"].dir
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1", "2"]
    results = [read_results(job) for job in jobs]
    val_means = [float(np.mean([e["val_acc"] for e in r["per_seed"]])) for r in results]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(val_means), abs=1e-12)
    # Optuna's best trial is the first job with the best value; its overrides are the best params.
    chosen = dict(o.split("=") for o in results[val_means.index(max(val_means))]["overrides"])
    assert float(chosen["optimizer.lr"]) == pytest.approx(best["best_params"]["optimizer.lr"])
    assert int(chosen["data.batch_size"]) == best["best_params"]["data.batch_size"]
    assert int(chosen["scheduler.step_size"]) == best["best_params"]["scheduler.step_size"]
    for r in results:
        config = r["config"]
        assert 1e-5 <= config["optimizer"]["lr"] <= 1e-2
        assert config["data"]["batch_size"] in (32, 64, 128)
        assert 3 <= config["scheduler"]["step_size"] <= 20
    rows = read_csv(sweep_dir / "summary.csv")
    assert [float(r["val_acc_mean"]) for r in rows] == pytest.approx(val_means, abs=1e-12)
    assert build_summary([sweep_dir]).search  # summary.png: the objective per trial


def test_summarize_metric_auc_on_a_real_sweep_gives_scipys_paired_p(sweeps, tmp_path, capsys):
    assert sweeps["basic"].wait()[0] == 0
    sweep_dir = sweeps["basic"].dir
    bce, ce = ([e["test_auc"] for e in read_results(sweep_dir / num)["per_seed"]] for num in ("0", "1"))
    (command,) = entry_points(group="console_scripts", name="pneumolab-summarize")
    command.load()([str(sweep_dir), "--metric", "test_auc", "--out", str(tmp_path)])
    (row,) = markdown_rows(capsys.readouterr().out, "Significance")
    assert row["comparison"] == "head=bce vs head=ce"
    assert row["difference"] == f"{np.mean(bce) - np.mean(ce):+.3f}"  # AUC stays a fraction
    expected = stats.ttest_rel(bce, ce).pvalue
    assert row["p"] == ("< 0.001" if expected < 0.001 else f"{expected:.3f}")
    assert (tmp_path / "summary.png").is_file() and not (sweep_dir / "summary.md").read_text().count("`test_auc`")
