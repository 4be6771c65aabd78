"""A seed whose loss blows up is recorded as diverged; only a job that lost every seed fails."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest

from conftest import pneumolab_command, subprocess_env
from pneumolab.errors import PneumolabError
from test_bad_input import run_in_process

# SGD with momentum 0.9 on 80 phantom images: seed 6 diverges from lr 1.35 up, seed 2 only
# from 2.6 up (both within three epochs), so lr 1.9 splits them with a wide margin.
SGD = ["optimizer=sgd", "optimizer.lr=1.9", "trainer.epochs=3", "data.limit_per_class=40"]
SPLIT_SEEDS = "trainer.seeds=[2,6]"
EVERY_SEED_DIVERGES = "optimizer.lr=100"


def read_results(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


def test_a_diverged_seed_is_recorded_and_left_out_of_the_summary(tmp_path, restore_torch_state):
    job = tmp_path / "run"
    objective = run_in_process([*SGD, SPLIT_SEEDS], job)
    results = read_results(job)
    by_seed = {entry["seed"]: entry for entry in results["per_seed"]}
    assert by_seed[6]["diverged"] is True and by_seed[2]["diverged"] is False
    assert results["n_diverged"] == 1
    assert by_seed[6]["test_acc"] is None and by_seed[6]["test_confusion"] is None
    for key, stats in results["summary"].items():
        assert stats["n"] == 1, key
        assert stats["mean"] == by_seed[2][key], key
    assert objective == by_seed[2]["val_acc"]

    with open(job / "metrics.csv", newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["seed"] == "6"]
    diverged_at = by_seed[6]["epochs_run"]
    assert not math.isfinite(float(rows[diverged_at - 1]["train_loss"]))
    # After diverging, a seed keeps its rows (one per epoch) but no numbers.
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert all(math.isnan(float(row["val_acc"])) for row in rows[diverged_at:])
    assert all((job / name).is_file() for name in ("roc.png", "curves.png", "calibration.png"))


def run(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *overrides], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_job_whose_every_seed_diverged_fails_but_keeps_its_results(tmp_path):
    job = tmp_path / "run"
    command = [*SGD, SPLIT_SEEDS, EVERY_SEED_DIVERGES, f"hydra.run.dir={job}"]
    proc = run(tmp_path, *command)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"pneumolab: error: Every seed diverged (the loss became NaN or infinite); see {job / 'results.json'}. "
        "Lower optimizer.lr (it is 100; try 10) or switch to optimizer=adam."
    )
    # A real outcome, so it is written: a sweep summary shows the point as diverged, not missing.
    results = read_results(job)
    assert [entry["diverged"] for entry in results["per_seed"]] == [True, True]
    assert results["n_diverged"] == 2
    assert results["summary"]["test_acc"] == {"mean": None, "std": None, "ci95_low": None, "ci95_high": None, "n": 0,
                                              "ci95_clipped": False, "boot95_low": None, "boot95_high": None,
                                              "boot95_note": "no seed without divergence to score the test images"}
    assert results["ensemble"] is None
    assert (job / "calibration.png").is_file()  # the diagonal alone: no seed to draw

    # Running it again finds the finished job and skips the training, but still fails.
    written = (job / "results.json").stat().st_mtime_ns
    again = run(tmp_path, *command)
    assert again.returncode == 2 and again.stderr == proc.stderr
    assert (job / "results.json").stat().st_mtime_ns == written



@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_run_that_diverges_with_adam_is_not_told_to_switch_to_adam(tmp_path, restore_torch_state, optimizer):
    job = tmp_path / "run"
    with pytest.raises(PneumolabError) as caught:
        run_in_process([f"optimizer={optimizer}", "optimizer.lr=1e30", "trainer.epochs=2", "data.limit_per_class=20",
                        SPLIT_SEEDS], job)
    assert str(caught.value).endswith("Lower optimizer.lr (it is 1e+30; try 1e+29).")
    assert read_results(job)["n_diverged"] == 2
