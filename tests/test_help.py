"""`pneumolab --help` is pneumolab's own page, with true defaults; `--version` is pneumolab's."""

from __future__ import annotations

import re
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pneumolab
from conftest import pneumolab_command, subprocess_env
from pneumolab.config import config_dir
from pneumolab.config import register_configs

KEY_LINE = re.compile(r"^  ([a-z_]+\.[a-z_.]+)=(\S+)\s+(.*)$")
GROUP_LINE = re.compile(r"^  ([a-z_]+):\s+(.*)$")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *args], capture_output=True, text=True, env=subprocess_env(),
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def help_text() -> str:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    return out.stdout


def groups_of(text: str) -> dict[str, list[str]]:
    section = text.split("== Groups")[1].split("\n", 1)[1].split("\n== ")[0]
    groups, current = {}, None
    for line in section.splitlines():
        match = GROUP_LINE.match(line)
        if match:
            current = match.group(1)
            groups[current] = []
        if current and line.strip():
            tail = match.group(2) if match else line
            groups[current] += [o.strip() for o in tail.split(",") if o.strip()]
    return groups


@pytest.mark.slow
def test_help_is_pneumolabs_page(help_text):
    assert help_text.startswith("pneumolab: ")
    assert "powered by Hydra" not in help_text and "schema_" not in help_text
    assert "pneumolab -m data.batch_size=32,64,128" in help_text
    assert "outputs/runs/" in help_text and "outputs/multirun/" in help_text and "summary.md" in help_text


@pytest.mark.slow
def test_help_lists_every_selectable_option_and_marks_the_defaults(help_text):
    groups = groups_of(help_text)
    assert groups["head"] == ["bce*", "ce"]
    assert "report/fig1_bce" in groups["experiment"] and "report_settings" not in groups["experiment"]
    assert "smoke" in groups["debug"] and "mlp*" in groups["model"]
    assert all("*" not in o for o in groups["experiment"])  # no experiment by default
    assert groups_of(run("head=ce", "--help").stdout)["head"] == ["bce", "ce*"]


@pytest.mark.slow
def test_help_shows_config_dir_additions(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n")
    assert "mine" in groups_of(run("--config-dir", str(tmp_path), "--help").stdout)["experiment"]


def composed(overrides: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides))


@pytest.mark.slow
def test_every_default_on_the_help_page_is_the_configs_default(help_text):
    lines = [KEY_LINE.match(line) for line in help_text.split("== Main keys")[1].split("\n== ")[0].splitlines()]
    keys = [m for m in lines if m]
    assert len(keys) >= 10
    for match in keys:
        key, shown, description = match.groups()
        if shown.isupper():  # a placeholder: data.root=PATH
            continue
        group = re.search(r"\((\w+=\w+)\)$", description)
        value = composed([group.group(1)] if group else [])
        for part in key.split("."):
            value = value[part]
        assert shown == as_typed(value), key


def as_typed(value) -> str:
    """A config value as the command line writes it: [128,128,128], null, 0.001."""
    if isinstance(value, list):
        return "[" + ",".join(as_typed(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_version_is_pneumolabs():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pneumolab {pneumolab.__version__}"
