"""Kept models: model.safetensors, pneumolab-predict and pneumolab-eval on real images, and their bad input."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import pytest
from PIL import Image

from pneumolab.record.metrics import binary_metrics

from conftest import copy_tiny_xray, pneumolab_command, subprocess_env

pytestmark = pytest.mark.slow  # trains runs and sweeps to predict from

BIN = Path(sys.executable).parent
TINY = ["trainer.epochs=2", "trainer.seeds=[0,1,2]", "data.batch_size=8"]


def run(cwd, *args, tool="pneumolab"):
    command = pneumolab_command() if tool == "pneumolab" else [str(BIN / tool)]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """A job trained on a tiny copy of the real images (train/ and test/, 12 per class)."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
    if not shared.is_dir():
        pytest.skip(f"real images not found at {shared}")
    tmp = tmp_path_factory.mktemp("kept")
    root = copy_tiny_xray(shared, tmp / "xray", per_class=12)
    job = tmp / "run"
    proc = run(tmp, "data=folder", f"data.root={root}", *TINY, f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    return tmp, root, job, json.loads((job / "results.json").read_text())


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predicting_the_test_split_reproduces_the_runs_scores(trained):
    tmp, root, job, results = trained
    proc = run(tmp, job, root / "test", tool="pneumolab-predict")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(proc.stdout)
    assert list(rows[0]) == ["path", "prob", "std", "label", "seed_0", "seed_1", "seed_2"]
    assert len(rows) == 24 and all(r["path"].startswith(str(root / "test")) for r in rows)
    labels = np.array([int("/PNEUMONIA/" in r["path"]) for r in rows])
    for entry in results["per_seed"]:
        probs = np.array([float(r[f"seed_{entry['seed']}"]) for r in rows])
        log_odds = np.log(probs) - np.log1p(-probs)
        metrics = binary_metrics(labels, log_odds, (probs > 0.5).astype(int))
        assert metrics["acc"] == entry["test_acc"]
        assert metrics["confusion"] == entry["test_confusion"]
        assert metrics["auc"] == pytest.approx(entry["test_auc"], abs=1e-6)
    mean = np.array([float(r["prob"]) for r in rows])
    ensemble = binary_metrics(labels, mean, (mean > 0.5).astype(int))
    assert ensemble["acc"] == results["ensemble"]["test_acc"]
    assert [r["label"] for r in rows] == ["PNEUMONIA" if p > 0.5 else "NORMAL" for p in mean]
    spread = np.array([[float(r[f"seed_{k}"]) for k in range(3)] for r in rows]).std(1, ddof=1)
    np.testing.assert_allclose([float(r["std"]) for r in rows], spread, atol=1e-8)


def test_results_record_what_applying_the_weights_needs(trained):
    _, _, job, results = trained
    inference = results["inference"]
    assert inference["model"] == results["config"]["model"]
    assert inference["input_shape"] == [1, 28, 28] and inference["head"] == "bce"
    assert inference["resize"] == results["config"]["data"]["resize"] == "center_crop"
    assert inference["classes"] == ["NORMAL", "PNEUMONIA"] and inference["seeds"] == [0, 1, 2]
    assert 0 < inference["pixel_mean"] < 1 and 0 < inference["pixel_std"] < 1
    from safetensors import safe_open

    with safe_open(job / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert {k.split("/")[0] for k in keys} == {"seed_0", "seed_1", "seed_2"}
    assert "seed_0/linears.0.weight" in keys


def test_eval_on_the_runs_own_data_and_on_a_real_subset(trained):
    tmp, root, job, results = trained
    proc = run(tmp, job, tool="pneumolab-eval")
    assert proc.returncode == 0, proc.stderr
    own = json.loads((job / "eval" / "folder" / "eval.json").read_text())
    assert own["summary"]["test_acc"] == results["summary"]["test_acc"]
    # The log-odds, recomputed in other batches, agree to float32 precision: every verdict exactly, and the
    # calibration metrics, which use the probabilities themselves, to that precision.
    calibration = ("test_ece", "test_brier")
    assert {k: v for k, v in own["ensemble"].items() if k not in calibration} == \
        {k: v for k, v in results["ensemble"].items() if k not in calibration}
    for own_entry, entry in zip([own["ensemble"], *own["per_seed"]], [results["ensemble"], *results["per_seed"]]):
        assert [own_entry[k] for k in calibration] == pytest.approx([entry[k] for k in calibration], rel=1e-5)
    assert [e["test_acc"] for e in own["per_seed"]] == [e["test_acc"] for e in results["per_seed"]]
    assert [e["test_balanced_acc"] for e in own["per_seed"]] == [e["test_balanced_acc"] for e in results["per_seed"]]

    other = copy_tiny_xray(root, tmp / "other", per_class=5)
    out = tmp / "elsewhere"
    proc = run(tmp, job, "data=folder", f"data.root={other}", "--out", out, tool="pneumolab-eval")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["n_test"] == 10 and report["test_class_counts"] == {"NORMAL": 5, "PNEUMONIA": 5}
    assert report["summary"]["test_acc"]["n"] == 3 and report["resized"] is None
    first_five = {e["seed"]: e["test_confusion"] for e in report["per_seed"]}
    assert all(sum(map(sum, c)) == 10 for c in first_five.values())


def test_an_npz_of_another_size_is_resized_and_named_by_split_and_index(trained, tmp_path):
    _, _, job, _ = trained
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    npz = tmp_path / "pm64.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "pred.csv"
    proc = run(tmp_path, job, npz, "--out", out, tool="pneumolab-predict")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out.read_text())
    assert [r["path"] for r in rows][-3:] == [f"{npz}:test:{i}" for i in range(3)] and len(rows) == 9
    assert "resized to the run's 28 px" in proc.stderr


def square_and_wide(image: Path, out_dir: Path) -> tuple[Path, Path]:
    """A real X-ray as a grayscale PNG, and the same pixels centred on a wider black canvas:
    center_crop turns the wide one back into the square one, squeeze squashes it."""
    with Image.open(image) as opened:
        square = opened.convert("L")
    wide = Image.new("L", (square.width + 96, square.height))
    wide.paste(square, (48, 0))
    square.save(out_dir / "square.png")
    wide.save(out_dir / "wide.png")
    return out_dir / "square.png", out_dir / "wide.png"


def older_run(job: Path, results: dict, dst: Path) -> Path:
    """The run as pneumolab wrote it before data.resize existed: no `resize` anywhere in results.json."""
    dst.mkdir()
    # Older runs' weights carry no copy of the inference entry in their metadata either.
    tensors = safetensors.torch.load_file(job / "model.safetensors")
    seeds = ",".join(map(str, results["seeds"]))
    safetensors.torch.save_file(tensors, dst / "model.safetensors", metadata={"seeds": seeds})
    data = {k: v for k, v in results["config"]["data"].items() if k != "resize"}
    inference = {k: v for k, v in results["inference"].items() if k != "resize"}
    (dst / "results.json").write_text(json.dumps({**results, "config": {**results["config"], "data": data},
                                                  "inference": inference}))
    return dst


def test_predict_makes_images_square_as_the_run_did(trained, tmp_path):
    tmp, root, job, results = trained
    square, wide = square_and_wide(next((root / "test" / "PNEUMONIA").iterdir()), tmp_path)
    seeds = [f"seed_{k}" for k in range(3)]
    probs = {}
    for name, run_dir in (("crop", job), ("squeeze", older_run(job, results, tmp_path / "old"))):
        proc = run(tmp, run_dir, square, wide, tool="pneumolab-predict")
        assert proc.returncode == 0, proc.stderr
        probs[name] = np.array([[float(row[k]) for k in seeds] for row in read_csv(proc.stdout)])
    # Same pixels; float32 rounding may still differ between two rows of a batch.
    same = {"rtol": 0, "atol": 1e-6}
    np.testing.assert_allclose(probs["crop"][1], probs["crop"][0], **same)  # the wide image's centre is the square
    np.testing.assert_allclose(probs["squeeze"][0], probs["crop"][0], **same)  # square: both modes agree
    assert not np.allclose(probs["squeeze"][1], probs["crop"][1], **same)  # an older run squeezes, as it was trained


def test_eval_makes_images_square_by_the_data_config(trained, tmp_path):
    tmp, root, job, results = trained
    old = older_run(job, results, tmp_path / "old")
    proc = run(tmp, old, tool="pneumolab-eval")  # the run's own data: squeeze, as it was trained
    assert proc.returncode == 0, proc.stderr
    report = json.loads((old / "eval" / "folder" / "eval.json").read_text())
    assert report["data_config"]["resize"] == "squeeze" and "to match" not in proc.stderr
    assert report["summary"]["test_acc"] == results["summary"]["test_acc"]  # square images: same pixels
    proc = run(tmp, job, "data=folder", f"data.root={root}", "data.resize=squeeze", "--out", tmp_path / "e",
               tool="pneumolab-eval")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["data_config"]["resize"] == "squeeze"
    assert "add data.resize=center_crop to match" in proc.stderr


def bad(tmp, *args, tool="pneumolab-predict"):
    proc = run(tmp, *args, tool=tool)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    return proc.stderr


def test_bad_input_gets_one_paragraph_and_exit_2(trained, tmp_path):
    tmp, root, job, results = trained
    image = next((root / "test" / "NORMAL").iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "results.json"):
        (broken / name).write_bytes((job / name).read_bytes())
    assert f"{tmp_path / 'missing.png'} does not exist" in bad(tmp, job, tmp_path / "missing.png")

    (broken / "model.safetensors").write_bytes((job / "model.safetensors").read_bytes()[:1000])
    assert "truncated or corrupt" in bad(tmp, broken, image)
    (broken / "model.safetensors").unlink()
    assert "made before pneumolab 0.2.0" in bad(tmp, broken, image)
    assert "made before pneumolab 0.2.0" in bad(tmp, broken, tool="pneumolab-eval")

    (broken / "model.safetensors").write_bytes((job / "model.safetensors").read_bytes())
    wrong = dict(results, inference={**results["inference"], "model": {**results["config"]["model"],
                                                                     "hidden_sizes": [64, 64]}})
    (broken / "results.json").write_text(json.dumps(wrong))
    assert "inference.model is" in bad(tmp, broken, image)  # the edited key named (tests/test_saved_runs.py)

    garbage = tmp_path / "images"
    garbage.mkdir()
    (garbage / "notes.jpeg").write_text("not an image")
    assert f"Cannot read the image {garbage / 'notes.jpeg'}" in bad(tmp, job, garbage)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no files" in bad(tmp, job, empty)
    assert "holds no finished pneumolab run" in bad(tmp, tmp_path, image)


def test_a_sweep_directory_is_evaluated_point_by_point(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run(tmp_path, "-m", "head=bce,ce", "trainer.epochs=1", "trainer.seeds=[0,1]", "data.limit_per_class=30",
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    proc = run(tmp_path, sweep, "data.limit_per_class=10", tool="pneumolab-eval")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((sweep / "eval" / "phantom" / "eval.csv").open()))
    assert [r["point"] for r in rows] == ["0", "1"]
    for row in rows:
        point = json.loads((sweep / row["point"] / "eval" / "phantom" / "eval.json").read_text())
        assert point["n_test"] == 20 and float(row["test_acc_mean"]) == point["summary"]["test_acc"]["mean"]
