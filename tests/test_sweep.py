"""Sweep summaries built from results.json / error.json files written by hand, and the sweep configs."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf
from scipy import stats

from pneumolab.analysis import points
from pneumolab.analysis import summary_md
from pneumolab.analysis import sweep
from pneumolab.analysis.summary import build_summary
from pneumolab.cli import summarize as summarize_command
from pneumolab.config import config_dir
from pneumolab.config import register_configs
from pneumolab.record.metrics import summarize
from pneumolab.record.results import SUMMARY_KEYS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_CONFIG = {"head": {"name": "bce"}, "data": {"name": "phantom", "batch_size": 32}, "trainer": {"epochs": 3}}


def set_in(config: dict, key: str, value: object) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def config_for(overrides: list[str]) -> dict:
    config = json.loads(json.dumps(BASE_CONFIG))
    for override in overrides:
        key, value = override.split("=")
        if key == "head":
            config["head"]["name"] = value
        else:
            set_in(config, key, int(value))
    return config


def write_point(job_dir: Path, overrides: list[str], test_accs: list[float | None], val_accs: list[float] | None = None) -> dict:
    """A results.json as the CLI writes it: `None` accuracies are diverged seeds."""
    val_accs = val_accs or [0.5] * len(test_accs)
    per_seed = [
        {"seed": seed, "test_acc": acc, "test_auc": None if acc is None else acc / 2 + 0.4,
         "test_sensitivity": acc, "test_specificity": acc, "test_f1": acc,
         "test_confusion": None, "val_acc": val, "epochs_run": 3, "diverged": acc is None}
        for seed, (acc, val) in enumerate(zip(test_accs, val_accs))
    ]
    results = {
        "config": config_for(overrides),
        "overrides": overrides,
        "seeds": list(range(len(test_accs))),
        "per_seed": per_seed,
        # Metrics the entries lack stay out of the summary too, as in a results.json older than them.
        "summary": {key: summarize([entry[key] for entry in per_seed]) for key in SUMMARY_KEYS if key in per_seed[0]},
    }
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "results.json").write_text(json.dumps(results))
    return results


def write_failure(job_dir: Path, overrides: list[str], error: str) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    failure = {"config": config_for([o for o in overrides if not o.endswith("=0")]), "overrides": overrides, "error": error}
    (job_dir / "error.json").write_text(json.dumps(failure))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def markdown_rows(markdown: str, section: str) -> list[dict[str, str]]:
    """The first table under `## section` of summary.md, one {header: cell} per row."""
    lines = markdown.split(f"## {section}\n", 1)[1].splitlines()
    table = [line for line in itertools.dropwhile(lambda l: not l.startswith("|"), lines)]
    table = list(itertools.takewhile(lambda l: l.startswith("|"), table))
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


GRID = {  # job num -> overrides, per-seed test accuracies
    "0": (["head=bce", "data.batch_size=32", "trainer.epochs=3"], [0.70, 0.74, 0.72]),
    "1": (["head=ce", "data.batch_size=32", "trainer.epochs=3"], [0.78, 0.81, 0.77]),
    "2": (["head=bce", "data.batch_size=64", "trainer.epochs=3"], [0.69, 0.70, None]),
    "10": (["head=ce", "data.batch_size=64", "trainer.epochs=3"], [0.60, 0.75, 0.71]),
}


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    for num, (overrides, accs) in GRID.items():
        write_point(tmp_path / num, overrides, accs)
    return tmp_path


def test_swept_and_common_keys(grid: Path):
    summary = build_summary([grid])
    assert [p.job_dir.name for p in summary.points] == ["0", "1", "2", "10"]  # job number order
    assert summary.swept == ["head", "data.batch_size"]
    assert summary.common == {"trainer.epochs": "3"}


def test_csv_row_per_point_with_the_seed_statistics(grid: Path):
    sweep.write_summary(build_summary([grid]), grid)
    rows = read_csv(grid / "summary.csv")
    assert [row["point"] for row in rows] == list(GRID)
    for row, (overrides, accs) in zip(rows, GRID.values()):
        finite = [a for a in accs if a is not None]
        assert row["head"] == overrides[0].split("=")[1] and row["data.batch_size"] == overrides[1].split("=")[1]
        assert row["overrides"] == " ".join(overrides)
        assert row["status"] == "ok" and row["error"] == ""
        assert float(row["test_acc_mean"]) == pytest.approx(np.mean(finite), abs=1e-15)
        assert float(row["test_acc_std"]) == pytest.approx(np.std(finite, ddof=1), abs=1e-15)
        half = stats.t.ppf(0.975, len(finite) - 1) * np.std(finite, ddof=1) / np.sqrt(len(finite))
        assert float(row["test_acc_ci95_low"]) == pytest.approx(np.mean(finite) - half)
        assert float(row["test_acc_ci95_high"]) == pytest.approx(np.mean(finite) + half)
        assert float(row["test_auc_mean"]) == pytest.approx(np.mean([a / 2 + 0.4 for a in finite]))
        assert int(row["n_seeds"]) == len(accs)
        assert int(row["n_diverged"]) == accs.count(None)


def shared_seed_values(a: list[float | None], b: list[float | None]) -> tuple[list[float], list[float]]:
    """The values of the seeds (list positions) both sides scored: what a paired test takes."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def test_each_pair_differing_in_one_setting_is_paired_on_its_seeds_and_holm_adjusted(grid: Path):
    sweep.write_summary(build_summary([grid]), grid)
    rows = markdown_rows((grid / "summary.md").read_text(), "Significance")
    # 0-1 and 2-10 differ in the head, 0-2 and 1-10 in the batch size; 0-10 and 1-2 in both: no test.
    accs = {num: a_s for num, (_, a_s) in GRID.items()}
    expected = {
        ("0", "1"): "head=bce vs head=ce at data.batch_size=32",
        ("0", "2"): "data.batch_size=32 vs data.batch_size=64 at head=bce",
        ("1", "10"): "data.batch_size=32 vs data.batch_size=64 at head=ce",
        ("2", "10"): "head=bce vs head=ce at data.batch_size=64",
    }
    assert [row["comparison"] for row in rows] == list(expected.values())
    # Every point ran seeds 0, 1, 2: each test pairs them; point 2's seed 2 diverged, so its pairs use 0 and 1.
    paired = [shared_seed_values(accs[a], accs[b]) for a, b in expected]
    raw = [stats.ttest_rel(x, y).pvalue for x, y in paired]
    reference = holm_by_hand(raw)
    for row, (a, b), (x, y), p, p_holm in zip(rows, expected, paired, raw, reference):
        assert row["points"] == f"{a} vs {b}"
        assert row["test"] == (f"paired, {len(x)} seeds" if "2" not in (a, b) else
                               "paired, 2 seeds (1 not on both sides left out)")
        assert float(row["p"]) == pytest.approx(p, abs=5e-4)
        assert float(row["p (Holm)"]) == pytest.approx(p_holm, abs=5e-4)
        assert row["verdict"] == ("significant" if p_holm < 0.05 else "not significant")
        assert row["difference"] == f"{100 * (np.mean(x) - np.mean(y)):+.1f} pt"
    comparisons = build_summary([grid]).comparisons
    assert [c.test["p"] for c in comparisons] == pytest.approx(raw, rel=1e-9)
    assert [c.test["t"] for c in comparisons] == pytest.approx([stats.ttest_rel(x, y).statistic for x, y in paired],
                                                               rel=1e-9)


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm (1979): the k-th smallest of m p-values times (m - k + 1), never below the one before it."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adjusted[i] = running
    return adjusted


