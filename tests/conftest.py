import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_XRAY = REPO.parent / "shared" / "data" / "chest_xray"


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
    return [str(script)] if script.exists() else [sys.executable, "-m", "pneumolab.cli"]


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
