import os
import sys
from pathlib import Path

import pytest

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


def pneumolab_command() -> list[str]:
    """The installed console script of the interpreter running the tests."""
    script = Path(sys.executable).parent / "pneumolab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pneumolab.cli"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    return env
