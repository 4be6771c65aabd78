"""What pneumolab-predict and pneumolab-eval read back is checked before anything runs: results.json's
`inference` entry against its schema, against the rest of results.json and against model.safetensors (its
tensors' shapes and the copy of the entry in its metadata). A damaged or edited entry is one paragraph naming
the key and the fix, exit 2: never a raw error, never a prediction at the wrong size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import pneumolab_command, subprocess_env
from pneumolab.outputs.checkpoint import RECORDED_KEYS, save_weights
from pneumolab.record.seed_run import SeedRun

pytestmark = pytest.mark.slow  # trains runs to read back

BIN = Path(sys.executable).parent
TINY = ["trainer.epochs=1", "trainer.seeds=[0,1]", "data.limit_per_class=12"]


def run(cwd: Path, *args, tool: str = "pneumolab") -> subprocess.CompletedProcess:
    command = pneumolab_command() if tool == "pneumolab" else [str(BIN / tool)]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)


def train(tmp: Path, name: str, *overrides: str) -> Path:
    job = tmp / name
    proc = run(tmp, *TINY, *overrides, f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    return job


def keep_entry_in_weights(job: Path) -> None:
    """Write model.safetensors again through save_weights with results.json's entry, as a run saves it."""
    record = json.loads((job / "results.json").read_text())["inference"]
    tensors = load_file(job / "model.safetensors")
    runs = [SeedRun(seed, weights={k.split("/", 1)[1]: v.numpy() for k, v in tensors.items()
                                   if k.startswith(f"seed_{seed}/")}) for seed in record["seeds"]]
    save_weights(job, runs, record)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An MLP run (phantom data) and a global-pool CNN run, whose weights fit any image size, and an image."""
    tmp = tmp_path_factory.mktemp("saved")
    mlp = train(tmp, "mlp")
    cnn = train(tmp, "cnn", "model=cnn", "model.channels=[4,8]", "model.global_pool=true")
    keep_entry_in_weights(cnn)
    image = tmp / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(image)
    return tmp, mlp, cnn, image


def edited(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    results = json.loads((dst / "results.json").read_text())
    edit(results)
    (dst / "results.json").write_text(json.dumps(results))
    return dst


def refused(cwd: Path, *args, tool: str) -> str:
    proc = run(cwd, *args, tool=tool)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stdout  # no CSV, not even a header
    return lines[0]


def set_key(key, value):
    return lambda r: r["inference"].__setitem__(key, value)


CASES = {  # name: (edit, the words of the paragraph)
    "wrong-input-shape": (set_key("input_shape", [1, 64, 64]),
                          "inference.input_shape is [1, 64, 64], but the run was trained on 28x28 px images "
                          "(data_summary.image_shape). The entry was edited or damaged"),
    "non-square-input-shape": (set_key("input_shape", [1, 784, 1]),
                               "inference.input_shape is [1, 784, 1], not [1, H, H]"),
    "unknown-head": (set_key("head", "softmax"), "inference.head is 'softmax', not a head pneumolab knows (bce, ce)"),
    "other-head": (set_key("head", "ce"), "inference.head is 'ce', but the run was trained with head=bce"),
    "seed-missing-from-weights": (lambda r: r["inference"]["seeds"].append(7),
                                  "inference.seeds lists seed 7, which model.safetensors does not hold (it holds "
                                  "0, 1). The entry was edited or damaged, and the saved seeds cannot be applied as "
                                  "they were trained. Fix: set it back to [0, 1]"),
    "seed-left-out": (lambda r: r["inference"]["seeds"].pop(), "inference.seeds is [0], but model.safetensors holds "
                                                               "seeds [0, 1]"),
    "non-numeric-pixel-mean": (set_key("pixel_mean", "abc"), "inference.pixel_mean is 'abc', not a finite number"),
    "zero-pixel-std": (set_key("pixel_std", 0), "inference.pixel_std is 0, not in (0, 1]"),
    "unknown-resize": (set_key("resize", "stretch"), "inference.resize is 'stretch', not one of squeeze, center_crop"),
    "weights-outside-the-run": (set_key("weights", "../../model.safetensors"),
                                "inference.weights is '../../model.safetensors', not the name of a file in the run "
                                'directory. The entry was edited or damaged, and the saved seeds cannot be applied '
                                'as they were trained. Fix: set it back to "model.safetensors"'),
    "model-key-added": (lambda r: r["inference"]["model"].__setitem__("bogus", 1), "inference.model is {"),
    "model-missing": (lambda r: r["inference"].pop("model"), "inference.model is missing"),
    "not-an-object": (lambda r: r.__setitem__("inference", [1]), "inference is a JSON list, not an object"),
    # Edited together with the rest of results.json: the weights' shapes still tell.
    "head-and-config-edited": (lambda r: (set_key("head", "ce")(r), r["config"]["head"].__setitem__("name", "ce")),
                               "does not describe the network model.safetensors holds: its tensor "
                               "seed_0/linears.3.weight is 1x128 there but 2x128 in the model this entry builds"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pneumolab_predict_refuses_a_damaged_entry_with_one_paragraph(runs, tmp_path, case):
    tmp, mlp, _, image = runs
    edit, words = CASES[case]
    job = edited(mlp, tmp_path / case, edit)
    line = refused(tmp, job, image, tool="pneumolab-predict")
    assert line.startswith(f"pneumolab-predict: error: {job / 'results.json'}: ") and words in line
    assert "re-run the job's command" in line


@pytest.mark.parametrize("case", ["wrong-input-shape", "unknown-head", "seed-missing-from-weights",
                                  "non-numeric-pixel-mean"])
def test_pneumolab_eval_refuses_a_damaged_entry_before_reading_data(runs, tmp_path, case):
    tmp, mlp, _, _ = runs
    edit, words = CASES[case]
    job = edited(mlp, tmp_path / case, edit)
    line = refused(tmp, job, tool="pneumolab-eval")
    assert line.startswith("pneumolab-eval: error: ") and words in line
    assert not (job / "eval").exists()  # nothing half-written


def test_weights_that_fit_any_size_still_refuse_an_edited_size_or_pixel_statistics(runs, tmp_path):
    """A global-pool CNN loads at any image size, so its tensors cannot tell 28 from 32 px: the copy of the
    entry in model.safetensors' metadata does, and so it does for the pixel statistics."""
    tmp, _, cnn, image = runs
    with safe_open(cnn / "model.safetensors", framework="pt") as handle:
        kept = json.loads(handle.metadata()["inference"])
    results = json.loads((cnn / "results.json").read_text())
    assert kept == {k: results["inference"][k] for k in RECORDED_KEYS}

    def resized(r):
        r["inference"]["input_shape"] = [1, 32, 32]
        r["data_summary"]["image_shape"] = [32, 32]  # edited consistently: only the weights' own record tells

    job = edited(cnn, tmp_path / "size", resized)
    line = refused(tmp, job, image, tool="pneumolab-predict")
    assert ("inference.input_shape is [1, 32, 32], but model.safetensors was saved with [1, 28, 28]" in line
            and "Fix: set it back to [1, 28, 28]" in line)
    mean = results["inference"]["pixel_mean"]
    job = edited(cnn, tmp_path / "mean", set_key("pixel_mean", 0.3))
    line = refused(tmp, job, tool="pneumolab-eval")
    assert f"inference.pixel_mean is 0.3, but model.safetensors was saved with {json.dumps(mean)}" in line

    # The untouched run predicts, with every seed.
    proc = run(tmp, cnn, image, tool="pneumolab-predict")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "path,prob,std,label,seed_0,seed_1"


def test_one_seed_predicts_with_an_empty_std_cell(runs, tmp_path):
    """One seed has no spread: the CSV's std cell is empty, never 0."""
    tmp, _, _, image = runs
    job = train(tmp_path, "one", "trainer.seeds=[0]")
    proc = run(tmp, job, image, tool="pneumolab-predict")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header == "path,prob,std,label,seed_0" and row.split(",")[2] == ""
