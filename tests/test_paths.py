"""Paths as users have them: spaces, accents and other scripts, read-only data, unusable caches."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import pneumolab_command, subprocess_env
from pneumolab.config import FolderDataConfig, PneumoniaMNISTDataConfig
from pneumolab.data.load import load_data
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_write_text
from pneumolab.data.medmnist import download
from test_cli import copy_tiny_xray
from test_medmnist import md5_of, write_npz


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry below `folder` with its size, modification time and mode."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in folder.rglob("*")}


def set_writable(folder: Path, writable: bool) -> None:
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~write_bits)


@pytest.mark.slow
def test_unusual_paths_and_a_read_only_data_folder(tmp_path, shared_xray):
    root = tmp_path / "données rx" / "胸部 X線"
    copy_tiny_xray(shared_xray, root, per_class=4)
    job = tmp_path / "sorties ü" / "run 1"
    cache = tmp_path / "cache é"
    env = {**subprocess_env(), "PNEUMOLAB_DATA": str(cache)}
    # Running as root ignores these bits: what proves the folder is only read is that nothing
    # in it changes.
    set_writable(root, False)
    before = snapshot(root)
    try:
        # Hydra's override syntax takes non-ASCII characters only inside quotes.
        proc = subprocess.run(
            [*pneumolab_command(), "data=folder", f'data.root="{root}"', "trainer.epochs=1", "trainer.seeds=[0]",
             f'hydra.run.dir="{job}"'],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        after = snapshot(root)
    finally:
        set_writable(root, True)
    assert proc.returncode == 0, proc.stderr
    assert after == before
    results = json.loads((job / "results.json").read_text())
    assert str(root) in results["data"] and results["config"]["data"]["root"] == str(root)
    assert all((job / name).is_file() for name in ("metrics.csv", "curves.png", "roc.png"))
    assert [p.suffix for p in (cache / "folder").iterdir()] == [".npz"]


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask-022", "umask-002"])
def test_written_files_follow_the_umask(tmp_path, server, umask):
    # Results and caches shared with a group must be readable by it, as any new file would be.
    url, served = server
    source = write_npz(served / "p.npz")
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.json", "{}\n")
        download(f"{url}/p.npz", tmp_path / "cache" / "p.npz", md5_of(source))
    finally:
        os.umask(previous)
    for path in (tmp_path / "results.json", tmp_path / "cache" / "p.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.fixture
def cache_blocked_by_a_file(tmp_path, monkeypatch) -> Path:
    """A cache location that cannot become a folder, the way a full or read-only disk fails for root too."""
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    monkeypatch.setenv("PNEUMOLAB_DATA", str(blocker))
    return blocker


def test_an_unwritable_cache_still_loads_a_folder(tmp_path, shared_xray, cache_blocked_by_a_file, caplog):
    root = tmp_path / "xray"
    copy_tiny_xray(shared_xray, root, per_class=3)
    with caplog.at_level(logging.WARNING, logger="pneumolab.data.folder"):
        data = load_data(FolderDataConfig(root=str(root)))
    assert len(data.test) == 6
    assert f"Could not write the image cache {cache_blocked_by_a_file / 'folder'}" in caplog.text


def test_an_unwritable_cache_stops_a_download_with_the_way_around_it(cache_blocked_by_a_file):
    with pytest.raises(PneumolabError, match="Cannot write the download cache .* Set data.cache_dir .* by hand"):
        load_data(PneumoniaMNISTDataConfig(url="http://127.0.0.1:9/pneumoniamnist{suffix}.npz"))
