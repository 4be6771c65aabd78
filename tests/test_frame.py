"""pneumolab.load: real sweeps (debug=smoke, in subprocesses) read back as one tidy DataFrame."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pneumolab
from conftest import subprocess_env
from pneumolab.errors import PneumolabError
from pneumolab.analysis.frame import NoResultsError, flatten
from test_sweep_cli import Sweep, start_sweep

pd = pytest.importorskip("pandas")

SMOKE = ["debug=smoke"]  # 8 images per class and split, 2 epochs, seeds 0 and 1


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """Two tiny sweeps, started together: the two heads, and a batch size of 16 beside an invalid 0."""
    root = tmp_path_factory.mktemp("frame")
    started: dict[str, tuple[Sweep, int]] = {
        "heads": (start_sweep(root, "heads", ["head=bce,ce", *SMOKE]), 0),
        "failing": (start_sweep(root, "failing", ["data.batch_size=16,0", *SMOKE]), 1),  # a failed point exits 1
    }
    for sweep, expected_rc in started.values():
        rc, output = sweep.wait()
        assert rc == expected_rc, output
    return {name: sweep.dir for name, (sweep, _) in started.items()}


def results(job_dir: Path | str) -> dict:
    return json.loads((Path(job_dir) / "results.json").read_text())


def numeric_keys(entry: dict) -> set[str]:
    return {k for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"seed"}


@pytest.mark.slow
def test_a_row_per_point_and_seed_and_an_ensemble_row_per_point(sweeps):
    df = pneumolab.load(sweeps["heads"])
    assert len(df) == 2 * 2 + 2
    seeds = df[df["kind"] == "seed"]
    assert sorted(seeds["seed"]) == [0, 0, 1, 1]
    assert df.loc[df["kind"] == "ensemble", "seed"].isna().all()
    assert list(df["point"]) == [str(sweeps["heads"] / job) for job in "000111"]
    assert set(df["sweep"]) == {str(sweeps["heads"])}
    assert set(df["status"]) == {"ok"} and df["error"].isna().all()
    assert not seeds["diverged"].any()


@pytest.mark.slow
def test_the_swept_key_is_a_column_and_shared_keys_are_not(sweeps):
    df = pneumolab.load(sweeps["heads"])
    by_point = df.groupby("point")["head"].unique()
    assert {point: list(heads) for point, heads in by_point.items()} == {
        str(sweeps["heads"] / "0"): ["bce"], str(sweeps["heads"] / "1"): ["ce"]}
    for shared in ("model", "data.batch_size", "trainer.epochs", "optimizer.lr", "debug"):
        assert shared not in df.columns


@pytest.mark.slow
def test_a_column_per_numeric_metric_and_means_match_the_summary(sweeps):
    df = pneumolab.load(sweeps["heads"])
    for job in ("0", "1"):
        stored = results(sweeps["heads"] / job)
        assert numeric_keys(stored["per_seed"][0]) <= set(df.columns)
        rows = df[df["point"] == str(sweeps["heads"] / job)]
        seed_rows = rows[rows["kind"] == "seed"]
        assert list(seed_rows["test_acc"]) == [e["test_acc"] for e in stored["per_seed"]]
        for metric in ("test_acc", "test_auc", "val_acc"):
            assert seed_rows[metric].mean() == pytest.approx(stored["summary"][metric]["mean"], abs=1e-12)
        ensemble = rows[rows["kind"] == "ensemble"].iloc[0]
        assert ensemble["test_acc"] == stored["ensemble"]["test_acc"]
    assert df.columns[df.columns.get_loc("diverged") + 1] == "test_acc"  # the metrics, accuracy first


@pytest.mark.slow
def test_a_failed_point_is_one_row_with_its_error(sweeps):
    df = pneumolab.load(sweeps["failing"])
    assert len(df) == 3 + 1
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["point"] == str(sweeps["failing"] / "1") and row["data.batch_size"] == 0
    error = json.loads((sweeps["failing"] / "1" / "error.json").read_text())["error"]
    assert row["error"] == error.splitlines()[0]
    assert pd.isna(row["seed"]) and pd.isna(row["test_acc"]) and pd.isna(row["test_auc"])
    assert list(df["data.batch_size"]) == [16, 16, 16, 0]


@pytest.mark.slow
def test_two_sweeps_at_once(sweeps):
    df = pneumolab.load(sweeps["heads"], sweeps["failing"], sweeps["heads"])  # a path twice counts once
    assert len(df) == 6 + 4
    assert list(df["sweep"].unique()) == [str(sweeps["heads"]), str(sweeps["failing"])]
    # Both sweeps differ in head (bce, ce vs bce) and batch size (32 vs 16, 0): both are columns.
    table = df[df["kind"] == "seed"].drop_duplicates("point")[["head", "data.batch_size", "status"]]
    assert table.values.tolist() == [["bce", 32, "ok"], ["ce", 32, "ok"], ["bce", 16, "ok"], ["bce", 0, "failed"]]
    means = df[df["kind"] == "seed"].groupby(["head", "data.batch_size"])["test_acc"].mean()
    assert means[("ce", 32)] == pytest.approx(results(sweeps["heads"] / "1")["summary"]["test_acc"]["mean"])


@pytest.mark.slow
def test_a_plain_run_dir_and_its_results_file(sweeps, tmp_path):
    run = shutil.copytree(sweeps["heads"] / "0", tmp_path / "run")  # a job dir outside any sweep
    for path in (run, run / "results.json"):
        df = pneumolab.load(path)
        assert list(df["kind"]) == ["seed", "seed", "ensemble"]
        assert df["sweep"].isna().all()
        assert "head" not in df.columns  # one point: nothing differs
    inside = pneumolab.load(sweeps["heads"] / "1")
    assert set(inside["sweep"]) == {str(sweeps["heads"])}


@pytest.mark.slow
def test_a_diverged_seed_keeps_its_row_with_nan_metrics(sweeps, tmp_path):
    run = shutil.copytree(sweeps["heads"] / "0", tmp_path / "run")
    stored = results(run)
    entry = stored["per_seed"][1]
    # As results.seed_entry writes a diverged seed: no test metrics, the training record kept.
    entry.update({key: None for key in entry if key.startswith("test_")}, diverged=True)
    (run / "results.json").write_text(json.dumps(stored))
    df = pneumolab.load(run)
    seeds = df[df["kind"] == "seed"]
    assert list(seeds["diverged"]) == [False, True]
    assert seeds["test_acc"].isna().tolist() == [False, True]
    assert seeds.iloc[1]["status"] == "ok" and seeds.iloc[1]["seed"] == 1


@pytest.mark.parametrize("make_dir", [False, True])
def test_a_path_without_results_is_named(tmp_path, make_dir):
    path = tmp_path / "nothing-here"
    if make_dir:
        (path / "empty-job").mkdir(parents=True)
    with pytest.raises(NoResultsError, match="nothing-here") as caught:
        pneumolab.load(path)
    assert isinstance(caught.value, PneumolabError)
    assert ("holds no results.json" if make_dir else "does not exist") in str(caught.value)


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_without_pandas_the_error_names_the_extra(sweeps):
    out = python(
        "import sys; sys.modules['pandas'] = None\n"
        "import pneumolab\n"
        f"try: pneumolab.load({str(sweeps['heads'])!r})\n"
        "except ImportError as exc: print(exc)\n")
    assert "pip install 'pneumolab[notebook]'" in out
    assert len(out.splitlines()) == 1 and out.count(". ") == 0 and out.endswith(".")


@pytest.mark.slow
def test_loading_imports_neither_torch_nor_pandas_until_called(sweeps):
    out = python(
        "import sys, pneumolab\n"
        "print('pandas' in sys.modules, 'torch' in sys.modules)\n"
        f"df = pneumolab.load({str(sweeps['heads'])!r})\n"
        "print(len(df), 'torch' in sys.modules)\n")
    assert out.splitlines() == ["False False", "6 False"]


def test_flatten_names_a_group_by_its_name_and_makes_lists_tuples():
    config = {"head": {"name": "ce"}, "model": {"name": "mlp", "hidden_sizes": [128, 64]}, "tag": None}
    assert dict(flatten(config)) == {"head": "ce", "model": "mlp", "model.hidden_sizes": (128, 64), "tag": None}
