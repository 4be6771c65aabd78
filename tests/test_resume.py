"""A job reuses its directory's results.json only when that file is a results object of the same
config written by the same pneumolab version; anything else is trained again, and the log says why."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pneumolab import __version__
from pneumolab.cli import config_dir, run_job
from pneumolab.config import register_configs

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
    (lambda r: edited(r, ["config", "trainer", "epochs"], 3), "holds another config (first difference at trainer.epochs)"),
    (lambda r: [r], "holds a JSON list, not a results object"),
    (lambda r: {"config": r["config"], "summary": r["summary"]}, "lacks per_seed, n_diverged, versions"),
    (lambda r: edited(r, ["summary"], {}), "lacks summary.val_acc.mean"),
    (lambda r: "not json", "is not readable JSON"),
], ids=["older-version", "other-config", "a-list", "missing-keys", "no-summary", "not-json"])
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