def t_test_power(effect: float, n_a: int, n_b: int | None = None) -> float:
    """Power of the two-sided 5 % t-test at standardised `effect`, from the noncentral t: two-sample of
    n_a and n_b seeds, or paired on n_a seeds when n_b is None."""
    df = n_a - 1 if n_b is None else n_a + n_b - 2
    crit = stats.t.ppf(0.975, df)
    nc = effect * (np.sqrt(n_a) if n_b is None else np.sqrt(n_a * n_b / (n_a + n_b)))
    # The wrong tail is below 1e-15 here; scipy's nct.cdf gives NaN for it at one degree of freedom.
    return float(stats.nct.sf(crit, df, nc) + np.nan_to_num(stats.nct.cdf(-crit, df, nc)))


def test_power_line_of_a_paired_test_matches_the_noncentral_t(grid: Path):
    summary = build_summary([grid])
    for c in summary.comparisons:
        x, y = shared_seed_values(c.a.seed_values(), c.b.seed_values())
        d = np.subtract(x, y)
        assert c.power["std"] == pytest.approx(np.std(d, ddof=1))
        assert t_test_power(c.power["min_detectable"] / c.power["std"], len(d)) == pytest.approx(0.8, abs=1e-3)
        observed = abs(np.mean(d)) / c.power["std"]
        needed = c.power["seeds_needed"]
        assert t_test_power(observed, needed) >= 0.8 > t_test_power(observed, needed - 1)


