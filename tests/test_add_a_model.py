"""A new built-in model is two files: src/pneumolab/models/<name>.py and conf/model/<name>.yaml.

In a copy of the package, with exactly those two files added and nothing else touched, the new
model trains, its checks speak for it, and predict, eval, titles and the summary all work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

MODEL = '''"""Two linear layers around a ReLU: a model added as two files."""

from torch import nn


class TwoLayer(nn.Module):
    def __init__(self, in_shape, n_outputs, widths=(12,), scale=1.0):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"model.scale={scale}: use a scale > 0")
        n_in = in_shape[0] * in_shape[1] * in_shape[2]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, widths[0]), nn.ReLU(), nn.Linear(widths[0], n_outputs))
        self.scale = scale

    def forward(self, x):
        return self.body(x) * self.scale
'''
CONFIG = """_target_: pneumolab.models.twolayer.TwoLayer
widths: [12]
scale: 1.0
weights: null
"""
TINY = ["data.n_train=60", "data.n_val=20", "data.n_test=30", "data.image_size=8", "trainer.epochs=2",
        "trainer.seeds=[0,1]"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of src/ and conf/ with the two files of model=twolayer added."""
    root = tmp_path_factory.mktemp("copy")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", root / "conf")
    (root / "src" / "pneumolab" / "models" / "twolayer.py").write_text(MODEL)
    (root / "conf" / "model" / "twolayer.yaml").write_text(CONFIG)
    return root


def run(package: Path, cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "PYTHONPATH": str(package / "src")}
    code = f"import sys; from {module} import main; sys.argv[0] = 'x'; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_model_added_as_two_files_trains_predicts_evaluates_and_is_named(package, tmp_path):
    sweep = tmp_path / "sweep"
    out = run(package, tmp_path, "pneumolab.cli.main", "-m", "model=mlp,twolayer", *TINY, f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    runs = {json.loads((d / "results.json").read_text())["config"]["model"]["_target_"]: d
            for d in sweep.iterdir() if (d / "results.json").is_file()}
    new = runs["pneumolab.models.twolayer.TwoLayer"]
    results = json.loads((new / "results.json").read_text())
    assert [s["seed"] for s in results["per_seed"]] == [0, 1]
    assert results["inference"]["model"]["widths"] == [12]
    assert "model=twolayer" in (new / "cli.log").read_text()
    summary = (sweep / "summary.md").read_text()
    assert "model=twolayer" in summary and "model=mlp" in summary

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "xray.png")
    predicted = run(package, tmp_path, "pneumolab.cli.predict", str(new), str(tmp_path / "xray.png"))
    assert predicted.returncode == 0, predicted.stderr
    assert "xray.png" in predicted.stdout
    evaluated = run(package, tmp_path, "pneumolab.cli.evaluate", str(new))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((new / "eval" / "phantom" / "eval.json").read_text())["summary"]["test_acc"]["mean"] == pytest.approx(
        results["summary"]["test_acc"]["mean"])


def test_the_new_models_keys_are_checked_like_a_built_in_ones(package, tmp_path):
    typo = run(package, tmp_path, "pneumolab.cli.main", "model=twolayer", "+model.widht=[4]", *TINY,
               f"hydra.run.dir={tmp_path / 'a'}")
    assert typo.returncode == 2 and "Did you mean model.widths?" in typo.stderr and "Traceback" not in typo.stderr
    refused = run(package, tmp_path, "pneumolab.cli.main", "model=twolayer", "model.scale=0", *TINY,
                  f"hydra.run.dir={tmp_path / 'b'}")
    assert refused.returncode == 2 and "model.scale=0: use a scale > 0" in refused.stderr
