"""Built-in models beyond the report's MLP: the modern CNN's options (convs_per_block, batch_norm,
global_pool), model=resnet, model.weights=PATH, and BatchNorm's statistics kept with the weights.

tests/test_train.py checks that these models keep every seed's numbers apart to the last bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import copy_tiny_xray, pneumolab_command, subprocess_env
from pneumolab.outputs.checkpoint import load_seeds, save_weights
from pneumolab.config import TrainerConfig, built_in_model
from pneumolab.data.dataset import Dataset
from pneumolab.errors import PneumolabError
from pneumolab.record.metrics import binary_metrics
from pneumolab.models import build_model, build_stack, check_model
from pneumolab.engine.train import SeedOptimizers, fit
from test_bad_input import run_in_process
from test_predict import read_csv
from test_predict import run as run_tool
from test_train import MODERN_CNN, settings, toy_split

CPU = torch.device("cpu")
RESNET = built_in_model("resnet")


@pytest.fixture(autouse=True)
def one_thread(restore_torch_state):
    torch.set_num_threads(1)  # as every job trains (cli.configure_torch); two threads crawl on a busy machine


@pytest.fixture(scope="module")
def toy() -> Dataset:
    """8 px images, 60 for training: in batches of 59 the last holds one image."""
    gen = torch.Generator().manual_seed(7)
    return Dataset(toy_split(60, gen), toy_split(20, gen), toy_split(30, gen), "toy")


def kinds(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_cnn_options_build_the_layers_they_name():
    plain = build_model(built_in_model("cnn", channels=[4, 8]), (1, 28, 28), 1)
    assert len(kinds(plain, nn.Conv2d)) == 2 and not kinds(plain, nn.BatchNorm2d)
    assert plain.classifier.in_features == 8 * 7 * 7  # flattened
    modern = build_model(replace(MODERN_CNN, options={**MODERN_CNN.options, "channels": [4, 8, 16]}), (1, 28, 28), 1)
    convs = kinds(modern, nn.Conv2d)
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16]
    assert len(kinds(modern, nn.BatchNorm2d)) == 6 and all(c.bias is None for c in convs)
    assert modern.classifier.in_features == 16  # global average pooling
    assert modern(torch.zeros(3, 1, 28, 28)).shape == (3, 1)


def test_resnet_is_torchvisions_resnet18_with_a_small_image_stem():
    torchvision = pytest.importorskip("torchvision")
    model = build_model(RESNET, (1, 28, 28), 2)
    reference = torchvision.models.resnet18(weights=None, num_classes=2).state_dict()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(reference)
    assert {k for k, v in reference.items() if tuple(v.shape) != shapes[k]} == {"conv1.weight"}
    assert shapes["conv1.weight"] == (64, 1, 3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)


def count_steps(monkeypatch) -> list[int]:
    steps = []
    step = SeedOptimizers.step
    monkeypatch.setattr(SeedOptimizers, "step", lambda self, *a: (steps.append(1), step(self, *a))[1])
    return steps


@pytest.mark.parametrize("model, steps_per_epoch", [(built_in_model("cnn", channels=[4, 8]), 2), (MODERN_CNN, 1), (RESNET, 1)],
                         ids=["cnn", "cnn-bn", "resnet"])
@pytest.mark.slow
def test_a_last_batch_of_one_image_is_left_out_with_batch_norm_only(toy, monkeypatch, model, steps_per_epoch):
    steps = count_steps(monkeypatch)
    config = settings(model=model, trainer=TrainerConfig(epochs=2, seeds=[0, 1]))
    # ResNet's last stage is 1x1 at 8 px: BatchNorm would fail on a batch of one image there.
    runs = fit(replace(config, data=replace(config.data, batch_size=59)), toy, CPU)
    assert len(steps) == 2 * steps_per_epoch
    tracked = [v for run in runs for k, v in run.weights.items() if k.endswith("num_batches_tracked")]
    assert all(v == 2 for v in tracked) and (len(tracked) > 0) == (steps_per_epoch == 1)
    assert all(not run.diverged for run in runs)


def test_batch_norm_models_refuse_batches_of_one_image():
    with pytest.raises(PneumolabError, match=r"model=cnn has BatchNorm .* data\.batch_size=1\. Use data\.batch_size=2"):
        check_model(MODERN_CNN, (1, 28, 28), 1, batch_size=1, n_train=60)
    check_model(built_in_model("cnn"), (1, 28, 28), 1, batch_size=1, n_train=60)


@pytest.mark.parametrize("checkpoint", ["last", "best_val"])
@pytest.mark.parametrize("model", [MODERN_CNN, RESNET], ids=["cnn-bn", "resnet"])
@pytest.mark.slow
def test_batch_norm_statistics_are_kept_and_restored_with_the_weights(toy, tmp_path, model, checkpoint):
    config = settings(model=model, trainer=TrainerConfig(epochs=3, seeds=[0, 1], eval_checkpoint=checkpoint))
    runs = fit(config, toy, CPU)
    for run in runs:
        # 60 images in batches of 16: 4 batches an epoch; the evaluated epoch's statistics are kept.
        counts = {v.item() for k, v in run.weights.items() if k.endswith("num_batches_tracked")}
        assert counts == {4 * (run.best_epoch if checkpoint == "best_val" else 3)}
    save_weights(tmp_path, runs)
    mean, std = toy.pixel_stats()
    record = {"model": {"_target_": model.target, **model.options, "weights": model.weights}, "head": "ce", "input_shape": [1, 8, 8], "pixel_mean": mean, "pixel_std": std,
              "seeds": [0, 1]}
    (tmp_path / "results.json").write_text(json.dumps({"inference": record}))
    saved = load_seeds(tmp_path)
    for run, module in zip(runs, saved.models.values()):
        state = module.state_dict()
        assert all(np.array_equal(state[k].numpy(), v) and state[k].shape == v.shape for k, v in run.weights.items())
    np.testing.assert_allclose(saved.log_odds(toy.test.images), [r.test_scores for r in runs], rtol=0, atol=1e-5)


MODERN_CNN_ARGS = ["model=cnn", "model.channels=[4,8]", "model.convs_per_block=2", "model.batch_norm=true",
                   "model.global_pool=true"]


@pytest.mark.parametrize("model", [MODERN_CNN_ARGS, ["model=resnet"]], ids=["cnn-bn", "resnet"])
@pytest.mark.slow
def test_predict_reproduces_a_batch_norm_runs_test_predictions(tmp_path, shared_xray, model):
    # The CSV's probabilities saturate at 1.0 for a confident ResNet, so AUCs are not compared here;
    # the log-odds themselves are, in process, above.
    root = copy_tiny_xray(shared_xray, tmp_path / "xray", per_class=6)
    job = tmp_path / "run"
    proc = run_tool(tmp_path, "data=folder", f"data.root={root}", *model, "trainer.epochs=2", "trainer.seeds=[0,1]",
                    "data.batch_size=4", f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((job / "results.json").read_text())
    proc = run_tool(tmp_path, job, root / "test", tool="pneumolab-predict")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(proc.stdout)
    labels = np.array([int("/PNEUMONIA/" in r["path"]) for r in rows])
    for entry in results["per_seed"]:
        probs = np.array([float(r[f"seed_{entry['seed']}"]) for r in rows])
        metrics = binary_metrics(labels, probs, (probs > 0.5).astype(int))
        assert (metrics["acc"], metrics["confusion"]) == (entry["test_acc"], entry["test_confusion"])


@pytest.mark.parametrize("model", [MODERN_CNN_ARGS, ["model=resnet"]], ids=["cnn-bn", "resnet"])
@pytest.mark.slow
def test_the_same_command_gives_the_same_bits_twice(tmp_path, model):
    args = [*model, "data.image_size=16", "data.limit_per_class=20", "trainer.epochs=2", "trainer.seeds=[0,1]"]
    for name in ("a", "b"):
        run_in_process(args, tmp_path / name)
    for file in ("model.safetensors", "metrics.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    per_seed = [json.loads((tmp_path / name / "results.json").read_text())["per_seed"] for name in "ab"]
    assert per_seed[0] == per_seed[1]


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("model", [built_in_model("mlp", hidden_sizes=[16, 8]), MODERN_CNN, RESNET], ids=["mlp", "cnn-bn", "resnet"])
def test_model_weights_start_every_seed_from_the_file(tmp_path, model, suffix):
    torch.manual_seed(99)
    source = build_model(model, (1, 8, 8), 1)
    with torch.no_grad():  # buffers too: BatchNorm statistics that no fresh model has
        for value in source.state_dict().values():
            value.add_(3)
    path = save_state(source.state_dict(), tmp_path / f"start{suffix}")
    # The MLP's seeds are stacked into batched tensors (StackedMLP), after loading.
    stack = build_stack(replace(model, weights=str(path)), (1, 8, 8), 1, [0, 1], CPU, batched=True)
    expected = source.state_dict()
    for s in (0, 1):
        state = stack.seed_state(s)
        assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in expected)


def refusal(model, weights: Path) -> str:
    with pytest.raises(PneumolabError) as caught:
        check_model(replace(model, weights=str(weights)), (1, 8, 8), 2, batch_size=32, n_train=60)
    message = str(caught.value)
    assert "\n" not in message and f"model.weights={weights}" in message
    return message


def test_weights_files_that_are_missing_unreadable_or_no_state_dict_are_refused(tmp_path):
    assert "does not exist" in refusal(MODERN_CNN, tmp_path / "absent.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not tensors" * 10)
    assert "cannot be read" in refusal(MODERN_CNN, tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not tensors" * 10)
    assert "torch.load with weights_only=True refused it" in refusal(MODERN_CNN, tmp_path / "junk.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, tmp_path / "checkpoint.pt")
    assert "not a state dict" in refusal(MODERN_CNN, tmp_path / "checkpoint.pt")
    other = save_state(build_model(MODERN_CNN, (1, 8, 8), 2).state_dict(), tmp_path / "cnn.safetensors")
    message = refusal(built_in_model("mlp"), other)
    assert "missing: linears.0.weight, linears.0.bias, linears.1.weight and 5 more; unexpected: features." in message
    run_file = save_state({f"seed_0/{k}": v for k, v in build_model(built_in_model("mlp"), (1, 8, 8), 2).state_dict().items()},
                          tmp_path / "model.safetensors")
    assert "pneumolab run's model.safetensors" in refusal(built_in_model("mlp"), run_file)


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), "debug=smoke", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def one_paragraph(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.mark.slow
def test_a_weights_file_of_another_shape_exits_2_with_one_paragraph(tmp_path):
    narrow = save_state(build_model(built_in_model("cnn", channels=[4, 8]), (1, 28, 28), 1).state_dict(), tmp_path / "narrow.pt")
    message = one_paragraph(run_cli(tmp_path, "model=cnn", f"model.weights={narrow}"))
    assert "of another shape: features.0.weight (4, 1, 3, 3) (the model's: (16, 1, 3, 3))" in message
    assert not (tmp_path / "run" / "results.json").exists()


def test_convs_per_block_0_exits_2_with_one_paragraph(tmp_path):
    message = one_paragraph(run_cli(tmp_path, "model=cnn", "model.convs_per_block=0"))
    assert "model.convs_per_block=0" in message and "use at least 1 convolution per block" in message


def test_resnet_without_torchvision_names_the_extra(monkeypatch):
    # None in sys.modules makes `import torchvision` fail as if it were not installed.
    for name in [m for m in sys.modules if m.startswith("torchvision.")] + ["pneumolab.models.resnet"]:
        monkeypatch.delitem(sys.modules, name, raising=False)  # put back afterwards
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(PneumolabError, match=r"model=resnet needs torchvision.*pip install 'pneumolab\[resnet\]'"):
        build_model(RESNET, (1, 28, 28), 1)
