"""model=custom from the command line: a user's nn.Module in the working directory, and its mistakes."""

import json
import subprocess

import pytest

from conftest import pneumolab_command, subprocess_env

MYNETS = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_shape, n_outputs, width=16):
        super().__init__()
        c, h, w = in_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, n_outputs))

    def forward(self, x):
        return self.net(x)


class Squeezed(TinyNet):
    def forward(self, x):
        return self.net(x)[:, 0]


class Fails(TinyNet):
    def forward(self, x):
        return self.net(x[:, :, :5])  # too few pixels for the first layer
'''
QUICK = ["trainer.epochs=2", "trainer.seeds=[0,1]", "data.limit_per_class=30"]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "mynets.py").write_text(MYNETS)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    return tmp_path


def run(cwd, *args):
    return subprocess.run([*pneumolab_command(), "model=custom", *args, *QUICK], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_users_module_trains_with_its_own_keys(workdir):
    job = workdir / "run"
    proc = run(workdir, "model._target_=mynets.TinyNet", "+model.width=8", "head=ce", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((job / "results.json").read_text())
    assert results["config"]["model"] == {"name": "custom", "_target_": "mynets.TinyNet", "width": 8}
    assert results["inference"]["model"] == results["config"]["model"]
    assert [e["seed"] for e in results["per_seed"]] == [0, 1]
    from safetensors import safe_open

    with safe_open(job / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("seed_0/net.1.weight").shape == (8, 784)


@pytest.mark.parametrize(
    "target, extra, message",
    [
        ("mynets.Nope", [], "the module mynets ("),
        ("nowhere.TinyNet", [], "the module nowhere does not import (ModuleNotFoundError"),
        ("broken.Net", [], "the module broken does not import (ModuleNotFoundError: No module named 'not_a_module"),
        ("mynets.TinyNet", ["+model.depth=3"], "TinyNet(in_shape=(1, 28, 28), n_outputs=1, depth=3) raised TypeError"),
        ("mynets.Squeezed", [], "returned (2,) for a batch of shape (2, 1, 28, 28); it must return logits of shape (B, 1)"),
        ("mynets.Fails", [], "fails on a batch of shape (2, 1, 28, 28): RuntimeError"),
        ("TinyNet", [], "names no module"),
    ],
    ids=["no-class", "no-module", "import-error", "bad-argument", "wrong-shape", "bad-forward", "no-dot"],
)
@pytest.mark.slow
def test_a_model_that_cannot_train_stops_before_training(workdir, target, extra, message):
    job = workdir / "run"
    proc = run(workdir, f"model._target_={target}", *extra, f"hydra.run.dir={job}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (job / "results.json").exists() and not (job / "metrics.csv").exists()


@pytest.mark.slow
def test_no_target_names_the_key_to_set(workdir):
    proc = run(workdir)
    assert proc.returncode == 2 and "model._target_=mynets.TinyNet" in proc.stderr
