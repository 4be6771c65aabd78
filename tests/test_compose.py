"""The config as Hydra's compose API builds it (conftest's `compose_config`), and jobs run
in-process from it (`run_composed`): the way Hydra apps test themselves without a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumolab.config import config_dir
from test_experiment_configs import SPEC_TABLE

ACCURACIES = ("test_acc", "val_acc", "test_sensitivity", "test_specificity", "test_balanced_acc")


def test_a_composed_smoke_job_writes_fractions_for_two_seeds(run_composed):
    job = run_composed("debug=smoke")
    results = job.results
    assert job.cfg.trainer.seeds == [0, 1] and job.cfg.trainer.epochs == 2
    assert [entry["seed"] for entry in results["per_seed"]] == [0, 1]
    for entry in results["per_seed"]:
        assert not entry["diverged"] and entry["epochs_run"] == 2
        for key in ACCURACIES:
            if key in entry:
                assert 0.0 <= entry[key] <= 1.0, (key, entry[key])
        assert 0.0 <= entry["test_auc"] <= 1.0
    for key in ("test_acc", "val_acc", "test_auc"):
        summary = results["summary"][key]
        assert summary["n"] == 2 and 0.0 <= summary["mean"] <= 1.0
    assert results["overrides"] == ["debug=smoke"]
    assert (job.dir / "metrics.csv").is_file() and (job.dir / "model.safetensors").is_file()


def test_two_composes_with_the_same_overrides_train_the_same_numbers(run_composed):
    overrides = ("debug=smoke", "head=ce")
    first, second = run_composed(*overrides), run_composed(*overrides)
    assert first.dir != second.dir
    assert first.cfg == second.cfg
    assert [e["test_acc"] for e in first.results["per_seed"]] == [e["test_acc"] for e in second.results["per_seed"]]
    assert [e["val_acc"] for e in first.results["per_seed"]] == [e["val_acc"] for e in second.results["per_seed"]]


REPORT_OPTIONS = sorted(p.stem for p in (Path(config_dir()) / "experiment" / "report").glob("*.yaml"))


def test_the_report_options_are_exactly_the_spec_tables_rows():
    assert REPORT_OPTIONS == sorted(SPEC_TABLE)


@pytest.mark.parametrize("name", REPORT_OPTIONS)
def test_every_report_option_composes_to_its_spec_row(compose_config, name):
    head, batch, step, lr, _ = SPEC_TABLE[name]
    cfg = compose_config(f"experiment=report/{name}")
    assert (cfg.head.name, cfg.data.batch_size, cfg.scheduler.name, cfg.scheduler.step_size) == (head, batch, "step", step)
    assert cfg.optimizer.lr == pytest.approx(lr)
    assert cfg.scheduler.gamma == pytest.approx(0.1)  # "StepLR gamma 0.1 throughout"
    assert list(cfg.model.hidden_sizes) == [128, 128, 128]  # "Its hidden layers are 128 wide."
    assert list(cfg.trainer.seeds) == [0, 1, 2, 3, 4]  # "every setting averaged over five training runs"
