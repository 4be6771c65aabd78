"""`pneumolab-cache list|clear` on real cache files, and the log line about a large cache."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import subprocess_env
from pneumolab.data.cache import LARGE_CACHE_BYTES, mention_large_cache
from pneumolab.files import human_size


def cache_command() -> list[str]:
    script = Path(sys.executable).parent / "pneumolab-cache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pneumolab.cli.cache"]


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# The tests' stand-in for the official 28 px release: pneumolab keeps a download only once its MD5 is the
# release's, and the cache recognises one by that MD5. The command runs with this file's MD5 as the release's.
RELEASE = npz_bytes(train_images=np.zeros((10, 28, 28), np.uint8))
RELEASE_MD5 = hashlib.md5(RELEASE).hexdigest()
WITH_RELEASE_MD5 = ("import sys; import pneumolab.data.medmnist as m; m.MD5[28] = sys.argv[1]; "
                    "from pneumolab.cli.cache import main; sys.exit(main(sys.argv[2:]))")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITH_RELEASE_MD5, RELEASE_MD5, *args], capture_output=True,
                          text=True, env=env or subprocess_env(), timeout=60)


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache as pneumolab leaves it: a download, two decoded-image files, a cut-short write, and a user's file."""
    root = tmp_path / "cache"
    (root / "folder").mkdir(parents=True)
    (root / "pneumoniamnist.npz").write_bytes(RELEASE)
    np.savez(root / "folder" / ("a" * 64 + ".npz"), train=np.zeros((7, 28, 28), np.uint8), test=np.zeros((3, 28, 28), np.uint8))
    np.savez(root / "folder" / ("b" * 64 + ".npz"), train=np.zeros((2, 64, 64), np.uint8))
    (root / "folder" / f".{'c' * 64}.npz.0123456789ab.tmp").write_bytes(b"half")
    (root / "notes.txt").write_text("mine")
    return root


def test_list_names_every_cached_file_with_its_size_and_contents(cache):
    out = run("--dir", str(cache), "list")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert str(cache) in text
    download = (cache / "pneumoniamnist.npz").stat().st_size
    assert f"PneumoniaMNIST downloads (data=pneumoniamnist): 1 file, {human_size(download)}" in text
    assert "decoded images (data=folder): 3 files" in text
    assert "train 7x28x28, test 3x28x28" in text and "train 2x64x64" in text
    assert "left by an interrupted write" in text and "notes.txt" not in text
    total = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.name != "notes.txt")
    assert f"total {human_size(total)}" in text


def test_list_uses_pneumolab_data_by_default(cache):
    out = run("list", env=subprocess_env() | {"PNEUMOLAB_DATA": str(cache)})
    assert "3 files" in out.stdout


def test_clear_one_kind_then_everything_keeps_other_files(cache):
    out = run("--dir", str(cache), "clear", "--images")
    assert out.returncode == 0 and "deleted 3 files" in out.stdout
    assert not list((cache / "folder").iterdir()) and (cache / "pneumoniamnist.npz").is_file()
    out = run("--dir", str(cache), "clear")
    assert "deleted 1 file," in out.stdout
    assert sorted(p.name for p in cache.rglob("*")) == ["folder", "notes.txt"]


def test_unknown_command_is_a_usage_error(cache):
    out = subprocess.run([*cache_command(), "--dir", str(cache), "purge"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_clear_never_deletes_a_users_files_that_only_look_like_cache_files(cache):
    """Only what pneumolab wrote goes: names no user file shares by chance (a 64-digit key, a 12-digit token)
    and downloads whose content is the official release. A user's own file of a cache name stays, byte for
    byte, and both commands name it."""
    users = {
        "pneumoniamnist.npz": None,  # replaced below by a user's own subset under the release's name
        "pneumoniamnist_64.npz": npz_bytes(train_images=np.ones((3, 64, 64), np.uint8)),
        "pneumoniamnist_28.npz": RELEASE,  # the release's bytes, but never a name pneumolab gives it
        ".pneumoniamnist-notes.part": b"mine",
        "folder/scan.npz": npz_bytes(x=np.arange(3)),
        "folder/.scan.npz.tmp": b"mine",
        "folder/" + "a" * 63 + ".npz": b"mine",  # one digit short of a key
        "sources/notes.npz.txt": b"mine",
    }
    users["pneumoniamnist.npz"] = npz_bytes(train_images=np.full((4, 28, 28), 7, np.uint8))
    for name, data in users.items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(data)

    listed = run("--dir", str(cache), "list")
    assert listed.returncode == 0, listed.stderr
    assert "PneumoniaMNIST downloads (data=pneumoniamnist): 0 files" in listed.stdout
    assert "decoded images (data=folder): 3 files" in listed.stdout
    (kept_line,) = [line for line in listed.stdout.splitlines() if "pneumolab did not write" in line]
    assert kept_line.endswith("; clear leaves them")
    assert all(name in kept_line for name in users if not name.startswith("sources/"))

    out = run("--dir", str(cache), "clear")
    assert out.returncode == 0, out.stderr
    assert "deleted 3 files" in out.stdout and "kept 7 files with a cache file's name" in out.stdout
    for name, data in users.items():
        assert (cache / name).read_bytes() == data, name
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == sorted(
        [*users, "notes.txt"])


def test_a_download_is_recognised_by_its_md5_not_its_name(cache):
    out = run("--dir", str(cache), "clear", "--downloads")
    assert "deleted 1 file," in out.stdout and not (cache / "pneumoniamnist.npz").exists()


def test_human_size_uses_decimal_units():
    assert [human_size(n) for n in (0, 999, 1000, 4_900_000_000, 12_345_000_000_000)] == [
        "0 bytes", "999 bytes", "1.0 kB", "4.9 GB", "12.3 TB"]


def test_a_large_cache_is_mentioned_in_one_log_line(tmp_path, caplog):
    (tmp_path / "folder").mkdir()
    mention_large_cache(tmp_path)
    big = tmp_path / "folder" / ("d" * 64 + ".npz")
    with big.open("wb") as fh:
        fh.truncate(LARGE_CACHE_BYTES + 1)  # sparse: the size without the disk space
    with caplog.at_level(logging.INFO, logger="pneumolab"):
        mention_large_cache(tmp_path)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "2.0 GB" in caplog.text and "pneumolab-cache clear" in caplog.text
