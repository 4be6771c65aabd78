"""The command line is checked before Hydra composes it: typos stop with a suggestion, paths take ~."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pneumolab_command, subprocess_env
from pneumolab.config import config_dir
from pneumolab.config import register_configs
from pneumolab.errors import PneumolabError
from pneumolab.cli.overrides import check_command_line, rewrite_path_args


@pytest.fixture(autouse=True, scope="module")
def _schemas():
    register_configs()


def check(*args: str) -> list[str]:
    return check_command_line(list(args), config_dir())


def refusal(*args: str) -> str:
    with pytest.raises(PneumolabError) as caught:
        check(*args)
    return str(caught.value)


@pytest.mark.parametrize("arg", ["data.batchsize=64", "+data.batchsize=64", "++data.batchsize=64"])
def test_unknown_key_with_or_without_plus_names_the_closest_key(arg):
    message = refusal(arg)
    assert "Unknown config key data.batchsize" in message and "Did you mean data.batch_size?" in message
    assert "\n" not in message


def test_key_typos_elsewhere_get_their_closest_key():
    assert "Did you mean trainer.epochs?" in refusal("trainer.epoch=3")
    assert "Did you mean data.batch_size?" in refusal("batch_size=64")
    assert "Did you mean data.limit_per_class?" in refusal("~data.limit_per_clas")
    assert "Did you mean head?" in refusal("heads=ce")
    # A shared `model.` prefix alone is no suggestion; the node's keys are listed instead.
    message = refusal("model.width=32")
    assert "Did you mean" not in message and "The keys of model are: " in message and "hidden_sizes" in message


def test_group_option_typos_and_internal_options_are_refused():
    assert "Did you mean head=bce?" in refusal("head=bcee")
    assert "Did you mean head=ce?" in refusal("-m", "head=bce,cee")
    assert "Did you mean experiment=report/fig1_bce?" in refusal("experiment=report/fig1_bc")
    assert "Did you mean hydra/launcher=joblib?" in refusal("-m", "hydra/launcher=jobblib")
    for arg in ("head=schema_head", "experiment=report_settings", "data=schema_folder"):
        message = refusal(arg)
        assert "not a choice of its own" in message and "schema_" not in message.split("The options")[1]


def test_valid_command_lines_pass_unchanged():
    args = ["-m", "head=bce,ce", "data.batch_size=32,64", "experiment=report/fig7_ce_combo", "trainer.epochs=2",
            "hparams_search=optuna", "hydra.sweeper.n_trials=3", "+tag=mine", "trainer.seeds=[0,1]", "--cfg", "job"]
    assert check(*args) == args
    assert check("scheduler=cosine", "scheduler.t_max=5", "optimizer=sgd", "optimizer.momentum=0.5") != []


def test_custom_models_take_extra_keys_with_a_plus_only():
    assert check("model=custom", "model._target_=mynets.Tiny", "+model.width=32")
    assert "+model.width=32" in refusal("model=custom", "model._target_=mynets.Tiny", "model.width=32")
    assert "Unknown config key model.width" in refusal("model=mlp", "+model.width=32")


def test_config_dir_options_are_known(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndata:\n  batch_size: 64\n")
    assert check("--config-dir", str(tmp_path), "experiment=mine")
    assert "Did you mean experiment=mine?" in refusal(f"--config-dir={tmp_path}", "experiment=mnie")
    assert "does not exist" in refusal("--config-dir", str(tmp_path / "nowhere"), "head=ce")


def test_unparsable_override_shows_the_quoted_form():
    message = refusal("tag=a(b")
    assert "'tag=\"a(b\"'" in message and "\n" not in message


def test_path_overrides_expand_home_and_quote(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert rewrite_path_args(["data.root=~/chest_xray"]) == [f"data.root='{tmp_path}/chest_xray'"]
    assert rewrite_path_args(["-m", "data.root=~/a,rel/b"]) == ["-m", f"data.root='{tmp_path}/a','rel/b'"]
    assert rewrite_path_args(["hydra.sweep.dir=~/s(1)", "+data.cache_dir=~"]) == [
        f"hydra.sweep.dir='{tmp_path}/s(1)'", f"+data.cache_dir='{tmp_path}'"]
    # Values Hydra already reads as something else stay as typed.
    kept = ["data.path=null", "data.root='~/x'", "data.root=glob(*)", "data.batch_size=3", "data.rooty=~/x"]
    assert rewrite_path_args(kept) == kept
    assert rewrite_path_args(["--config-dir=~/c", "-cd", "~/d"]) == [f"--config-dir={tmp_path}/c", "-cd", f"{tmp_path}/d"]
    assert rewrite_path_args(["data.root=it's"]) == ["data.root='it\\'s'"]


def test_the_check_does_not_import_torch():
    code = ("import sys; from pneumolab.config import config_dir; from pneumolab.config import register_configs; "
            "from pneumolab.cli.overrides import check_command_line; register_configs(); "
            "check_command_line(['head=ce', 'data=folder', 'data.root=~/x'], config_dir()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def run_pneumolab(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arg", ["+data.batchsize=64", "head=schema_head", "experiment=report_settings"])
def test_a_refused_command_line_exits_2_before_anything_runs(tmp_path, arg):
    run = run_pneumolab([arg], tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("pneumolab: error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_folder_root_with_tilde_runs_as_typed(tmp_path, shared_xray):
    home = tmp_path / "home"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (home / "xray" / split / cls).mkdir(parents=True)
            for image in sorted((shared_xray / split / cls).iterdir())[:6]:
                shutil.copy(image, home / "xray" / split / cls)
    env = subprocess_env() | {"HOME": str(home)}
    run = run_pneumolab(["data=folder", "data.root=~/xray", "debug=smoke", "hydra.run.dir=~/run"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    results = json.loads((home / "run" / "results.json").read_text())
    assert results["config"]["data"]["root"] == str(home / "xray")
    assert len(results["per_seed"]) == 2 and results["config"]["trainer"]["epochs"] == 2
    assert not (tmp_path / "~").exists()  # no literal ~ folder
