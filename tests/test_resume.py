"""A job reuses its directory's results.json only when that file is a results object of the same
config written by the same pneumolab version; a damaged file or an older version's is trained again,
and the log says why. A finished point of another config is never overwritten: a run or sweep that
would land on one is refused before anything is written or trained (a sweep folder only grows)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pneumolab.version import __version__
from pneumolab.cli.main import run_job
from pneumolab.config import config_dir
from pneumolab.config import register_configs
from pneumolab.cli.resume import PointTaken

from conftest import pneumolab_command, subprocess_env

TINY = ["data.limit_per_class=10", "trainer.epochs=2", "trainer.seeds=[0,1]"]


def run_in_process(job_dir: Path, overrides: list[str] = TINY) -> float | None:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return run_job(cfg, job_dir, overrides)


@pytest.fixture
def finished(tmp_path, restore_torch_state) -> Path:
    """A job directory holding one finished run of TINY."""
    run_in_process(tmp_path)
    return tmp_path / "results.json"


def edited(results: dict, path: list[str], value) -> dict:
    node = results
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return results


def test_the_same_config_by_the_same_version_is_reused(finished, caplog):
    before = finished.read_bytes()
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        value = run_in_process(finished.parent)
    assert "skipped: done" in caplog.text and "recomputing" not in caplog.text
    assert finished.read_bytes() == before
    assert value == json.loads(before)["summary"]["val_acc"]["mean"]


@pytest.mark.parametrize("replace, reason", [
    (lambda r: edited(r, ["versions", "pneumolab"], "0.0.1"),
     f"was written by pneumolab 0.0.1, this is pneumolab {__version__}"),
    (lambda r: [r], "holds a JSON list, not an object with per_seed and summary"),
    (lambda r: {"config": r["config"], "summary": r["summary"]}, "has no per_seed list of seeds"),
    (lambda r: {k: v for k, v in r.items() if k != "versions"}, "lacks versions"),
    (lambda r: edited(r, ["summary"], {}), "has no summary of test_acc with mean, std"),
    (lambda r: "not json", "is not valid JSON"),
], ids=["older-version", "a-list", "missing-keys", "no-versions", "no-summary", "not-json"])
@pytest.mark.slow
def test_anything_else_is_recomputed_and_the_log_says_why(finished, caplog, replace, reason):
    config = json.loads(finished.read_text())["config"]
    replacement = replace(json.loads(finished.read_text()))
    finished.write_text(replacement if isinstance(replacement, str) else json.dumps(replacement))
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        run_in_process(finished.parent)
    assert f"recomputing: {finished} {reason}" in caplog.text
    assert "skipped: done" not in caplog.text
    fresh = json.loads(finished.read_text())
    assert fresh["versions"]["pneumolab"] == __version__
    assert fresh["config"] == config
    assert [e["epochs_run"] for e in fresh["per_seed"]] == [2, 2]


# --- a finished point of another config is never overwritten ------------------------------------------------

SWEEP = ["trainer.epochs=1", "trainer.seeds=[0,1]", "data.limit_per_class=10"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (the directory lock aside: each process that claims it writes it)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".pneumolab.lock"}


def pneumolab(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)


def refusal(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("pneumolab: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Launching" not in proc.stderr + proc.stdout
    return proc.stderr.strip()


@pytest.mark.slow
def test_another_sweep_into_a_used_folder_is_refused_and_can_go_beside_it(tmp_path):
    sweep = tmp_path / "sweep"
    first = pneumolab(tmp_path, "-m", "data.batch_size=16,32", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    before = snapshot(sweep)
    assert {"0/results.json", "0/model.safetensors", "1/results.json", "1/model.safetensors"} <= before.keys()

    # The case: a different sweep would have retrained points 0 and 1 over the finished ones.
    line = refusal(pneumolab(tmp_path, "-m", "data.batch_size=64,128", *SWEEP, f"hydra.sweep.dir={sweep}"))
    assert f"The sweep folder {sweep} already holds finished points of another configuration, and 2 of this " \
           "sweep's 2 jobs would train over them: 0 (first difference at data.batch_size: 16 there, 64 here); " \
           "1 (first difference at data.batch_size: 32 there, 128 here)." in line
    assert "'hydra.sweep.subdir=more/${hydra.job.num}'" in line and line.endswith("Nothing was written.")
    assert snapshot(sweep) == before  # every file, byte for byte: results, weights, .hydra/, summaries

    # A point the new sweep shares with the old one is no conflict: re-running or extending a sweep still works.
    grown = pneumolab(tmp_path, "-m", "data.batch_size=16,32,48", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert grown.returncode == 0, grown.stderr
    assert (grown.stdout + grown.stderr).count("skipped: done") == 2
    after = snapshot(sweep)
    # Skipped points keep their outputs; only Hydra's records of the job (.hydra/, the appended log) are new.
    changed = {k for k, v in before.items() if k.startswith(("0/", "1/")) and after[k] != v}
    assert changed <= {f"{i}/{name}" for i in (0, 1) for name in (".hydra/config.yaml", ".hydra/hydra.yaml",
                                                                  ".hydra/overrides.yaml", "cli.log")}, changed
    assert json.loads(after["2/results.json"])["config"]["data"]["batch_size"] == 48

    # The fix the paragraph gives: the new points in sub-folders of their own, beside the old ones.
    beside = pneumolab(tmp_path, "-m", "data.batch_size=64,128", *SWEEP, f"hydra.sweep.dir={sweep}",
                       "hydra.sweep.subdir=more/${hydra.job.num}")
    assert beside.returncode == 0, beside.stderr
    final = snapshot(sweep)
    for key in ("0/results.json", "0/model.safetensors", "1/results.json", "1/model.safetensors"):
        assert final[key] == before[key], key
    assert [json.loads(final[f"more/{i}/results.json"])["config"]["data"]["batch_size"] for i in (0, 1)] == [64, 128]
    assert final["summary.csv"].decode().count("\n") == 1 + 5  # the summary covers all five points
    again = pneumolab(tmp_path, "-m", "data.batch_size=64,128", *SWEEP, f"hydra.sweep.dir={sweep}",
                      "hydra.sweep.subdir=more/${hydra.job.num}")
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skipped: done") == 2, again.stderr


@pytest.mark.slow
def test_a_point_that_failed_may_be_retried_by_another_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    failed = pneumolab(tmp_path, "-m", "data.batch_size=0", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert failed.returncode == 1 and (sweep / "0" / "error.json").is_file() and not (sweep / "0" / "results.json").exists()
    retried = pneumolab(tmp_path, "-m", "data.batch_size=16", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert retried.returncode == 0, retried.stderr
    assert json.loads((sweep / "0" / "results.json").read_text())["config"]["data"]["batch_size"] == 16


@pytest.mark.slow
def test_a_run_into_a_named_directory_holding_another_run_is_refused(tmp_path):
    job = tmp_path / "run"
    done = pneumolab(tmp_path, *SWEEP, f"hydra.run.dir={job}")
    assert done.returncode == 0, done.stderr
    before = snapshot(job)
    line = refusal(pneumolab(tmp_path, *SWEEP, "head=ce", f"hydra.run.dir={job}"))
    assert (f"The run directory {job} already holds the finished results of another configuration (first "
            'difference at head.name: "bce" there, "ce" here)') in line
    assert snapshot(job) == before
    same = pneumolab(tmp_path, *SWEEP, f"hydra.run.dir={job}")
    assert same.returncode == 0 and "skipped: done" in same.stdout + same.stderr, same.stderr


@pytest.mark.slow
def test_the_job_itself_refuses_a_finished_point_of_another_config(finished):
    """What a sweeper that picks its points as it goes (Optuna) meets: the job refuses and leaves the files."""
    before = {p.name: p.read_bytes() for p in finished.parent.iterdir() if p.is_file()}
    with pytest.raises(PointTaken, match=r"already holds the finished results of another configuration \(first "
                                         r"difference at trainer\.epochs: 2 there, 3 here\).*never overwrites"):
        run_in_process(finished.parent, [*TINY, "trainer.epochs=3"])
    assert {p.name: p.read_bytes() for p in finished.parent.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_a_search_that_picks_points_as_it_goes_leaves_a_finished_point_untouched(tmp_path):
    """Optuna's points cannot be listed ahead: the job that lands on another config's finished point refuses
    there, the search records it as a failed trial and goes on, and the old point's files stay."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    done = pneumolab(tmp_path, *SWEEP, "data.batch_size=7", f"hydra.run.dir={sweep / '0'}")
    assert done.returncode == 0, done.stderr
    before = {name: (sweep / "0" / name).read_bytes() for name in ("results.json", "model.safetensors")}
    proc = pneumolab(tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *SWEEP,
                     f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1, proc.stderr
    assert f"failed: {sweep / '0'} already holds the finished results of another configuration" in proc.stdout + proc.stderr
    assert {name: (sweep / "0" / name).read_bytes() for name in before} == before
    assert (sweep / "1" / "results.json").is_file()  # the search went on
