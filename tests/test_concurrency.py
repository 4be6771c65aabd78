"""Processes that fill the same cache at the same moment all succeed, and the cache stays whole.

This is what parallel sweep jobs do on a fresh machine: each finds no cache, decodes the
images (or downloads the npz) and writes the same file. Each process below imports
first, then waits at a barrier, so their work really overlaps.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pneumolab.data.folder import decode_images, list_images
from pneumolab.data.medmnist import read_npz
from test_cli import copy_tiny_xray
from test_medmnist import md5_of, write_npz

pytestmark = pytest.mark.slow  # several pneumolab processes at once

PROCESSES = 3

# argv: ready file, go file, then the task's own arguments. Each task prints one JSON line.
BARRIER = """
import sys, time
from pathlib import Path

def wait_for_the_others():
    Path(sys.argv[1]).touch()
    while not Path(sys.argv[2]).exists():
        time.sleep(0.001)
"""

BUILD_FOLDER_CACHE = BARRIER + """
import hashlib, json
from pneumolab.config import FolderDataConfig
from pneumolab.data.folder import load_folder

root, cache = sys.argv[3:5]
wait_for_the_others()
found = sorted(p.name for p in Path(cache, "folder").glob("*.npz"))
data = load_folder(FolderDataConfig(root=root, cache_dir=cache))
digest = hashlib.sha256(b"".join(s.images.numpy().tobytes() for s in data.splits().values())).hexdigest()
print(json.dumps({"found": found, "digest": digest}))
"""

DOWNLOAD = BARRIER + """
import json
from pneumolab.data.medmnist import download, read_npz

url, dest, md5 = sys.argv[3:6]
wait_for_the_others()
download(url, Path(dest), md5)
print(json.dumps({"train": len(read_npz(Path(dest))["train"])}))
"""


def run_together(script: str, tmp_path: Path, *args: str) -> list[dict]:
    """Start PROCESSES copies of `script`, release them at once, return what each printed."""
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{i}" for i in range(PROCESSES)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(ready), str(go), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ready in readies
    ]
    while not all(ready.exists() for ready in readies):
        assert all(proc.poll() is None for proc in procs), [proc.communicate() for proc in procs]
        time.sleep(0.01)
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _ in outputs]


def test_processes_building_the_same_folder_cache_at_once(tmp_path, shared_xray):
    root, cache = tmp_path / "xray", tmp_path / "cache"
    copy_tiny_xray(shared_xray, root, per_class=8)
    reports = run_together(BUILD_FOLDER_CACHE, tmp_path, str(root), str(cache))

    assert all(report["found"] == [] for report in reports)  # each one decoded and wrote the cache
    assert len({report["digest"] for report in reports}) == 1
    (npz,) = (cache / "folder").iterdir()  # one cache file, no temp files
    assert npz.suffix == ".npz"
    with np.load(npz, allow_pickle=False) as cached:
        for split, files in list_images(root).items():
            assert np.array_equal(cached[split], decode_images([f.path for f in files], 28, "center_crop")), split


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files slowly, in small pieces, and records how many transfers ran at once."""

    lock = threading.Lock()
    active = 0
    most_active = 0

    def copyfile(self, source, outputfile) -> None:
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
        try:
            while chunk := source.read(8 * 1024):
                outputfile.write(chunk)
                time.sleep(0.02)
        finally:
            with cls.lock:
                cls.active -= 1

    def log_message(self, *args) -> None:
        pass


def test_processes_downloading_the_same_npz_at_once(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    source = write_npz(served / "pneumoniamnist_64.npz", size=64)  # about 140 kB: 17 pieces, 0.35 s
    # A subclass of its own, so the counts start from zero.
    handler = type("Handler", (SlowHandler,), {"active": 0, "most_active": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=served))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    dest = tmp_path / "cache" / "pneumoniamnist_64.npz"
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{source.name}"
        reports = run_together(DOWNLOAD, tmp_path, url, str(dest), md5_of(source))
    finally:
        httpd.shutdown()
        httpd.server_close()

    assert handler.most_active >= 2  # the downloads overlapped
    assert reports == [{"train": 20}] * PROCESSES
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no partial downloads left
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5_of(source)
    assert len(read_npz(dest)["test"]) == 8
