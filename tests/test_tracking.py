"""Trackers with the real packages: TensorBoard's event reader and server, MLflow's SQLite store,
parallel jobs writing one store, a tracker failing mid-run, and environments without the extras.

Every job is tiny (20 images per class and split, two epochs, two seeds); the commands of
a fixture start together, so their start-up and training overlap.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import urllib.request
import venv
from pathlib import Path
from typing import Iterator

import pytest

from conftest import pneumolab_command, subprocess_env
from test_sweep import read_csv

pytestmark = pytest.mark.slow  # tracked sweeps, a TensorBoard server, a venv without extras

TINY = ["data.limit_per_class=20", "trainer.epochs=2", "trainer.seeds=[0,1]"]
EPOCH_METRICS = ("lr", "train_loss", "train_acc", "val_loss", "val_acc")
TIMEOUT_S = 300


def start(root: Path, name: str, args: list[str], python: list[str] | None = None) -> subprocess.Popen:
    """A pneumolab command working in root, its output (stdout and stderr) in root/name.log."""
    with open(root / f"{name}.log", "w") as out:
        return subprocess.Popen([*(python or pneumolab_command()), *args], cwd=root, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Iterator[Path]:
    """Sweeps and runs that log, all in one working directory (so one outputs/mlflow.db); yields it."""
    root = tmp_path_factory.mktemp("tracked")
    (root / "blocked" / "tensorboard").parent.mkdir()
    (root / "blocked" / "tensorboard").write_text("a file where the event folder would go\n")
    (root / "outputs").mkdir()
    # A writer that holds the database while a job wants to log: SQLite's "database is locked".
    lock = sqlite3.connect(root / "outputs" / "locked.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    procs = {
        "tb": start(root, "tb", ["-m", "logger=tensorboard", "head=bce,ce", *TINY, f"hydra.sweep.dir={root / 'tb'}"]),
        "ml": start(root, "ml", ["-m", "logger=mlflow", "head=bce,ce", *TINY, f"hydra.sweep.dir={root / 'ml'}"]),
        "joblib": start(root, "joblib", ["-m", "hydra/launcher=joblib", "logger=mlflow", "head=bce,ce",
                                         "optimizer.lr=1e-3,3e-3", *TINY, f"hydra.sweep.dir={root / 'joblib'}"]),
        "blocked": start(root, "blocked", ["logger=tensorboard", *TINY, f"hydra.run.dir={root / 'blocked'}"]),
        "locked": start(root, "locked", ["logger=mlflow", "logger.tracking_uri=sqlite:///outputs/locked.db", *TINY,
                                         f"hydra.run.dir={root / 'locked'}"]),
    }
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=TIMEOUT_S) == 0, (root / f"{name}.log").read_text()
        yield root
    finally:
        lock.close()
        finish(procs)


def job_files(job: Path) -> tuple[dict, list[dict[str, str]]]:
    return json.loads((job / "results.json").read_text()), read_csv(job / "metrics.csv")


def epoch_values(rows: list[dict[str, str]], seed: int, name: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r[name])) for r in rows if int(r["seed"]) == seed]


def assert_same_curve(logged: list[tuple[int, float]], expected: list[tuple[int, float]], name: str) -> None:
    """Same epochs, same values to float32 precision (event files and MLflow keep what metrics.csv prints)."""
    assert [step for step, _ in logged] == [step for step, _ in expected], name
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6), name


def test_tensorboard_event_files_hold_every_seed_and_the_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    for job in (tracked / "tb" / "0", tracked / "tb" / "1"):
        results, rows = job_files(job)
        for seed in results["seeds"]:
            events = EventAccumulator(str(job / "tensorboard" / f"seed_{seed}")).Reload()
            for name in EPOCH_METRICS:
                assert_same_curve([(e.step, e.value) for e in events.Scalars(name)], epoch_values(rows, seed, name), name)
        events = EventAccumulator(str(job / "tensorboard" / "job")).Reload()
        assert events.Scalars("test_acc/mean")[0].value == pytest.approx(results["summary"]["test_acc"]["mean"])
        assert sorted(events.Tags()["images"]) == ["calibration", "curves", "roc"]
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        start_info = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start_info.group_name == " ".join(results["overrides"])
        assert start_info.hparams["head.name"].string_value == results["config"]["head"]["name"]
        assert start_info.hparams["optimizer.lr"].number_value == results["config"]["optimizer"]["lr"]
        assert start_info.hparams["model.hidden_sizes"].string_value == "[128, 128, 128]"
        assert "logger.name" not in start_info.hparams
        end_info = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end_info.status == api_pb2.STATUS_SUCCESS


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_tensorboard_hparams_view_compares_the_sweep_points(tracked):
    """A real `tensorboard --logdir <sweep dir>` on 127.0.0.1, asked what its HParams tab shows."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(tracked / "tb"),
                               "--host", "127.0.0.1", "--port", "0", "--load_fast", "false"],
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = next(m.group(0) for line in server.stderr if (m := re.search(r"http://127\.0\.0\.1:\d+", line)))
        experiment = post_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        groups = post_json(f"{url}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        })["sessionGroups"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert {"head.name", "optimizer.lr", "data.batch_size"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert {"test_acc/mean", "test_auc/mean"} <= {m["name"]["tag"] for m in experiment["metricInfos"]}
    # Only the job runs are sessions: a seed's curves are not a metric column of its own.
    assert {m["name"]["group"] for m in experiment["metricInfos"]} == {""}
    assert len(groups) == 2
    for group in groups:
        (session,) = group["sessions"]
        results, _ = job_files(tracked / "tb" / Path(session["name"]).parts[0])
        assert group["name"] == " ".join(results["overrides"]) and session["status"] == "STATUS_SUCCESS"
        assert group["hparams"]["head.name"] == results["config"]["head"]["name"]
        value = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}["test_acc/mean"]
        assert value == pytest.approx(results["summary"]["test_acc"]["mean"])


