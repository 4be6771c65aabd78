import functools
import http.server
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_XRAY = REPO.parent / "shared" / "data" / "chest_xray"
START_SLURM = "as root: scripts/local_slurm.sh start"


# --- services some tests need: a SLURM cluster, a CUDA GPU ------------------------------------


def slurm_unavailable(path: str | None = None) -> str | None:
    """Why no SLURM cluster takes jobs from this machine, or None when one does.

    "SLURM is not installed" (no sbatch/sinfo on `path`, default $PATH), "the SLURM controller
    is unreachable" (sinfo fails or hangs: slurmctld is down or unreachable), or "no SLURM node
    takes jobs" (the controller answers, but every node is down or drained).
    Every test that submits SLURM jobs skips (or, in CI, fails) with this reason.
    """
    return _slurm_verdict(os.environ.get("PATH", os.defpath) if path is None else path)


@functools.lru_cache(maxsize=8)
def _slurm_verdict(path: str) -> str | None:
    missing = [tool for tool in ("sbatch", "sinfo") if shutil.which(tool, path=path) is None]
    if missing:
        return f"SLURM is not installed: {' and '.join(missing)} not found on PATH ({START_SLURM})"
    sinfo = shutil.which("sinfo", path=path)
    try:
        state = subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True, timeout=30,
                               env={**os.environ, "PATH": path}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"the SLURM controller is unreachable: `sinfo` did not answer in 30 s ({START_SLURM})"
    except OSError as exc:
        return f"the SLURM controller is unreachable: `sinfo` did not start ({exc}) ({START_SLURM})"
    said = " ".join((state.stdout + state.stderr).split())
    if state.returncode != 0:
        return f"the SLURM controller is unreachable: `sinfo` exited {state.returncode}: {said!r} ({START_SLURM})"
    if not {"idle", "mixed", "allocated", "completing"} & set(state.stdout.split()):
        return f"no SLURM node takes jobs (sinfo: {said!r}; {START_SLURM})"
    return None


def gpu_unavailable() -> str | None:
    """Why no CUDA GPU is usable here, or None when one is."""
    return None if torch.cuda.is_available() else "no CUDA GPU: torch.cuda.is_available() is False"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep downloads and image caches of every test out of the user's ~/.cache."""
    monkeypatch.setenv("PNEUMOLAB_DATA", str(tmp_path_factory.getbasetemp() / "pneumolab-cache"))


@pytest.fixture
def shared_xray() -> Path:
    if not SHARED_XRAY.is_dir():
        pytest.skip(f"real images not found at {SHARED_XRAY}")
    return SHARED_XRAY


def copy_tiny_xray(src: Path, dst: Path, per_class: int) -> Path:
    """The first `per_class` images of each class of train/ and test/, copied in the Kaggle layout."""
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            target = dst / split / cls
            target.mkdir(parents=True)
            for path in sorted((src / split / cls).iterdir())[:per_class]:
                shutil.copy(path, target / path.name)
    return dst


def pneumolab_command() -> list[str]:
    """The installed console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "pneumolab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pneumolab.cli.main"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def restore_torch_state():
    """run_job sets process-wide torch options; give the next test the ones it had."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


# --- Hydra's compose API: the real config, and a job run in-process ----------------------------


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """compose(*overrides): pneumolab's real config, composed as the `pneumolab` command does.

    The Hydra-app testing idiom: the package's schemas registered, then
    `initialize_config_dir(conf/)` + `compose("config", overrides)`; no subprocess, no run dir.
    """
    from hydra import compose, initialize_config_dir

    from pneumolab.config import config_dir
    from pneumolab.config import register_configs

    register_configs()

    def composed(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return composed


@dataclass(frozen=True)
class ComposedJob:
    dir: Path  # the job directory (results.json, metrics.csv, ...)
    cfg: DictConfig  # the composed config it ran
    results: dict  # its results.json


@pytest.fixture
def run_composed(compose_config, tmp_path, restore_torch_state) -> Callable[..., ComposedJob]:
    """run(*overrides): compose the config, then run one job in-process on one core
    (pneumolab.cli.main.run_job) into a fresh folder under tmp_path."""
    from pneumolab.cli.main import run_job

    jobs = itertools.count()

    def run(*overrides: str) -> ComposedJob:
        cfg = compose_config(*overrides)
        job_dir = tmp_path / f"job{next(jobs)}"
        job_dir.mkdir()
        run_job(cfg, job_dir, list(overrides), cores=1)
        return ComposedJob(job_dir, cfg, json.loads((job_dir / "results.json").read_text()))

    return run