def test_points_without_shared_seeds_get_welchs_test_and_its_power_line(tmp_path: Path):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74, 0.72])
    results = write_point(tmp_path / "1", ["head=ce"], [0.78, 0.81, 0.77, 0.79])
    for entry in results["per_seed"]:
        entry["seed"] += 10  # seeds 10..13: no seed in common with point 0
    (tmp_path / "1" / "results.json").write_text(json.dumps(results))
    sweep.write_summary(build_summary([tmp_path]), tmp_path)
    (row,) = markdown_rows((tmp_path / "summary.md").read_text(), "Significance")
    a, b = [0.70, 0.74, 0.72], [0.78, 0.81, 0.77, 0.79]
    assert row["test"] == "Welch, 3 vs 4 seeds"
    (c,) = build_summary([tmp_path]).comparisons
    assert c.test["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    pooled = np.sqrt((2 * np.var(a, ddof=1) + 3 * np.var(b, ddof=1)) / 5)
    assert c.power["std"] == pytest.approx(pooled)
    assert t_test_power(c.power["min_detectable"] / pooled, 3, 4) == pytest.approx(0.8, abs=1e-3)
    needed, observed = c.power["seeds_needed"], abs(np.mean(a) - np.mean(b)) / pooled
    assert t_test_power(observed, needed, needed) >= 0.8 > t_test_power(observed, needed - 1, needed - 1)


def test_all_pairs_on_request(grid: Path):
    summary = build_summary([grid], all_pairs=True)
    assert len(summary.comparisons) == 6
    sweep.write_summary(summary, grid)
    rows = markdown_rows((grid / "summary.md").read_text(), "Significance")
    assert "head=bce data.batch_size=32 vs head=ce data.batch_size=64" in [r["comparison"] for r in rows]
    raw = [float(c.test["p"]) for c in summary.comparisons]
    assert [c.p_holm for c in summary.comparisons] == pytest.approx(holm_by_hand(raw))


def test_failed_point_row_and_plot(tmp_path: Path):
    write_point(tmp_path / "0", ["data.batch_size=16"], [0.7, 0.72])
    write_failure(tmp_path / "1", ["data.batch_size=0"],
                  "Invalid config value data.batch_size=0: use a batch size of at least 1.\nsecond line")
    summary = build_summary([tmp_path])
    assert [p.ok for p in summary.points] == [True, False]
    sweep.write_summary(summary, tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert rows[1]["status"] == "failed"
    assert rows[1]["error"] == "Invalid config value data.batch_size=0: use a batch size of at least 1."
    assert rows[1]["test_acc_mean"] == "" and rows[1]["n_seeds"] == ""
    markdown = (tmp_path / "summary.md").read_text()
    assert "| 1 | 0 | – |" in markdown
    assert "failed: Invalid config value data.batch_size=0: use a batch size of at least 1. |" in markdown
    assert "2 points: 1 ok, 1 failed" in markdown
    assert "Fewer than two finished points" in markdown
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG_SIGNATURE)


def test_no_plot_and_no_stale_plot_when_every_point_failed(tmp_path: Path):
    (tmp_path / "summary.png").write_bytes(PNG_SIGNATURE)  # from an earlier summary
    write_failure(tmp_path / "0", ["data.batch_size=0"], "bad batch size")
    sweep.write_summary(build_summary([tmp_path]), tmp_path)
    assert not (tmp_path / "summary.png").exists()
    assert "summary.png" not in (tmp_path / "summary.md").read_text()


def test_the_newer_of_results_and_error_tells_the_state(tmp_path: Path):
    job = tmp_path / "0"
    write_point(job, ["head=ce"], [0.7, 0.8])
    write_failure(job, ["head=ce"], "Every seed diverged")
    os.utime(job / "results.json", ns=(1_000_000_000, 1_000_000_000))
    assert not points.read_point(job).ok
    os.utime(job / "error.json", ns=(1, 1))
    assert points.read_point(job).ok


def test_settings_not_overridden_come_from_the_config(tmp_path: Path):
    # A plain run (no override) against a run that changed the batch size: one setting differs.
    write_point(tmp_path / "a", [], [0.70, 0.72])
    write_point(tmp_path / "b", ["data.batch_size=64"], [0.71, 0.69])
    summary = build_summary([tmp_path / "a", tmp_path / "b"])
    assert summary.swept == ["data.batch_size"]
    assert [p.setting("data.batch_size") for p in summary.points] == ["32", "64"]
    assert [p.setting("head") for p in summary.points] == ["bce", "bce"]  # a group by its name
    assert summary.points[0].setting("optimizer.lr") == points.NOT_SET
    assert len(summary.comparisons) == 1


def test_balanced_accuracy_and_calibration_are_columns_and_an_older_point_shows_a_dash(tmp_path: Path):
    results = write_point(tmp_path / "0", ["head=bce"], [0.70, 0.80])
    fair = {"test_balanced_acc": [0.65, 0.75], "test_ece": [0.04, 0.06], "test_brier": [0.15, 0.17]}
    for key, values in fair.items():
        for entry, value in zip(results["per_seed"], values):
            entry[key] = value
        results["summary"][key] = summarize(values) | {"boot95_low": min(values), "boot95_high": max(values)}
    (tmp_path / "0" / "results.json").write_text(json.dumps(results))
    write_point(tmp_path / "1", ["head=ce"], [0.72, 0.78])  # written before the three metrics existed
    summary = build_summary([tmp_path])
    assert [p.ok for p in summary.points] == [True, True]
    sweep.write_summary(summary, tmp_path)
    new, old = read_csv(tmp_path / "summary.csv")
    assert float(new["test_balanced_acc_mean"]) == pytest.approx(0.70)
    assert float(new["test_ece_mean"]) == pytest.approx(0.05) and float(new["test_brier_boot95_high"]) == 0.17
    assert old["test_balanced_acc_mean"] == old["test_ece_mean"] == old["test_brier_std"] == ""
    markdown = (tmp_path / "summary.md").read_text()
    header, *rows = [line for line in markdown.splitlines() if line.startswith("| ")][:3]  # the points table
    cells = [dict(zip(header.split(" | "), row.split(" | "))) for row in rows]
    assert cells[0]["balanced accuracy"].startswith("70.0 ± 7.1 % seeds")
    assert cells[0]["ECE"].startswith("0.050 ± 0.014 seeds") and cells[0]["Brier score"].startswith("0.160 ± 0.014")
    assert cells[1]["balanced accuracy"] == cells[1]["ECE"] == cells[1]["Brier score"] == "–"
    assert "Lower is better for ECE and Brier score" in markdown


def test_summarize_command_compares_several_dirs(tmp_path: Path, capsys):
    write_point(tmp_path / "s1" / "0", ["head=bce"], [0.70, 0.74])
    write_point(tmp_path / "s2" / "0", ["head=ce"], [0.78, 0.81])
    out = tmp_path / "both"
    summarize_command.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(out)])
    rows = read_csv(out / "summary.csv")
    assert [(r["point"], r["head"]) for r in rows] == [("../s1/0", "bce"), ("../s2/0", "ce")]
    assert "| head=bce vs head=ce | " in capsys.readouterr().out  # the summary is printed too
    assert (out / "summary.md").is_file() and (out / "summary.png").is_file()
    assert not (tmp_path / "s1" / "summary.csv").exists()


