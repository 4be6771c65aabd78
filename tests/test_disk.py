"""Full, read-only and uncreatable output and cache folders: one paragraph naming the path and the
fix, exit code 2, refused before anything is written there (Hydra's .hydra/ included).

The disks are real: a 1 MB tmpfs, filled to the last byte or remounted read-only. Mounting
needs root with CAP_SYS_ADMIN; elsewhere those cases skip and say why. Root ignores file
mode bits, so read-only means a read-only mount, as for a full one means a full file system.
"""

from __future__ import annotations

import errno
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from conftest import pneumolab_command, subprocess_env
from pneumolab.cli.main import run_job
from pneumolab.config import config_dir
from pneumolab.config import register_configs
from pneumolab.errors import PneumolabError
from pneumolab.data.medmnist import download
from test_cli import copy_tiny_xray
from test_medmnist import md5_of, write_npz

FAST = ["trainer.epochs=1", "trainer.seeds=[0]"]


def mount_tmpfs(where: Path, size: str = "1m") -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); needs root with CAP_SYS_ADMIN")


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB file system, unmounted afterwards."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Write into `disk` until the file system refuses another byte."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert (disk / "filler").stat().st_size > 900_000


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*pneumolab_command(), *args, *FAST], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def check_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pneumolab: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def run_in_process(job: Path, *overrides: str) -> float | None:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST, *overrides])
    return run_job(cfg, job, list(overrides))


@pytest.mark.slow
def test_a_full_disk_is_refused_before_hydra_writes_anything(tmp_path, small_disk):
    fill(small_disk)
    before = entries(small_disk)
    run_dir, sweep_dir = small_disk / "run", small_disk / "sweep"
    with ThreadPoolExecutor(max_workers=2) as pool:
        run, sweep = pool.map(lambda args: run_cli(tmp_path, *args),
                              [[f"hydra.run.dir={run_dir}"], ["-m", "head=bce,ce", f"hydra.sweep.dir={sweep_dir}"]])
    check_refusal(run, f"Cannot write the output folder {run_dir}", "0 bytes free", "hydra.run.dir=")
    check_refusal(sweep, f"Cannot write the output folder {sweep_dir}", "0 bytes free", "hydra.sweep.dir=")
    # No empty .hydra/config.yaml, no multirun.yaml, no lock file: nothing at all.
    assert entries(small_disk) == before


@pytest.mark.slow
def test_a_read_only_disk_is_refused_for_existing_and_missing_folders(tmp_path, small_disk):
    existing = small_disk / "outputs"
    existing.mkdir()
    remount_read_only(small_disk)
    missing = small_disk / "not" / "yet" / "run"
    with ThreadPoolExecutor(max_workers=2) as pool:
        present, absent = pool.map(lambda d: run_cli(tmp_path, f"hydra.run.dir={d}"), [existing, missing])
    check_refusal(present, str(existing), "read-only file system", "hydra.run.dir=")
    check_refusal(absent, str(missing), "does not exist and cannot be created", "read-only file system")
    assert entries(small_disk) == ["outputs"]


def test_an_output_folder_below_a_file_is_refused(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    proc = run_cli(tmp_path, f"hydra.run.dir={blocker / 'run'}")
    check_refusal(proc, f"{blocker} is a file, not a folder", "hydra.run.dir=")
    assert blocker.read_text() == "not a folder\n"


@pytest.fixture
def xray(tmp_path, shared_xray) -> Path:
    root = tmp_path / "xray"
    copy_tiny_xray(shared_xray, root, per_class=3)
    return root


def test_a_folder_cache_without_room_is_refused_before_decoding(tmp_path, small_disk, xray):
    # 12 images at 300 px make a 1.1 MB cache: more than the whole disk.
    with pytest.raises(PneumolabError) as caught:
        run_in_process(tmp_path / "run", "data=folder", f"data.root={xray}", "data.image_size=300",
                       f"data.cache_dir={small_disk}")
    message = str(caught.value)
    assert f"Cannot write the data cache {small_disk / 'folder'}" in message and "data.cache_dir" in message
    assert "about 1.1 MB are needed" in message
    assert entries(small_disk) == [] and not (tmp_path / "run").exists()


def test_a_read_only_cache_is_refused_for_folders_and_downloads(tmp_path, small_disk, xray):
    remount_read_only(small_disk)
    for overrides in (["data=folder", f"data.root={xray}"],
                      ["data=pneumoniamnist", "data.url='http://127.0.0.1:9/p{suffix}.npz'"]):
        with pytest.raises(PneumolabError, match=r"Cannot write the data cache .* read-only file system.* data.cache_dir"):
            run_in_process(tmp_path / "run", *overrides, f"data.cache_dir={small_disk / 'cache'}")
    assert entries(small_disk) == []


def test_a_download_larger_than_the_free_space_is_refused_before_streaming(small_disk, server):
    url, served = server
    rng = np.random.default_rng(0)
    # Random pixels do not compress: a 2 MB file for a 1 MB disk.
    source = write_npz(served / "p.npz", size=28, train_images=rng.integers(0, 256, (2600, 28, 28), dtype=np.uint8))
    with pytest.raises(PneumolabError) as caught:
        download(f"{url}/p.npz", small_disk / "p.npz", md5_of(source))
    message = str(caught.value)
    assert f"Cannot download {url}/p.npz (2.1 MB) into {small_disk}" in message
    assert "free" in message and "data.cache_dir" in message and "by hand" in message
    assert entries(small_disk) == []
