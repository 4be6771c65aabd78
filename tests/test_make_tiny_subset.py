import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumolab.config import FolderDataConfig
from pneumolab.data.folder import load_folder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_subset.py"
SHARED_XRAY = Path(__file__).resolve().parents[2] / "shared/data/chest_xray"

_spec = importlib.util.spec_from_file_location("make_tiny_subset", SCRIPT)
make_tiny_subset = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_tiny_subset)


@pytest.fixture
def real_xray() -> Path:
    if not SHARED_XRAY.is_dir():
        pytest.skip(f"the real chest X-rays are not at {SHARED_XRAY} (the shared data folder beside the repo)")
    return SHARED_XRAY


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOLAB_DATA", str(tmp_path / "cache"))


def names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_folder_source_from_the_command_line(tmp_path, real_xray):
    dst = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(real_xray), str(dst), "--per-class", "3"],
        capture_output=True, text=True, check=True,
    )
    assert "train: 3 NORMAL, 3 PNEUMONIA" in result.stdout
    assert not (dst / "val").exists()  # the source has no val/
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            copied = list((dst / split / cls).iterdir())
            assert len(copied) == 3
            assert all(p.read_bytes() == (real_xray / split / cls / p.name).read_bytes() for p in copied)
    data = load_folder(FolderDataConfig(root=str(dst)))
    assert len(data.train) + len(data.val) == 6 and len(data.test) == 6


def test_folder_sampling_follows_the_seed(tmp_path, real_xray):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert make_tiny_subset.main([str(real_xray), str(tmp_path / name), "--per-class", "4", "--seed", str(seed)]) == 0
    assert names(tmp_path / "a") == names(tmp_path / "b") != names(tmp_path / "c")


def test_npz_source_becomes_png_folders(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 30), ("val", 10), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3 == 0).astype(np.uint8).reshape(n, 1)
    np.savez(tmp_path / "p.npz", **arrays)
    assert make_tiny_subset.main([str(tmp_path / "p.npz"), str(tmp_path / "tiny"), "--per-class", "3"]) == 0
    for split in ("train", "val", "test"):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            pngs = sorted((tmp_path / "tiny" / split / cls).glob("*.png"))
            assert len(pngs) == 3
            index = int(pngs[0].stem.split("_")[1])
            assert arrays[f"{split}_labels"][index, 0] == label
            assert np.array_equal(np.asarray(Image.open(pngs[0])), arrays[f"{split}_images"][index])
    data = load_folder(FolderDataConfig(root=str(tmp_path / "tiny")))
    assert data.image_shape == (1, 28, 28) and len(data.test) == 6


def test_fewer_images_than_asked_takes_them_all(tmp_path):
    arrays = {f"{s}_images": np.zeros((4, 8, 8), np.uint8) for s in ("train", "test")}
    arrays.update({f"{s}_labels": np.array([0, 1, 1, 1]) for s in ("train", "test")})
    np.savez(tmp_path / "p.npz", **arrays)
    assert make_tiny_subset.main([str(tmp_path / "p.npz"), str(tmp_path / "tiny"), "--per-class", "2"]) == 0
    assert len(list((tmp_path / "tiny" / "train" / "NORMAL").iterdir())) == 1
    assert len(list((tmp_path / "tiny" / "train" / "PNEUMONIA").iterdir())) == 2


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda tmp: (tmp / "dst").mkdir() or (tmp / "dst" / "x").touch(), ["{src}", "{tmp}/dst", "--per-class", "2"], "not an empty folder"),
        (lambda tmp: None, ["{tmp}/absent", "{tmp}/dst", "--per-class", "2"], "does not exist"),
        (lambda tmp: None, ["{src}", "{tmp}/dst", "--per-class", "0"], "at least 1"),
    ],
)
def test_bad_arguments_exit_with_a_message(tmp_path, capsys, setup, args, message):
    src = tmp_path / "p.npz"
    np.savez(src, train_images=np.zeros((2, 8, 8), np.uint8))
    setup(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        make_tiny_subset.main([a.format(src=src, tmp=tmp_path) for a in args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"train_images": np.array(["x", "y"], dtype=object), "train_labels": np.zeros(2)}, "pickled"),
        ({"train_images": np.zeros((2, 8, 8), np.uint8), "train_labels": np.zeros(2)}, "lacks test_images"),
    ],
)
def test_bad_npz_is_refused_and_leaves_no_half_copy(tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert make_tiny_subset.main([str(tmp_path / "bad.npz"), str(tmp_path / "tiny"), "--per-class", "1"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "tiny").exists()