def mlflow_runs(root: Path, experiment: Path) -> tuple[list, dict[str, list]]:
    """The parent runs of an experiment in root/outputs/mlflow.db, and each parent's child runs."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[str(experiment)], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for p in parents}
    return parents, children


def check_mlflow_job(parent, children: list, job: Path) -> None:
    from mlflow.tracking import MlflowClient

    results, rows = job_files(job)
    assert parent.info.run_name == " ".join(results["overrides"]) and parent.info.status == "FINISHED"
    assert parent.data.params["head.name"] == results["config"]["head"]["name"]
    assert float(parent.data.params["optimizer.lr"]) == results["config"]["optimizer"]["lr"]
    assert parent.data.params["trainer.seeds"] == "[0, 1]" and "logger.name" not in parent.data.params
    for key in ("test_acc", "test_auc", "val_acc"):
        assert parent.data.metrics[f"{key}/mean"] == pytest.approx(results["summary"][key]["mean"])
    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"curves.png", "roc.png", "calibration.png", "results.json"} <= artifacts
    assert sorted(c.info.run_name for c in children) == [f"seed {s}" for s in results["seeds"]]
    for child in children:
        seed = int(child.info.run_name.split()[1])
        entry = next(e for e in results["per_seed"] if e["seed"] == seed)
        assert child.data.metrics["test_acc"] == pytest.approx(entry["test_acc"]) and child.info.status == "FINISHED"
        for name in EPOCH_METRICS:
            history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, name))
            assert_same_curve(history, epoch_values(rows, seed, name), name)


def test_mlflow_sqlite_store_holds_a_two_point_sweep(tracked):
    parents, children = mlflow_runs(tracked, tracked / "ml")
    assert len(parents) == 2
    for parent in parents:
        check_mlflow_job(parent, children[parent.info.run_id], Path(parent.data.tags["job_dir"]))
    assert sorted(Path(p.data.tags["job_dir"]).name for p in parents) == ["0", "1"]


def test_parallel_joblib_jobs_lose_nothing_in_one_sqlite_store(tracked):
    """Four joblib jobs, two at a time, beside the two-point sweep, all writing outputs/mlflow.db."""
    parents, children = mlflow_runs(tracked, tracked / "joblib")
    assert sorted(Path(p.data.tags["job_dir"]).name for p in parents) == ["0", "1", "2", "3"]
    for parent in parents:
        check_mlflow_job(parent, children[parent.info.run_id], Path(parent.data.tags["job_dir"]))


@pytest.mark.parametrize("name", ["blocked", "locked"])
def test_a_failing_tracker_is_one_warning_and_the_job_writes_all_its_files(tracked, name):
    job = tracked / name
    assert all((job / f).is_file() for f in ("results.json", "metrics.csv", "curves.png", "roc.png"))
    warnings = [line for line in (tracked / f"{name}.log").read_text().splitlines() if "[WARNING]" in line]
    assert len(warnings) == 1 and "could not record this job" in warnings[0], warnings
    assert ("database is locked" if name == "locked" else "tensorboard") in warnings[0]


# --- environments without the extras ------------------------------------------

EXTRA_DISTRIBUTIONS = ("tensorboard", "mlflow-skinny", "optuna", "hydra-optuna-sweeper", "torchvision")


def hidden_entries(distributions: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The site-packages entries the distributions installed (one level down in the shared hydra_plugins)."""
    hidden = set()
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            if file.parts[0] != "..":
                hidden.add(tuple(file.parts[:2] if file.parts[0] == "hydra_plugins" else file.parts[:1]))
    return hidden


