"""An image above the decoder's pixel limit is named as too large, with its size and the limit, by every
command that reads images: never "empty, truncated or not an image", never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import copy_tiny_xray, pneumolab_command, subprocess_env

pytestmark = pytest.mark.slow  # a real run and real images

LIMIT = 2 * Image.MAX_IMAGE_PIXELS


def run(cwd: Path, *args, tool: str = "pneumolab") -> subprocess.CompletedProcess:
    command = pneumolab_command() if tool == "pneumolab" else [str(Path(sys.executable).parent / tool)]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)


def paragraph(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.strip().splitlines() if line.startswith("pneumolab")]
    assert "Traceback" not in proc.stderr and "not an image" not in line
    return line


def test_a_15000_px_image_is_named_too_large_with_its_size_and_the_limit(tmp_path, shared_xray):
    root = copy_tiny_xray(shared_xray, tmp_path / "xray", per_class=3)
    huge = root / "train" / "PNEUMONIA" / "huge.png"
    Image.new("L", (15000, 15000)).save(huge)  # 225 megapixels in a 0.2 MB file
    words = (f"The image {huge} is 15000x15000 px (225,000,000 pixels), which is too large to decode: the limit "
             f"is {LIMIT:,} pixels")

    line = paragraph(run(tmp_path, "data=folder", f"data.root={root}", "trainer.epochs=1", "trainer.seeds=[0]",
                         f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith("pneumolab: error: ") and words in line and "shrink it" in line

    huge.unlink()
    job = tmp_path / "ok"
    proc = run(tmp_path, "data=folder", f"data.root={root}", "trainer.epochs=1", "trainer.seeds=[0]",
               f"hydra.run.dir={job}")
    assert proc.returncode == 0, proc.stderr
    big = tmp_path / "big.png"
    Image.new("L", (15000, 15000)).save(big)
    line = paragraph(run(tmp_path, job, big, tool="pneumolab-predict"))
    assert line.startswith("pneumolab-predict: error: ") and words.replace(str(huge), str(big)) in line
