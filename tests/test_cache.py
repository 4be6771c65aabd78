"""`pneumolab-cache list|clear` on real cache files, and the log line about a large cache."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import subprocess_env
from pneumolab.cache import LARGE_CACHE_BYTES, human_size, mention_large_cache


def cache_command() -> list[str]:
    script = Path(sys.executable).parent / "pneumolab-cache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pneumolab.cache"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*cache_command(), *args], capture_output=True, text=True, env=env or subprocess_env(),
                          timeout=60)


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache as pneumolab leaves it: a download, two decoded-image files, a cut-short write, and a user's file."""
    root = tmp_path / "cache"
    (root / "folder").mkdir(parents=True)
    np.savez(root / "pneumoniamnist.npz", train_images=np.zeros((10, 28, 28), np.uint8))
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
    out = run("--dir", str(cache), "purge")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_human_size_uses_decimal_units():
    assert [human_size(n) for n in (0, 999, 1000, 4_900_000_000, 12_345_000_000_000)] == [
        "0 B", "999 B", "1.0 kB", "4.9 GB", "12345.0 GB"]


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
