"""The wheel carries conf/: an installed pneumolab composes and runs from any directory."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow  # builds and installs a wheel


def test_wheel_install_finds_its_configs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("pneumolab-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    assert (site / "pneumolab" / "conf" / "config.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # PYTHONPATH puts the installed wheel ahead of the editable checkout on sys.path.
    env = {**subprocess_env(), "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import pneumolab.config as c; print(c.__file__); print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "pneumolab" / "conf")

    job = elsewhere / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "pneumolab.cli.main", "head=ce", "trainer.epochs=1", "trainer.seeds=[0]",
         "data.limit_per_class=20", f"hydra.run.dir={job}"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((job / "results.json").read_text())
    assert results["config"]["head"]["name"] == "ce" and results["config"]["model"]["hidden_sizes"] == [128] * 3

    # The installed wheel applies the kept weights to a new image.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)).save(elsewhere / "x.png")
    proc = subprocess.run([sys.executable, "-m", "pneumolab.cli.predict", str(job), "x.png"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header == "path,prob,std,label,seed_0" and row.startswith("x.png,")
    assert 0 < float(row.split(",")[1]) < 1
