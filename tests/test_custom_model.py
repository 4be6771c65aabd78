"""model=custom from the command line: a user's nn.Module in the working directory, and its mistakes."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import pneumolab_command, subprocess_env
from test_interruptions import EPOCH_LINE

MYNETS = '''
import sys

import torch
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


class FixedBatch(TinyNet):
    def forward(self, x):
        return self.net(x.view(32, -1))  # fails on any other batch size, e.g. the last batch


class NoParameters(nn.Module):
    def __init__(self, in_shape, n_outputs):
        super().__init__()
        self.n_outputs = n_outputs

    def forward(self, x):
        return x.flatten(1)[:, : self.n_outputs]


class NaNAtStart(TinyNet):
    def forward(self, x):
        return self.net(x) * float("nan")


class Detached(TinyNet):
    def forward(self, x):
        return self.net(x).detach()


class BatchNormNet(TinyNet):
    def __init__(self, in_shape, n_outputs, width=16):
        super().__init__(in_shape, n_outputs, width)
        self.net.insert(2, nn.BatchNorm1d(width))  # cannot learn from a batch of one image


class NoGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no gradient here")


class Breaks(TinyNet):
    """Trains for `after` batches, then breaks as `how` says: in training ("raise", "exit", "shape",
    "backward") or in evaluation ("eval"); only in seeds from `from_seed` on."""

    def __init__(self, in_shape, n_outputs, how, after=2, from_seed=0):
        super().__init__(in_shape, n_outputs)
        self.how, self.after, self.batches = how, after, 0
        self.breaks = torch.initial_seed() >= from_seed  # pneumolab seeds torch before building each seed

    def forward(self, x):
        out = self.net(x)
        self.batches += self.training
        if not self.breaks or self.batches <= self.after or self.training == (self.how == "eval"):
            return out
        if self.how == "exit":
            sys.exit("giving up")
        if self.how == "shape":
            return torch.cat([out, out], dim=1)
        if self.how == "backward":
            return NoGradient.apply(out)
        raise ValueError("the model broke")
'''
# A module that parses the command line when imported, as training scripts do.
ARGPARSE_AT_IMPORT = '''
import argparse

from mynets import TinyNet

parser = argparse.ArgumentParser()
parser.add_argument("--width", type=int, default=8)
{required}
args = parser.parse_args()


class Net(TinyNet):
    def __init__(self, in_shape, n_outputs):
        super().__init__(in_shape, n_outputs, args.width)
'''
QUICK = ["trainer.epochs=2", "trainer.seeds=[0,1]", "data.limit_per_class=30"]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "mynets.py").write_text(MYNETS)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "optional_args.py").write_text(ARGPARSE_AT_IMPORT.format(required=""))
    (tmp_path / "required_args.py").write_text(ARGPARSE_AT_IMPORT.format(required='parser.add_argument("data_dir")'))
    return tmp_path


def run(cwd, *args):
    """pneumolab model=custom ARGS, with the QUICK settings that ARGS do not set themselves."""
    quick = [setting for setting in QUICK if not any(arg.startswith(setting.split("=")[0] + "=") for arg in args)]
    return subprocess.run([*pneumolab_command(), "model=custom", *args, *quick], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_users_module_trains_with_its_own_keys(workdir):
    job = workdir / "run"
    proc = run(workdir, "model._target_=mynets.TinyNet", "+model.width=8", "head=ce", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((job / "results.json").read_text())
    assert results["config"]["model"] == {"_target_": "mynets.TinyNet", "width": 8}
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
        ("mynets.Squeezed", [], "returned (32,) before training, on a random batch of shape (32, 1, 28, 28) in "
                                "train() mode; it must return logits of shape (B, 1)"),
        ("mynets.Fails", [], "failed before training, on a random batch of shape (32, 1, 28, 28) in train() mode, "
                             "forward: RuntimeError"),
        # 60 training images in batches of 32: the last batch holds 28.
        ("mynets.FixedBatch", [], "failed before training, on a random batch of shape (28, 1, 28, 28) in train() "
                                  "mode, forward: RuntimeError"),
        ("mynets.NoParameters", [], "mynets.NoParameters has no trainable parameters"),
        ("mynets.NaNAtStart", [], "returned NaN or infinite logits before training"),
        ("mynets.Detached", [], "returned logits that do not depend on its parameters before training"),
        ("required_args.Net", [], "the module required_args exits while it is imported (SystemExit: 2; it wrote: "
                                  "usage: required_args [-h] [--width WIDTH] data_dir required_args: error: the "
                                  "following arguments are required: data_dir). pneumolab imports it with no "
                                  "command-line arguments"),
        ("mynets.Breaks", ["+model.how=raise", "+model.after=0"], "failed before training, on a random batch of shape "
                                                                  "(32, 1, 28, 28) in train() mode, forward: ValueError: "
                                                                  "the model broke (at "),
        ("TinyNet", [], "names no module"),
    ],
    ids=["no-class", "no-module", "import-error", "bad-argument", "wrong-shape", "bad-forward", "last-batch",
         "no-parameters", "nan", "detached", "argparse-exits", "raises-at-once", "no-dot"],
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


@pytest.mark.parametrize(
    "how, where, what",
    [
        ("raise", "during training, epoch 2, forward", "ValueError: the model broke (at {mynets}:"),
        ("exit", "during training, epoch 2, forward", "it called sys.exit('giving up') (SystemExit) (at {mynets}:"),
        ("shape", "during training, epoch 2, forward", "ValueError: it returned logits of shape (32, 2) for a batch "
                                                       "of 32 images, where every batch needs (32, 1)"),
        ("backward", "during training, epoch 2, backward", "RuntimeError: no gradient here (at {mynets}:"),
        ("eval", "during validation after epoch 2 (eval() mode, no gradients)", "ValueError: the model broke (at "),
    ],
)
@pytest.mark.slow
def test_a_model_that_breaks_during_training_stops_with_one_paragraph(workdir, how, where, what):
    # 60 training images in batches of 32: two batches an epoch, so the third (epoch 2) breaks.
    job = workdir / "run"
    proc = run(workdir, "model._target_=mynets.Breaks", f"+model.how={how}", f"hydra.run.dir={job}")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"pneumolab: error: The custom model mynets.Breaks failed {where}: "
                           f"{what.format(mynets=workdir / 'mynets.py')}"), line
    assert "Fix the model's code" in line
    assert not (job / "results.json").exists() and not (job / "metrics.csv").exists()


@pytest.mark.slow
def test_a_failure_in_a_forked_seed_process_arrives_as_the_paragraph(workdir):
    # Seeds 2 and 3 train in the second process, and only they break.
    job = workdir / "run"
    proc = run(workdir, "model._target_=mynets.Breaks", "+model.how=exit", "+model.from_seed=2",
               "trainer.seeds=[0,1,2,3]", "trainer.processes=2", f"hydra.run.dir={job}")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("pneumolab: error: The custom model mynets.Breaks failed during training, epoch 2, "
                           "forward: it called sys.exit('giving up') (SystemExit)"), line
    assert not (job / "results.json").exists()


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_point_whose_model_exits(workdir):
    sweep = workdir / "sweep"
    proc = subprocess.run([*pneumolab_command(), "-m", "model=custom", "model._target_=mynets.Breaks", "+model.how=exit",
                           "+model.after=2,1000", *QUICK, f"hydra.sweep.dir={sweep}"], cwd=workdir,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # a sweep with a failed point
    assert "Traceback" not in proc.stderr
    error = json.loads((sweep / "0" / "error.json").read_text())["error"]
    assert error.startswith("The custom model mynets.Breaks failed during training, epoch 2, forward: it called "
                            "sys.exit('giving up')")
    assert not (sweep / "0" / "results.json").exists()
    assert json.loads((sweep / "1" / "results.json").read_text())["config"]["model"]["after"] == 1000
    assert "2 points: 1 ok, 1 failed" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_ctrl_c_in_a_models_forward_still_stops_the_run(workdir):
    job = workdir / "run"
    (workdir / "slow.py").write_text(
        "import time\nfrom mynets import TinyNet\n\n\nclass Slow(TinyNet):\n"
        "    def forward(self, x):\n        time.sleep(0.01)\n        return super().forward(x)\n")
    proc = subprocess.Popen([*pneumolab_command(), "model=custom", "model._target_=slow.Slow", *QUICK,
                             "trainer.epochs=100000", f"hydra.run.dir={job}"], cwd=workdir, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not EPOCH_LINE.search(read_log(job)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert EPOCH_LINE.search(read_log(job)), "stopped before it trained"
    assert proc.returncode == 130, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("pneumolab: stopped by Ctrl-C (SIGINT)"), line


def read_log(job) -> str:
    log = job / "cli.log"
    return log.read_text() if log.is_file() else ""


@pytest.mark.slow
def test_a_module_that_parses_arguments_at_import_sees_none_of_pneumolabs(workdir):
    job = workdir / "run"
    proc = run(workdir, "model._target_=optional_args.Net", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    from safetensors import safe_open

    with safe_open(job / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("seed_0/net.1.weight").shape == (8, 784)  # argparse's default width


@pytest.mark.slow
def test_a_batch_norm_model_trains_when_the_last_batch_holds_one_image(workdir):
    # 60 training images in batches of 59: the last batch of one is left out, and the check before
    # training does not try it either.
    job = workdir / "run"
    proc = run(workdir, "model._target_=mynets.BatchNormNet", "data.batch_size=59", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((job / "results.json").read_text())
    assert [entry["diverged"] for entry in results["per_seed"]] == [False, False]
    from safetensors import safe_open

    with safe_open(job / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("seed_0/net.2.num_batches_tracked").item() == 2  # one batch in each of 2 epochs
