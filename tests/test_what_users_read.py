"""Lines a user reads (issue 23): the settings line, pneumolab-predict's last line, where smoke runs go,
and what `pneumolab-cache list` says each cache file came from."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_tiny_xray, pneumolab_command, subprocess_env
from pneumolab.cli import cache
from pneumolab.data import medmnist
from pneumolab.cli import predict
from pneumolab.cli.main import describe_settings
from pneumolab.config import FolderDataConfig, PneumoniaMNISTDataConfig, to_settings
from pneumolab.data.folder import load_folder

TAIL = "optimizer=adam lr=0.001 | scheduler=step | batch 32 | 30 epochs | seeds 0..4"


@pytest.mark.parametrize(("overrides", "line"), [
    ([], f"model=mlp [128, 128, 128] | head=bce | {TAIL} | data=phantom"),
    (["model=custom", "+model._target_=mynets.TinyNet", "+model.width=32"],
     f"model=custom mynets.TinyNet(width=32) | head=bce | {TAIL} | data=phantom"),
    (["head=ce", "head.class_weights=balanced", "augment=basic", "augment.rotation=10"],
     "model=mlp [128, 128, 128] | head=ce class_weights=balanced | augment=basic rotation=10 translate=0.05 "
     f"scale=0.1 brightness=0.1 contrast=0.1 hflip=false | {TAIL} | data=phantom"),
    (["data=folder", "data.root=/data/xray", "data.resize=squeeze", "model=cnn"],
     f"model=cnn [16, 32] | head=bce | {TAIL} | data=folder resize=squeeze"),
    (["model.weights=init.safetensors", "trainer.seeds=[1,3]"],
     "model=mlp [128, 128, 128] weights=init.safetensors | head=bce | optimizer=adam lr=0.001 | scheduler=step | "
     "batch 32 | 30 epochs | seeds 1,3 | data=phantom"),
], ids=["default", "custom_model", "balanced_augmented", "folder_resize", "weights"])
def test_the_settings_line_names_every_option_that_changes_training(compose_config, overrides, line):
    assert describe_settings(to_settings(compose_config(*overrides))) == line


def test_predict_says_how_many_images_it_wrote_and_where(run_composed, tmp_path, monkeypatch, capsys):
    job = run_composed("debug=smoke").dir
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(images / f"x{i}.png")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    predict.main([str(job), "images", "--out", "predictions.csv"])
    out = capsys.readouterr().out
    assert out == f"pneumolab-predict: wrote the predictions for 3 images to {tmp_path / 'predictions.csv'}\n"
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 4


def hydra_setting(cwd: Path, key: str, *overrides: str) -> str:
    """The resolved value of a hydra node, as `pneumolab ... --cfg hydra --package KEY --resolve` prints it."""
    proc = subprocess.run([*pneumolab_command(), *overrides, "--cfg", "hydra", "--package", key, "--resolve"],
                          cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().removeprefix(f"# @package {key}").strip()


def test_smoke_runs_and_sweeps_go_to_outputs_smoke_unless_a_folder_is_named(tmp_path):
    assert re.fullmatch(r"dir: outputs/smoke/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d+-[0-9a-f]{4}",
                        hydra_setting(tmp_path, "hydra.run", "debug=smoke").splitlines()[0])
    sweep = hydra_setting(tmp_path, "hydra.sweep", "debug=smoke")
    assert re.match(r"dir: outputs/smoke/multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d+-[0-9a-f]{4}\n", sweep), sweep
    assert hydra_setting(tmp_path, "hydra.run", "debug=smoke", "hydra.run.dir=mine").splitlines()[0] == "dir: mine"
    assert hydra_setting(tmp_path, "hydra.run", "experiment=report/fig2_ce", "debug=smoke").startswith(
        "dir: outputs/smoke/")
    assert hydra_setting(tmp_path, "hydra.run").startswith("dir: outputs/runs/")


@pytest.mark.slow
def test_a_smoke_run_lands_in_outputs_smoke_and_names_it_absolutely(tmp_path):
    proc = subprocess.run([*pneumolab_command(), "debug=smoke"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (job,) = tmp_path.glob("outputs/*/*/*")
    assert job.relative_to(tmp_path).parts[:2] == ("outputs", "smoke") and (job / "results.json").is_file()
    assert proc.stdout.strip().splitlines()[-1].endswith(f"-> {job}")


# --- pneumolab-cache list: where each file came from -----------------------------------------


def test_cache_list_names_the_folder_and_the_url_each_file_came_from(tmp_path, shared_xray, server, monkeypatch,
                                                                  capsys):
    root = copy_tiny_xray(shared_xray, tmp_path / "xray", per_class=3)
    store = tmp_path / "cache"
    load_folder(FolderDataConfig(root=str(root), cache_dir=str(store), image_size=16))
    load_folder(FolderDataConfig(root=str(root), cache_dir=str(store), image_size=16))  # recorded once
    url, served = server
    arrays = {f"{split}_{kind}": np.zeros((2, 28, 28) if kind == "images" else (2, 1), np.uint8)
              for split in ("train", "val", "test") for kind in ("images", "labels")}
    np.savez(served / "pneumoniamnist.npz", **arrays)
    monkeypatch.setitem(medmnist.MD5, 28, hashlib.md5((served / "pneumoniamnist.npz").read_bytes()).hexdigest())
    medmnist.fetch(PneumoniaMNISTDataConfig(cache_dir=str(store), url=url + "/pneumoniamnist{suffix}.npz"))
    np.savez(store / "folder" / ("a" * 64 + ".npz"), train=np.zeros((1, 28, 28), np.uint8))  # an older cache file

    assert cache.main(["--dir", str(store), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (decoded,) = [line for line in lines if "train " in line and "16x16" in line]
    assert decoded.endswith(f"  from {root} (16 px, center_crop)"), decoded
    (download,) = [line for line in lines if "pneumoniamnist.npz" in line]
    assert download.endswith(f"  from {url}/pneumoniamnist.npz (MD5 {medmnist.MD5[28]})"), download
    (older,) = [line for line in lines if "a" * 64 in line]
    assert older.endswith("  source not recorded (cached by an older pneumolab)"), older
    assert "decoded images (data=folder): 2 files" in "\n".join(lines)

    (store / "folder" / ("a" * 64 + ".npz")).unlink()
    cache.main(["--dir", str(store), "clear", "--images"])
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == [
        "folder", "pneumoniamnist.npz", "sources", "sources/pneumoniamnist.npz.txt"]
    cache.main(["--dir", str(store), "clear"])
    assert sorted(p.name for p in store.rglob("*")) == ["folder"]
