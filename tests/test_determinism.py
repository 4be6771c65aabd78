"""Seeds make runs repeatable: same seed, same numbers; another seed, other numbers.

tests/test_cli.py checks that one command run twice gives identical results.json
numbers, and tests/test_sweep_cli.py that every launcher does.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import pneumolab_command, subprocess_env
from test_bad_input import run_in_process

pytestmark = pytest.mark.slow  # repeated trainings and a child interpreter

TINY = ["trainer.epochs=2", "data.limit_per_class=40"]


def per_seed(job: Path) -> list[dict]:
    return json.loads((job / "results.json").read_text())["per_seed"]


def train_losses(job: Path) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    with open(job / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            losses.setdefault(int(row["seed"]), []).append(float(row["train_loss"]))
    return losses


def test_different_seeds_train_differently(tmp_path, restore_torch_state):
    run_in_process([*TINY, "trainer.seeds=[0,1]"], tmp_path / "run")
    losses = train_losses(tmp_path / "run")
    assert losses[0] != losses[1]


def test_the_deterministic_switch_leaves_cpu_numbers_unchanged(tmp_path, restore_torch_state):
    # CPU kernels are deterministic already; the switch exists for CUDA and must cost nothing here.
    run_in_process([*TINY, "trainer.seeds=[1]", "trainer.deterministic=false"], tmp_path / "off")
    run_in_process([*TINY, "trainer.seeds=[1]", "trainer.deterministic=true"], tmp_path / "on")
    assert per_seed(tmp_path / "on") == per_seed(tmp_path / "off")
    assert train_losses(tmp_path / "on") == train_losses(tmp_path / "off")


# Runs in a fresh interpreter: the switch is process-wide, and CUBLAS_WORKSPACE_CONFIG must
# start unset, as it would for a user.
CONFIGURE_TORCH = """
import os, sys, torch
from hydra import compose, initialize_config_dir
from pneumolab.config import config_dir
from pneumolab.engine.train import configure_torch
from pneumolab.config import register_configs, to_settings

def subnormals_flushed():
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


register_configs()
print("before", subnormals_flushed())
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    for value in sys.argv[1:]:
        configure_torch(to_settings(compose("config", overrides=[f"trainer.deterministic={value}"])))
        print(value, torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
              torch.cuda.is_initialized(), subnormals_flushed(), torch.get_num_threads())
"""


def test_configure_torch_sets_the_switches_before_cuda_starts():
    env = subprocess_env()
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", CONFIGURE_TORCH, "false", "true", "false"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.splitlines() == [
        "before False",
        # Every job also flushes subnormal floats (they slow early epochs down) and trains on one thread.
        "false False None False True 1",
        "true True :4096:8 False True 1",
        # A later job of the same sweep process that does not ask for it gets the fast kernels back.
        "false False :4096:8 False True 1",
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deterministic_cuda_runs_repeat_bitwise(tmp_path):
    for name in ("a", "b"):
        proc = subprocess.run(
            [*pneumolab_command(), *TINY, "trainer.seeds=[0,1]", "trainer.device=cuda", "trainer.deterministic=true",
             f"hydra.run.dir={tmp_path / name}"],
            cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    assert per_seed(tmp_path / "a") == per_seed(tmp_path / "b")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
