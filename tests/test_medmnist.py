import hashlib
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumolab.data import medmnist
from pneumolab.config import PneumoniaMNISTDataConfig
from pneumolab.errors import PneumolabError
from pneumolab.data.medmnist import download, load_pneumoniamnist, plan_pneumoniamnist

SIZES = {"train": 20, "val": 6, "test": 8}


def write_npz(path: Path, size: int = 28, channels: int | None = None, **replace) -> Path:
    """A MedMNIST-format npz with a few random images per split; `replace` swaps arrays by key."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SIZES.items():
        shape = (n, size, size) if channels is None else (n, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PNEUMOLAB_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_loads_a_28px_npz(tmp_path, cache):
    path = write_npz(tmp_path / "p.npz")
    data = load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))
    assert [len(s) for s in data.splits().values()] == list(SIZES.values())
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (20, 1, 28, 28)
    assert data.train.labels.tolist() == [0, 1] * 10
    with np.load(path) as npz:
        assert np.array_equal(data.test.images[:, 0].numpy(), npz["test_images"])
    assert data.source == f"pneumoniamnist {path} (28 px)"
    assert not cache.exists()  # a local path is used in place, never copied


def test_rgb_images_become_grayscale(tmp_path, cache):
    path = write_npz(tmp_path / "rgb.npz", channels=3)
    data = load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))
    assert data.train.images.shape == (20, 1, 28, 28)
    with np.load(path) as npz:
        expected = np.asarray(Image.fromarray(npz["train_images"][0]).convert("L"))
    assert np.abs(data.train.images[0, 0].numpy().astype(int) - expected).max() <= 1


def test_single_channel_images_and_flat_labels(tmp_path, cache):
    path = write_npz(tmp_path / "c1.npz", channels=1, train_labels=np.zeros(20, dtype=np.int64))
    data = load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))
    assert data.train.images.shape == (20, 1, 28, 28) and data.train.labels.sum() == 0


def test_pickled_arrays_are_refused(tmp_path, cache):
    path = write_npz(tmp_path / "pickled.npz", train_images=np.array(["image"] * 20, dtype=object))
    with pytest.raises(PneumolabError, match="pickled"):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))


def test_label_2_is_refused_with_its_key(tmp_path, cache):
    labels = np.zeros((8, 1), np.uint8)
    labels[3] = 2
    path = write_npz(tmp_path / "bad.npz", test_labels=labels)
    with pytest.raises(PneumolabError, match=r"test_labels .* label value\(s\) \[2\]"):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))


def test_missing_key_is_refused_with_its_name(tmp_path, cache):
    path = write_npz(tmp_path / "nokey.npz", val_labels=None)
    with pytest.raises(PneumolabError, match="lacks the key.*val_labels"):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"train_images": np.zeros((20, 28, 28), np.float32)}, "train_images .* dtype float32"),
        ({"val_images": np.zeros((6, 28), np.uint8)}, r"val_images .* shape \(6, 28\)"),
        ({"test_labels": np.zeros((5, 1), np.uint8)}, r"test_labels .* shape \(5, 1\)"),
        ({"test_images": np.zeros((8, 32, 32), np.uint8)}, "different image sizes"),
    ],
)
def test_wrong_shapes_and_dtypes_are_refused(tmp_path, cache, replace, message):
    path = write_npz(tmp_path / "wrong.npz", **replace)
    with pytest.raises(PneumolabError, match=message):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))


def test_a_file_that_is_not_an_npz_is_refused(tmp_path, cache):
    path = tmp_path / "notes.npz"
    path.write_text("not an archive")
    with pytest.raises(PneumolabError, match="not an npz archive"):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))


def test_missing_path_says_how_to_fix(tmp_path, cache):
    with pytest.raises(PneumolabError, match="does not exist.*data.path"):
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(tmp_path / "absent.npz")))


def test_download_with_the_right_md5(tmp_path, server):
    url, served = server
    source = write_npz(served / "p.npz")
    dest = tmp_path / "cache" / "p.npz"
    download(f"{url}/p.npz", dest, md5_of(source))
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["p.npz"]


def test_download_with_a_wrong_md5_keeps_nothing(tmp_path, server):
    url, served = server
    source = write_npz(served / "p.npz")
    dest = tmp_path / "cache" / "p.npz"
    with pytest.raises(PneumolabError, match=f"MD5 {md5_of(source)}, expected 0+: .*deleted.*by hand"):
        download(f"{url}/p.npz", dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []  # neither the file nor its temp file


def test_download_without_network_says_how_to_fetch_by_hand(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "cache" / "p.npz"
    with pytest.raises(PneumolabError, match="Could not download.*by hand.*data.path="):
        download(f"http://127.0.0.1:{port}/p.npz", dest, "0" * 32, timeout=5)
    assert list(dest.parent.iterdir()) == []


def test_download_of_a_missing_file_is_an_error(tmp_path, server):
    url, _ = server
    with pytest.raises(PneumolabError, match="HTTP 404"):
        download(f"{url}/absent.npz", tmp_path / "p.npz", "0" * 32)


def test_concurrent_downloads_both_succeed(tmp_path, server):
    url, served = server
    source = write_npz(served / "p.npz", size=64)
    dest = tmp_path / "cache" / "p.npz"
    errors = []

    def fetch():
        try:
            download(f"{url}/p.npz", dest, md5_of(source))
        except Exception as exc:  # collected, so a failure in a thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in dest.parent.iterdir()] == ["p.npz"] and md5_of(dest) == md5_of(source)


def test_load_downloads_once_into_the_cache(cache, server, monkeypatch):
    url, served = server
    source = write_npz(served / "pneumoniamnist_64.npz", size=64)
    monkeypatch.setitem(medmnist.MD5, 64, md5_of(source))
    cfg = PneumoniaMNISTDataConfig(size=64, url=url + "/pneumoniamnist{suffix}.npz")
    first = load_pneumoniamnist(cfg)
    assert (cache / "pneumoniamnist_64.npz").is_file()
    assert first.image_shape == (1, 64, 64)
    source.unlink()  # the second load must not need the server
    second = load_pneumoniamnist(cfg)
    assert np.array_equal(first.train.images.numpy(), second.train.images.numpy())


def test_data_size_must_match_a_local_npz(tmp_path, cache):
    path = write_npz(tmp_path / "p64.npz", size=64)
    with pytest.raises(PneumolabError) as caught:
        load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))
    message = str(caught.value)
    assert f"{path} holds 64x64 px images, but data.size=28" in message and "Pass data.size=64" in message
    data = load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path), size=64))
    assert data.image_shape == (1, 64, 64)
    # Any size a local file holds, not only the release's four.
    odd = write_npz(tmp_path / "p40.npz", size=40)
    assert load_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(odd), size=40)).image_shape == (1, 40, 40)


def test_the_plan_reads_the_npz_headers_only(tmp_path, cache):
    path = write_npz(tmp_path / "p.npz", size=32, channels=3)
    plan = plan_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path), size=32))
    assert (plan.n_images, plan.image_shape, plan.cache_dir) == (sum(SIZES.values()), (32, 32), None)
    with pytest.raises(PneumolabError, match="holds 32x32 px images, but data.size=28"):
        plan_pneumoniamnist(PneumoniaMNISTDataConfig(path=str(path)))
    download_plan = plan_pneumoniamnist(PneumoniaMNISTDataConfig(size=64))
    assert (download_plan.n_images, download_plan.image_shape, download_plan.cache_dir) == (5856, (64, 64), cache)
