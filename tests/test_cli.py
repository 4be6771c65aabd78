"""`pneumolab` as users run it: a real subprocess, real files."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_tiny_xray, pneumolab_command, subprocess_env
from pneumolab.cores import usable_cores

PER_SEED_KEYS = {
    "seed", "test_acc", "test_auc", "test_sensitivity", "test_specificity", "test_f1", "test_confusion",
    "val_acc", "epochs_run", "diverged", "test_balanced_acc", "test_ece", "test_brier",
}
SUMMARY_KEYS = {"test_acc", "test_auc", "test_sensitivity", "test_specificity", "val_acc",
                "test_balanced_acc", "test_ece", "test_brier"}
FAIR_KEYS = ("test_balanced_acc", "test_ece", "test_brier")  # issue 21: metrics that judge recipes fairly


def run_pneumolab(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *overrides], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def check_job_outputs(job: Path, seeds: list[int], epochs: int) -> dict:
    results = json.loads((job / "results.json").read_text())
    assert results["seeds"] == seeds
    assert {e["seed"] for e in results["per_seed"]} == set(seeds)
    n_test = None
    for entry in results["per_seed"]:
        assert PER_SEED_KEYS <= entry.keys()
        assert entry["diverged"] is False and entry["epochs_run"] == epochs
        for key in ("test_acc", "test_auc", "test_sensitivity", "test_specificity", "test_f1", "val_acc", *FAIR_KEYS):
            assert 0.0 <= entry[key] <= 1.0, key
        (tn, fp), (fn, tp) = entry["test_confusion"]
        n_test = n_test or tn + fp + fn + tp
        assert tn + fp + fn + tp == n_test
        assert entry["test_acc"] == pytest.approx((tn + tp) / n_test)
        assert entry["test_sensitivity"] == pytest.approx(tp / (tp + fn))
        assert entry["test_specificity"] == pytest.approx(tn / (tn + fp))
        assert entry["test_balanced_acc"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert SUMMARY_KEYS <= results["summary"].keys()
    for key in SUMMARY_KEYS:
        values = [e[key] for e in results["per_seed"]]
        stats = results["summary"][key]
        assert stats["n"] == len(seeds)
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
        assert stats["ci95_low"] <= stats["mean"] <= stats["ci95_high"]
    for key in FAIR_KEYS:
        stats, ensemble = results["summary"][key], results["ensemble"][key]
        assert 0.0 <= stats["boot95_low"] <= stats["boot95_high"] <= 1.0 and 0.0 <= ensemble <= 1.0, key
    # Squared error is convex in the probability: the seeds' mean probability scores no worse than their mean.
    assert results["ensemble"]["test_brier"] <= results["summary"]["test_brier"]["mean"] + 1e-12
    assert results["wall_seconds"] > 0 and results["device"] == "cpu"
    assert {"torch", "pneumolab", "python"} <= results["versions"].keys()

    lines = (job / "metrics.csv").read_text().splitlines()
    assert lines[0] == "seed,epoch,lr,train_loss,train_acc,val_loss,val_acc"
    rows = [line.split(",") for line in lines[1:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(s, e) for s in seeds for e in range(1, epochs + 1)]
    last_val = {int(r[0]): float(r[6]) for r in rows if int(r[1]) == epochs}
    for entry in results["per_seed"]:
        assert entry["val_acc"] == pytest.approx(last_val[entry["seed"]])  # eval_checkpoint=last
    for png in ("curves.png", "roc.png", "calibration.png"):
        with Image.open(job / png) as img:
            assert img.format == "PNG" and img.width > 300
    return results


@pytest.mark.slow
def test_phantom_run_writes_every_output(tmp_path):
    job = tmp_path / "run"
    proc = run_pneumolab(tmp_path, "trainer.epochs=3", "trainer.seeds=[0,1]", "data.limit_per_class=80",
                         "head=ce", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = check_job_outputs(job, [0, 1], 3)
    assert results["config"]["head"]["name"] == "ce"
    assert results["config"]["data"]["limit_per_class"] == 80
    assert "head=ce" in results["overrides"]


@pytest.mark.slow
def test_same_command_gives_identical_numbers(tmp_path):
    args = ("trainer.epochs=2", "trainer.seeds=[3]", "data.limit_per_class=40")
    per_seed = []
    for name in ("a", "b"):
        assert run_pneumolab(tmp_path, *args, f"hydra.run.dir={tmp_path / name}").returncode == 0
        per_seed.append(json.loads((tmp_path / name / "results.json").read_text())["per_seed"])
    assert per_seed[0] == per_seed[1]


@pytest.mark.slow
def test_a_single_run_splits_the_seeds_over_cores_without_changing_a_number(tmp_path):
    args = ("trainer.epochs=2", "trainer.seeds=[0,1,2,3,4]", "data.limit_per_class=40", "head=bce")
    outputs = {}
    for name, extra in (("auto", ()), ("one", ("trainer.processes=1",))):
        job = tmp_path / name
        proc = run_pneumolab(tmp_path, *args, *extra, f"hydra.run.dir={job}")
        assert proc.returncode == 0, proc.stderr
        results = json.loads((job / "results.json").read_text())
        outputs[name] = (results["per_seed"], (job / "metrics.csv").read_text(), (job / "cli.log").read_text())
    processes = min(usable_cores(), 2)
    assert f"device cpu, {processes} process" in outputs["auto"][2]
    assert "device cpu, 1 process" in outputs["one"][2]
    assert outputs["auto"][:2] == outputs["one"][:2]
    # One line covers the job's seeds whichever process trained them, with the same numbers.
    lines = {name: re.search(r"epoch 2/2 \| (5/5 seeds \| train loss [\d.]+ \| val acc \d+\.\d % \(\d+\.\d-\d+\.\d\))",
                             outputs[name][2]) for name in outputs}
    assert lines["auto"] and lines["one"] and lines["auto"].group(1) == lines["one"].group(1)
    # The job's last line: test accuracy in percent with one decimal, as every number a person reads.
    assert re.search(r"test acc \d+\.\d ± \d+\.\d % over 5 seeds \(0 diverged\) in [\d.]+ s -> ", outputs["auto"][2])


@pytest.mark.slow
def test_real_images_smoke_run(tmp_path, shared_xray):
    root = tmp_path / "xray"
    copy_tiny_xray(shared_xray, root, per_class=10)
    job = tmp_path / "run"
    proc = run_pneumolab(tmp_path, "data=folder", f"data.root={root}", "trainer.epochs=2", "trainer.seeds=[0,1]",
                         "data.batch_size=4", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = check_job_outputs(job, [0, 1], 2)
    assert sum(map(sum, results["per_seed"][0]["test_confusion"])) == 20
    assert "folder" in results["data"]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["data=folder", "data.root=/nonexistent/chest_xray"], "/nonexistent/chest_xray"),
        (["data.batch_size=0"], "data.batch_size"),
        (["scheduler.step_size=0"], "scheduler.step_size"),
        (["trainer.seeds=[]"], "trainer.seeds"),
        (["trainer.device=cuda:7"], "trainer.device"),
        (["head=mse"], "head"),
    ],
)
@pytest.mark.slow
def test_bad_input_gives_one_clear_message_and_no_results(tmp_path, overrides, needle):
    job = tmp_path / "run"
    proc = run_pneumolab(tmp_path, *overrides, f"hydra.run.dir={job}")
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (job / "results.json").exists()


def test_a_glob_over_the_report_subfolder_names_all_eight_settings():
    from pneumolab.cli.overrides import check_command_line
    from pneumolab.config import config_dir, register_configs

    register_configs()
    args = check_command_line(["-m", "experiment=glob(report/*)", "head=glob(*)", "data.batch_size=32"], config_dir())
    assert args[0] == "-m" and args[2:] == ["head=glob(*)", "data.batch_size=32"]
    assert args[1] == "experiment=" + ",".join(
        f"report/{name}" for name in ["fig1_bce", "fig2_ce", "fig3_ce_bs64", "fig4_ce_bs128", "fig5_ce_step5",
                                      "fig6_ce_step20", "fig7_ce_combo", "fig8_bce_combo"])
    assert check_command_line(["experiment=glob(report/*_combo)"], config_dir()) == [
        "experiment=report/fig7_ce_combo,report/fig8_bce_combo"]
    assert check_command_line(["-m", "experiment=glob(report/*,exclude=report/fig1*)"], config_dir())[1] == (
        "experiment=" + ",".join(f"report/{name}" for name in ["fig2_ce", "fig3_ce_bs64", "fig4_ce_bs128",
                                 "fig5_ce_step5", "fig6_ce_step20", "fig7_ce_combo", "fig8_bce_combo"]))