def mirror(source: Path, target: Path, hidden: set[tuple[str, ...]], depth: tuple[str, ...] = ()) -> None:
    target.mkdir()
    for entry in source.iterdir():
        here = (*depth, entry.name)
        if here in hidden:
            continue
        if any(h[:len(here)] == here for h in hidden):  # a folder shared with a hidden distribution
            mirror(entry, target / entry.name, hidden, here)
        else:
            (target / entry.name).symlink_to(entry)


def python_without_extras(root: Path) -> list[str]:
    """A real virtualenv that sees this environment's packages, less the extras' distributions."""
    site = root / "site"
    mirror(Path(sysconfig.get_paths()["purelib"]), site, hidden_entries(EXTRA_DISTRIBUTIONS))
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "pneumolab-test-site.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
    return [str(python), "-m", "pneumolab.cli.main"]


def test_each_extra_missing_is_named_with_its_pip_command(tmp_path):
    python = python_without_extras(tmp_path)
    user_conf = tmp_path / "user_conf" / "experiment"
    user_conf.mkdir(parents=True)
    # A logger chosen by a config file, not on the command line: the job checks before training.
    (user_conf / "tracked.yaml").write_text("# @package _global_\ndefaults:\n  - override /logger: mlflow\n")
    cases = {
        "tensorboard": (["logger=tensorboard"], "tensorboard"),
        "mlflow": (["-m", "logger=none,mlflow"], "mlflow"),
        "optuna": (["hparams_search=optuna"], "optuna"),
        "resnet": (["model=resnet"], "resnet"),
        "config": ([f"--config-dir={tmp_path / 'user_conf'}", "experiment=tracked"], "mlflow"),
    }
    procs = {name: start(tmp_path, name, [*args, *TINY, f"hydra.run.dir={tmp_path / name}",
                                          f"hydra.sweep.dir={tmp_path / name}"], python)
             for name, (args, _) in cases.items()}
    procs["core"] = start(tmp_path, "core", [*TINY, f"hydra.run.dir={tmp_path / 'core'}"], python)
    try:
        codes = {name: proc.wait(timeout=TIMEOUT_S) for name, proc in procs.items()}
    finally:
        finish(procs)
    assert codes["core"] == 0 and (tmp_path / "core" / "results.json").is_file(), (tmp_path / "core.log").read_text()
    for name, (_, extra) in cases.items():
        output = (tmp_path / f"{name}.log").read_text()
        assert codes[name] == 2 and "Traceback" not in output, output
        (line,) = [line for line in output.splitlines() if "error" in line.lower()]
        assert f"pip install -e '.[{extra}]'" in line and f"pip install 'pneumolab[{extra}]'" in line, line
        assert not list((tmp_path / name).rglob("results.json")), name
