"""Requests that cannot fit in memory stop before anything is rendered or decoded, with the estimate
and the limit; requests that fit are not refused.

The estimate is checked against what loading really allocates, and the limit readers against
real cgroup files and this machine's /proc/meminfo.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import pneumolab_command, subprocess_env
from pneumolab.cli import guards
from pneumolab.config import PhantomDataConfig
from pneumolab.data.load import load_data, plan_data


@pytest.mark.slow
def test_a_phantom_too_large_for_memory_is_refused_with_the_estimate(tmp_path):
    proc = subprocess.run([*pneumolab_command(), "data.image_size=5000", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    # 5856 images of 5000 x 5000 uint8 pixels; the MLP's first layer alone is 25e6 x 128 weights per seed.
    assert "Training 5 seed(s) on 5856 images of 5000x5000 px needs about" in line
    assert "images 146.4 GB" in line and "model training state 256.0 GB" in line
    # The limit moves with the machine's load; its source does not.
    _, source = guards.available_memory()
    assert re.search(rf"but only [0-9.]+ [kMGT]?B is available \({re.escape(source)}\)", line), line
    assert "Lower the image size" in line
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_plan_matches_what_loading_allocates():
    cfg = PhantomDataConfig(image_size=20, n_train=30, n_val=10, n_test=12)
    plan, data = plan_data(cfg), load_data(cfg)
    assert plan.n_images == sum(len(s) for s in data.splits().values())
    assert plan.n_images * plan.image_shape[0] * plan.image_shape[1] == sum(
        s.images.numel() * s.images.element_size() for s in data.splits().values())


def test_meminfo_is_read():
    room, source = guards.available_memory()
    assert room is not None and room > 0 and source
    with open("/proc/meminfo") as fh:
        total_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert room <= total_kb * 1024


@pytest.mark.parametrize(("limit", "used", "room"), [("max", "123", None), ("1000000", "250000", 750000),
                                                     (str(2**63 - 4096), "5", None)])
def test_cgroup_limits_are_read_from_their_files(tmp_path, limit, used, room):
    (tmp_path / "memory.max").write_text(f"{limit}\n")
    (tmp_path / "memory.current").write_text(f"{used}\n")
    assert guards._room_under(tmp_path / "memory.max", tmp_path / "memory.current") == room


def test_a_custom_model_that_cannot_be_built_on_the_meta_device_is_counted_as_built():
    from models_for_tests import HostOnly
    from test_train import settings

    from pneumolab.config import ModelConfig

    host_only = settings(model=ModelConfig(target="models_for_tests.HostOnly"))
    expected = sum(p.numel() for p in HostOnly((1, 28, 28), 2).parameters())
    assert guards.model_parameters(host_only, (1, 28, 28)) == expected