def test_summarize_command_defaults_to_the_first_dir(tmp_path: Path):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    summarize_command.main([str(tmp_path)])
    assert len(read_csv(tmp_path / "summary.csv")) == 1


@pytest.mark.parametrize("make_dir", [True, False])
def test_summarize_command_without_results_exits_2(tmp_path: Path, capsys, make_dir: bool):
    target = tmp_path / "sweep"
    if make_dir:
        target.mkdir()
    with pytest.raises(SystemExit) as exc:
        summarize_command.main([str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pneumolab-summarize: error: ") and str(target) in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_callback_writes_the_summary_and_flags_failures(tmp_path: Path):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    write_failure(tmp_path / "1", ["head=ce"], "boom")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep.SweepSummaryCallback().on_multirun_end(config)
    assert {"summary.csv", "summary.md", "summary.png"} <= {p.name for p in tmp_path.iterdir()}
    assert [row["status"] for row in read_csv(tmp_path / "summary.csv")] == ["ok", "failed"]


def compose_hydra(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes():
    launcher = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.pneumolab_slurm.slurm_launcher.SlurmLauncher"
    assert launcher.partition == "gpu"
    assert (launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb) == (1, 0, 4)
    assert launcher.timeout_min > 0 and launcher.array_parallelism > 0


def test_optuna_search_space():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, IntUniformDistribution, LogUniformDistribution

    hydra_cfg = compose_hydra(["hparams_search=optuna"]).hydra
    sweeper = hydra_cfg.sweeper
    assert hydra_cfg.mode == RunMode.MULTIRUN  # `-m` may be left out
    assert sweeper.direction == "maximize" and sweeper.n_trials == 20
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed is not None
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert fixed == {}
    assert space["optimizer.lr"] == LogUniformDistribution(1e-5, 1e-2)
    assert space["data.batch_size"] == CategoricalDistribution([32, 64, 128])
    assert space["scheduler.step_size"] == IntUniformDistribution(3, 20)


@pytest.mark.parametrize("content, reason", [
    ('{"per_seed": [{"test_acc": 0.7', "results.json is not valid JSON"),
    ("[1, 2, 3]", "results.json holds a JSON list"),
    ('{"per_seed": [], "config": {}}', "results.json has no summary"),
    ('{"per_seed": [{"seed": 0}], "summary": {}}', "results.json has no per_seed list"),
])
def test_a_malformed_results_json_is_a_failed_point(tmp_path: Path, capsys, content: str, reason: str):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(content)
    with pytest.raises(SystemExit) as exc:
        summarize_command.main([str(tmp_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"failed point 1: {reason}" in err
    rows = read_csv(tmp_path / "summary.csv")
    assert [(r["point"], r["status"]) for r in rows] == [("0", "ok"), ("1", "failed")]
    assert rows[1]["error"].startswith(reason) and "re-run this point" in rows[1]["error"]


def test_a_folder_holding_only_a_garbage_results_json_is_one_failed_point(tmp_path: Path, capsys):
    (tmp_path / "results.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(SystemExit) as exc:
        summarize_command.main([str(tmp_path)])
    assert exc.value.code == 1
    assert "1 point: 0 ok, 1 failed." in capsys.readouterr().out
    assert "| results.json is not valid JSON" in (tmp_path / "summary.md").read_text().replace("failed: ", "| ")


def test_the_end_of_sweep_summary_counts_a_malformed_point_as_failed(tmp_path: Path):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text('{"config": {}}')
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweep.SweepSummaryCallback().on_multirun_end(config)
    assert [row["status"] for row in read_csv(tmp_path / "summary.csv")] == ["ok", "failed"]


GRID_KEYS = {"head": ["bce", "ce"], "data.batch_size": [16, 32, 64, 128, 256], "optimizer.lr": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1],
             "scheduler.step_size": [3, 5, 10, 20], "model.dropout": [0.0, 0.1, 0.2, 0.3, 0.5]}


@pytest.fixture(scope="module")
def big_grid(tmp_path_factory) -> tuple[Path, dict[str, list[float]]]:
    """1,000 points over five keys, accuracy = a known effect per key + seed noise; one point failed."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    effect = {"head": {"bce": 0.0, "ce": 0.02}, "data.batch_size": {16: -0.01, 32: 0.0, 64: 0.01, 128: 0.02, 256: 0.0}}
    means = {}
    for num, values in enumerate(itertools.product(*GRID_KEYS.values())):
        setting = dict(zip(GRID_KEYS, values))
        overrides = [f"{k}={v}" for k, v in setting.items()]
        if num == 999:
            (root / str(num)).mkdir()
            (root / str(num) / "error.json").write_text(json.dumps({"config": {}, "overrides": overrides, "error": "boom"}))
            continue
        base = 0.7 + sum(effect.get(k, {}).get(v, 0.0) for k, v in setting.items())
        accs = list(base + rng.normal(0, 0.01, 3))
        config = config_for([])
        for k, v in setting.items():
            set_in(config, k, v if k != "head" else {"name": v})
        results = write_point(root / str(num), [], accs)
        results.update(config=config, overrides=overrides)
        (root / str(num) / "results.json").write_text(json.dumps(results))
        means[str(num)] = float(np.mean(accs))
    return root, means


@pytest.mark.slow
def test_a_thousand_point_grid_leads_with_the_best_points_and_main_effects(big_grid):
    root, means = big_grid
    summary = build_summary([root])
    assert len(summary.points) == 1000 and summary.swept == list(GRID_KEYS)
    sweep.write_summary(summary, root)
    markdown = (root / "summary.md").read_text()
    assert len(markdown) < 30_000  # not one row per point: summary.csv has those
    assert len(read_csv(root / "summary.csv")) == 1000
    leaders = markdown_rows(markdown, "The best 10 points by mean test accuracy")
    best = sorted(means, key=lambda n: -means[n])[:10]
    assert [r["point"] for r in leaders] == best
    assert "seeds [" in leaders[0]["test accuracy"]
    batch = markdown.split("### `data.batch_size`\n\n")[1].split("\n\n")[0].splitlines()
    batch_rows = {line.split(" | ")[0].strip("| "): line for line in batch[2:]}
    for size in (16, 128):
        expected = np.mean([m for n, m in means.items() if f"data.batch_size={size}" in
                            " ".join(json.loads((root / n / "results.json").read_text())["overrides"])])
        assert f"| {100 * expected:.1f} % |" in batch_rows[str(size)]
    # The tests: best against the next nine, Holm-adjusted together.
    rows = markdown_rows(markdown, "Significance")
    assert len(rows) == 9 and all(r["points"].startswith(f"{best[0]} vs ") for r in rows)
    assert "failed: boom" not in markdown and "- 999 (" in markdown  # the failed point is listed
    assert (root / "summary.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_a_thousand_point_grid_with_all_pairs_tests_the_leaders(big_grid):
    root, _ = big_grid
    assert len(build_summary([root], all_pairs=True).comparisons) == 45


def test_the_end_of_a_large_sweep_names_its_tests_table_instead_of_printing_them(tmp_path: Path, caplog):
    for i, head_bs in enumerate([(h, b) for h in ("bce", "ce") for b in (32, 64, 128)]):
        write_point(tmp_path / str(i), [f"head={head_bs[0]}", f"data.batch_size={head_bs[1]}"], [0.70 + i / 100, 0.72])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback = sweep.SweepSummaryCallback()
    callback.on_multirun_start(config)
    with caplog.at_level("INFO", logger="pneumolab"):
        callback.on_multirun_end(config)
    lines = [r.getMessage() for r in caplog.records]
    assert not any(" vs " in line for line in lines)
    assert f"9 comparisons of test accuracy: see the significance table of {tmp_path / 'summary.md'}" in lines
    assert "p (Holm)" in (tmp_path / "summary.md").read_text()


# --- comparisons name what really differs: resolved configs, key by key ------------------------


def write_run(job_dir: Path, config: dict, overrides: list[str], accs: list[float], aucs: list[float] | None = None,
              confusion: list | None = None) -> dict:
    """A run with a resolved config of its own (as `pneumolab experiment=...` writes it)."""
    results = write_point(job_dir, [], accs)
    results["overrides"] = overrides
    for entry, auc in zip(results["per_seed"], aucs or []):
        entry["test_auc"] = auc
    for entry in results["per_seed"]:
        entry["test_confusion"] = confusion
    results["summary"] = {key: summarize([e[key] for e in results["per_seed"]]) for key in SUMMARY_KEYS
                          if key in results["per_seed"][0]}
    results["config"] = config
    (job_dir / "results.json").write_text(json.dumps(results))
    return results


DEFAULT_RESOLVED = {
    "model": {"name": "mlp", "hidden_sizes": [128, 128, 128], "dropout": 0.0},
    "head": {"name": "bce", "class_weights": "none"},
    "data": {"name": "phantom", "batch_size": 32, "cache_dir": "/home/a/.cache"},
    "optimizer": {"name": "adam", "lr": 0.001},
    "scheduler": {"name": "step", "step_size": 10, "gamma": 0.1},
    "trainer": {"epochs": 30, "seeds": [0, 1, 2], "threads": None},
    "logger": {"name": "none"},
    "tag": None,
}


def resolved(**changes) -> dict:
    config = json.loads(json.dumps(DEFAULT_RESOLVED))
    for key, value in changes.items():
        set_in(config, key.replace("__", "."), value)
    return config


def test_an_experiment_that_changes_three_keys_is_three_differences(tmp_path: Path, capsys):
    write_run(tmp_path / "a", resolved(), [], [0.70, 0.72, 0.71])
    # experiment=...: head, lr and batch size change; so do labels and things that are no setting.
    write_run(tmp_path / "b", resolved(head={"name": "ce", "class_weights": "none"}, optimizer__lr=1e-6,
                                       data__batch_size=128, tag="fig7_ce_combo", trainer__seeds=[0, 1, 2, 3, 4],
                                       data__cache_dir="/scratch/cache", report_figure={"figure": 7}),
              ["experiment=report/fig7_ce_combo", "trainer.seeds=5"], [0.80, 0.83, 0.81])
    summary = build_summary([tmp_path / "a", tmp_path / "b"])
    assert summary.swept == ["head", "data.batch_size", "optimizer.lr"]  # not trainer.seeds, tag, cache_dir
    assert summary.labels == ("experiment", "trainer.seeds")
    assert summary.comparisons == []
    summarize_command.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")])
    out = capsys.readouterr().out
    assert "The two points differ in 3 settings (`head`, `data.batch_size`, `optimizer.lr`), not one" in out
    assert "exactly one setting" not in out.split("## Significance")[1].split("\n\n")[2]
    rows = read_csv(tmp_path / "ab" / "summary.csv")
    assert [(r["experiment"], r["head"], r["optimizer.lr"]) for r in rows] == [
        ("(not set)", "bce", "0.001"), ("report/fig7_ce_combo", "ce", "1e-06")]
    # --all-pairs still tests them, naming all three differences.
    summary = build_summary([tmp_path / "a", tmp_path / "b"], all_pairs=True)
    (comparison,) = summary.comparisons
    assert comparison.differing == ("head", "data.batch_size", "optimizer.lr")


def test_exactly_one_resolved_key_differs_whatever_was_typed(tmp_path: Path):
    # A plain run against an experiment that changes only the head (and its tag): one setting, one test.
    write_run(tmp_path / "a", resolved(), [], [0.70, 0.72, 0.71])
    write_run(tmp_path / "b", resolved(head={"name": "ce", "class_weights": "none"}, tag="fig2_ce",
                                       trainer__seeds=[0, 1, 2, 3]), ["experiment=report/fig2_ce"], [0.74, 0.75, 0.73])
    summary = build_summary([tmp_path / "a", tmp_path / "b"])
    (comparison,) = summary.comparisons
    assert comparison.differing == ("head",) and summary.swept == ["head"]
    # Both ran seeds 0, 1, 2 (b's trainer.seeds is a label, never a difference): paired on them.
    expected = stats.ttest_rel([0.70, 0.72, 0.71], [0.74, 0.75, 0.73]).pvalue
    assert comparison.test["kind"] == "paired" and comparison.test["p"] == pytest.approx(expected, rel=1e-9)


def test_a_config_group_option_is_one_difference_with_the_keys_it_brings(tmp_path: Path):
    cnn = {"name": "cnn", "channels": [16, 32], "dropout": 0.0}
    write_run(tmp_path / "0", resolved(), ["model=mlp"], [0.70, 0.72])
    write_run(tmp_path / "1", resolved(model=cnn), ["model=cnn"], [0.74, 0.75])
    # The same option with a typed key: that key is a difference of its own.
    write_run(tmp_path / "2", resolved(model={**cnn, "dropout": 0.5}), ["model=cnn", "model.dropout=0.5"], [0.73, 0.76])
    summary = build_summary([tmp_path])
    assert summary.swept == ["model", "model.dropout"]  # not model.hidden_sizes or model.channels
    assert [(c.a.job_dir.name, c.b.job_dir.name, c.differing) for c in summary.comparisons] == [
        ("0", "1", ("model",)), ("1", "2", ("model.dropout",))]  # 0 vs 2: model and dropout, untested
    assert points.differing_keys(summary.points[0], summary.points[2], summary.swept) == ("model", "model.dropout")


# --- every summary metric can be compared: --metric ---------------------------------------------


def test_summarize_metric_auc_gives_scipys_paired_p_on_the_per_seed_aucs(tmp_path: Path, capsys):
    mlp_auc, cnn_auc = [0.861, 0.866, 0.858, 0.870, 0.863], [0.884, 0.889, 0.887, 0.892, 0.884]
    write_run(tmp_path / "0", resolved(), ["model=mlp"], [0.86, 0.87, 0.86, 0.87, 0.86], mlp_auc)
    write_run(tmp_path / "1", resolved(model={"name": "cnn", "channels": [16, 32]}), ["model=cnn"],
              [0.88, 0.87, 0.89, 0.88, 0.88], cnn_auc)
    summarize_command.main([str(tmp_path), "--metric", "test_auc"])
    markdown = capsys.readouterr().out
    assert "A t-test over seeds on AUC (`test_auc`;" in markdown
    (row,) = markdown_rows(markdown, "Significance")
    expected = stats.ttest_rel(mlp_auc, cnn_auc).pvalue
    assert row["comparison"] == "model=mlp vs model=cnn"
    assert row["difference"] == f"{np.mean(mlp_auc) - np.mean(cnn_auc):+.3f}" == "-0.024"  # a fraction, not pt
    assert expected < 0.001 and row["p"] == "< 0.001"
    (comparison,) = build_summary([tmp_path], metric="test_auc").comparisons
    assert comparison.test["p"] == pytest.approx(expected, rel=1e-9)
    line = summary_md.describe_comparison(comparison, tmp_path)
    assert line.startswith("model=mlp vs model=cnn: AUC -0.024, paired p < 0.001, significant")


@pytest.mark.parametrize("metric", ["test_sensitivity", "test_specificity", "test_balanced_acc"])
def test_summarize_metric_choices_come_from_the_metric_table(tmp_path: Path, metric: str):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    results = json.loads((tmp_path / "0" / "results.json").read_text())
    assert metric in results["summary"] or metric == "test_balanced_acc"
    summarize_command.main([str(tmp_path), "--metric", metric])
    assert f"(`{metric}`;" in (tmp_path / "summary.md").read_text()


def test_summarize_rejects_an_unknown_metric(tmp_path: Path, capsys):
    write_point(tmp_path / "0", ["head=bce"], [0.70, 0.74])
    with pytest.raises(SystemExit) as exc:
        summarize_command.main([str(tmp_path), "--metric", "accuracy"])
    assert exc.value.code == 2 and "test_auc" in capsys.readouterr().err


# --- one unit: percent with one decimal, p-values as p < 0.001 / p = 0.012 ----------------------


def test_p_values_read_as_a_person_writes_them():
    assert summary_md.p_phrase(0.0006) == "p < 0.001" and summary_md.p_phrase(0.0123) == "p = 0.012"
    assert summary_md.p_phrase(0.0481, "Holm p") == "Holm p = 0.048" and summary_md.p_phrase(None) == "p: no test"
    assert summary_md.p_text(0.0006) == "< 0.001" and summary_md.p_text(0.5) == "0.500"  # table cells
    assert summary_md.diff_text("test_acc", 0.0123) == "+1.2 pt" and summary_md.diff_text("test_auc", -0.0234) == "-0.023"


def test_the_end_of_sweep_log_line_states_p_without_an_equals_before_less_than(grid: Path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(grid)}}})
    callback = sweep.SweepSummaryCallback()
    callback.on_multirun_start(config)
    with caplog.at_level("INFO", logger="pneumolab"):
        callback.on_multirun_end(config)
    lines = [r.getMessage() for r in caplog.records if " vs " in r.getMessage()]
    assert len(lines) == 4
    pattern = re.compile(r"^.+ vs .+: test accuracy [+-]\d+\.\d pt, paired p (< 0\.001|= \d\.\d{3})"
                         r"(, Holm p (< 0\.001|= \d\.\d{3}))?, (not )?significant \(points \d+ and \d+\)$")
    assert all(pattern.match(line) for line in lines), lines
    assert not any("= <" in line for line in lines)


def test_summary_png_measures_accuracy_against_always_answering_pneumonia(tmp_path: Path, monkeypatch):
    confusion = [[0, 234], [0, 390]]  # the Kaggle test split: 390 pneumonia of 624
    write_run(tmp_path / "0", resolved(), ["model=mlp"], [0.76, 0.77], confusion=confusion)
    write_run(tmp_path / "1", resolved(model={"name": "cnn"}), ["model=cnn"], [0.78, 0.79], confusion=confusion)
    summary = build_summary([tmp_path])
    assert points.all_pneumonia_rate(summary.points[0].results) == pytest.approx(390 / 624)
    drawn = {}
    monkeypatch.setattr("pneumolab.outputs.plots.plot_summary", lambda plotted, path, *args, **kw: drawn.update(kw, points=plotted))
    sweep.plot_points(summary, tmp_path)
    assert drawn["reference"] == [(pytest.approx(0.625), "always answering pneumonia (test set): 62.5 %")]
    assert [p["x"] for p in drawn["points"]] == ["mlp", "cnn"] and drawn["metric"].key == "test_acc"
    assert {"boot_low", "boot_high"} <= drawn["points"][0].keys()


def test_points_of_many_differences_are_plotted_as_categories_named_by_their_experiment(tmp_path: Path, monkeypatch):
    settings = {"report/fig1_bce": resolved(),
                "report/fig4_ce_bs128": resolved(head={"name": "ce"}, data__batch_size=128),
                "report/fig7_ce_combo": resolved(head={"name": "ce"}, data__batch_size=128, optimizer__lr=1e-6)}
    for num, (name, config) in enumerate(settings.items()):
        write_run(tmp_path / str(num), config, [f"experiment={name}"], [0.75 + num / 100, 0.76])
    summary = build_summary([tmp_path])
    assert summary.swept == ["head", "data.batch_size", "optimizer.lr"] and summary.labels == ("experiment",)
    drawn = {}
    monkeypatch.setattr("pneumolab.outputs.plots.plot_summary",
                        lambda plotted, path, x_key, *args, **kw: drawn.update(kw, x_key=x_key, points=plotted))
    sweep.plot_points(summary, tmp_path)
    assert drawn["x_key"] == "experiment" and [p["x"] for p in drawn["points"]] == list(settings)
    # fig4 vs fig7 differ in the learning rate alone: the one test.
    assert [(c.a.job_dir.name, c.b.job_dir.name, c.differing) for c in summary.comparisons] == [("1", "2", ("optimizer.lr",))]


# --- seeds shared across points and sweeps: paired tests, each question once ---------------------------


def test_a_3_seed_and_a_5_seed_sweep_test_each_question_once_paired_on_the_5_seeds(tmp_path: Path):
    """Two sweeps of head x batch size, trainer.seeds=3 and 5: seeds 0-2 are the same runs in both. Each of the
    4 questions is tested once, paired on the 5-seed points; the 12 cross-sweep pairs that ask them again are
    left out, so Holm adjusts over 4 tests, not 16."""
    accs = {("bce", 32): [0.70, 0.74, 0.72, 0.71, 0.73], ("ce", 32): [0.73, 0.76, 0.74, 0.74, 0.75],
            ("bce", 64): [0.69, 0.75, 0.70, 0.72, 0.71], ("ce", 64): [0.71, 0.74, 0.73, 0.70, 0.74]}
    for n_seeds in (3, 5):
        for i, ((head, batch), values) in enumerate(accs.items()):
            write_run(tmp_path / f"seeds{n_seeds}" / str(i),
                      resolved(head={"name": head, "class_weights": "none"}, data__batch_size=batch,
                               trainer__seeds=list(range(n_seeds))),
                      [f"head={head}", f"data.batch_size={batch}", f"trainer.seeds={n_seeds}"], values[:n_seeds])
    summary = build_summary([tmp_path / "seeds3", tmp_path / "seeds5"])
    assert summary.swept == ["head", "data.batch_size"] and "trainer.seeds" in summary.labels
    assert all(c.a.job_dir.parent.name == c.b.job_dir.parent.name == "seeds5" for c in summary.comparisons)
    assert [(c.a.job_dir.name, c.b.job_dir.name) for c in summary.comparisons] == [("0", "1"), ("0", "2"),
                                                                                   ("1", "3"), ("2", "3")]
    assert len(summary.repeats) == 12
    keys = list(accs)
    raw = [stats.ttest_rel(accs[keys[i]], accs[keys[j]]).pvalue for i, j in ((0, 1), (0, 2), (1, 3), (2, 3))]
    assert [c.test["p"] for c in summary.comparisons] == pytest.approx(raw, rel=1e-9)
    assert [c.p_holm for c in summary.comparisons] == pytest.approx(holm_by_hand(raw), rel=1e-9)
    assert all(c.test["kind"] == "paired" and c.test["seeds"] == [0, 1, 2, 3, 4] for c in summary.comparisons)
    sweep.write_summary(summary, tmp_path)
    markdown = (tmp_path / "summary.md").read_text()
    assert [row["test"] for row in markdown_rows(markdown, "Significance")] == ["paired, 5 seeds"] * 4
    assert "Not tested, as repeats (seeds3/0 vs seeds3/1, seeds3/0 vs seeds3/2, " in markdown
    # --all-pairs never tests a point against a run of the same settings.
    every = build_summary([tmp_path / "seeds3", tmp_path / "seeds5"], all_pairs=True)
    assert len(every.comparisons) == 6 and all(c.differing for c in every.comparisons)


def test_a_3_seed_point_against_a_5_seed_one_is_paired_on_seeds_0_to_2(tmp_path: Path):
    bce, ce = [0.70, 0.76, 0.73], [0.72, 0.781, 0.749, 0.71, 0.77]
    write_run(tmp_path / "0", resolved(), ["head=bce"], bce)
    write_run(tmp_path / "1", resolved(head={"name": "ce", "class_weights": "none"}, trainer__seeds=list(range(5))),
              ["head=ce", "trainer.seeds=5"], ce)
    summary = build_summary([tmp_path])
    (c,) = summary.comparisons
    assert c.differing == ("head",) and summary.labels == ("trainer.seeds",)
    assert c.test["p"] == pytest.approx(stats.ttest_rel(bce, ce[:3]).pvalue, rel=1e-9)
    assert c.test["diff"] == pytest.approx(np.mean(bce) - np.mean(ce[:3]))
    sweep.write_summary(summary, tmp_path)
    (row,) = markdown_rows((tmp_path / "summary.md").read_text(), "Significance")
    assert row["test"] == "paired, 3 seeds (2 not on both sides left out)" and row["p"] == "< 0.001"


def test_summary_md_says_why_a_point_has_no_test_set_interval(tmp_path: Path):
    note = "only 8 NORMAL and 8 PNEUMONIA test images (fewer than 10 per class): too few for a bootstrap interval"
    for num, head in (("0", "bce"), ("1", "ce")):
        results = write_point(tmp_path / num, [f"head={head}"], [0.70, 0.74])
        for key in ("test_acc", "test_auc"):
            results["summary"][key].update(boot95_low=None, boot95_high=None, boot95_note=note)
        results["summary"]["test_sensitivity"].update(boot95_low=0.6, boot95_high=0.8, boot95_note=None)
        (tmp_path / num / "results.json").write_text(json.dumps(results))
    sweep.write_summary(build_summary([tmp_path]), tmp_path)
    markdown = (tmp_path / "summary.md").read_text()
    table = markdown.split("| point |", 1)[1]
    assert table.count("no test-set interval†") == 4  # accuracy and AUC of both points
    assert "test set [60.0, 80.0]" in table
    assert f"† No test-set interval: {note} (points 0 and 1)." in markdown
