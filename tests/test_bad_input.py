"""Every bad input gets one paragraph that names the file or key and the fix, never a traceback.

Each case below builds its bad input for real (corrupted copies of real X-rays, npz
files, a local web server, a closed port) and is refused by `run_job`, the function
behind every job, before any results.json exists. The CLI's handling of the error is
shared by all cases, so a selection of them also runs as a real `pneumolab` process.
OS litter in a class folder (.DS_Store) is not bad input: it is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import pneumolab_command, subprocess_env
from pneumolab.cli.main import run_job
from pneumolab.config import config_dir
from pneumolab.config import register_configs
from pneumolab.errors import PneumolabError
from test_cli import copy_tiny_xray
from test_medmnist import write_npz

# Small enough that a case which is not refused still finishes in seconds.
FAST = ["trainer.epochs=1", "trainer.seeds=[0]"]


@dataclass(frozen=True)
class Inputs:
    """Where one case builds its bad input."""

    root: Path
    xray_source: Path
    url: str  # base URL of the local web server, serving `served`
    served: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def job(self) -> Path:
        return self.root / "run"

    def xray(self) -> Path:
        """Three real JPEGs per class in train/ and test/ (no val/)."""
        dst = self.root / "xray"
        copy_tiny_xray(self.xray_source, dst, per_class=3)
        return dst

    def folder_overrides(self, root: Path) -> list[str]:
        return ["data=folder", f"data.root={root}", f"data.cache_dir={self.cache}"]

    def npz_overrides(self, **replace: np.ndarray | None) -> tuple[list[str], Path]:
        path = write_npz(self.root / "data.npz", **replace)
        return ["data=pneumoniamnist", f"data.path={path}"], path


@dataclass(frozen=True)
class Refusal:
    overrides: list[str]
    needles: list[str]  # what the message must contain: the file or key, and the fix
    downloads: bool = False  # then nothing may be left in the cache: no bad file, no partial one


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Inputs], Refusal]
    cli: bool = False  # also run as a `pneumolab` process


def config_case(case_id: str, overrides: list[str], fix: str, cli: bool = False) -> Case:
    """A value that the config refuses; the bad key is the last override's."""
    key = overrides[-1].split("=")[0]
    return Case(case_id, lambda _: Refusal(overrides, [key, fix]), cli)


def unreadable_file(name: str, write: Callable[[Path, bytes], None]) -> Callable[[Inputs], Refusal]:
    """A folder dataset with one bad file among the PNEUMONIA training images."""

    def build(inputs: Inputs) -> Refusal:
        root = inputs.xray()
        bad = root / "train" / "PNEUMONIA" / name
        write(bad, next((root / "train" / "NORMAL").iterdir()).read_bytes())
        return Refusal(inputs.folder_overrides(root), [f"Cannot read the image {bad}", "delete it"])

    return build


def missing_class_folder(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    for path in (root / "test" / "NORMAL").iterdir():
        path.unlink()
    (root / "test" / "NORMAL").rmdir()
    return Refusal(inputs.folder_overrides(root), [str(root / "test" / "NORMAL"), "NORMAL and PNEUMONIA"])


def one_class_present(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    for path in (root / "train" / "PNEUMONIA").iterdir():
        path.unlink()
    return Refusal(inputs.folder_overrides(root), [str(root), "no PNEUMONIA images", "Add PNEUMONIA images"])


def empty_split(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    for path in (root / "test").glob("*/*"):
        path.unlink()
    return Refusal(inputs.folder_overrides(root), ["test split", str(root), "is empty", "Add images"])


def missing_folder(inputs: Inputs) -> Refusal:
    root = inputs.root / "no such folder"
    return Refusal(inputs.folder_overrides(root), [str(root), "data.root", "{train,val,test}/{NORMAL,PNEUMONIA}"])


def missing_npz(inputs: Inputs) -> Refusal:
    path = inputs.root / "absent.npz"
    return Refusal(["data=pneumoniamnist", f"data.path={path}"], [f"data.path={str(path)!r}", "drop data.path"])


def pickled_npz(inputs: Inputs) -> Refusal:
    overrides, path = inputs.npz_overrides(train_labels=np.array([[0], [1]] * 10, dtype=object))
    return Refusal(overrides, [str(path), "pickled", "Save plain numeric arrays"])


def label_2(inputs: Inputs) -> Refusal:
    labels = np.zeros((8, 1), np.uint8)
    labels[5] = 2
    overrides, path = inputs.npz_overrides(test_labels=labels)
    return Refusal(overrides, [str(path), "test_labels", "[2]", "0 (normal) and 1 (pneumonia)"])


def missing_keys(inputs: Inputs) -> Refusal:
    overrides, path = inputs.npz_overrides(val_images=None, val_labels=None)
    return Refusal(overrides, [str(path), "val_images, val_labels", "re-download it"])


def wrong_shape(inputs: Inputs) -> Refusal:
    overrides, path = inputs.npz_overrides(train_images=np.zeros((20, 28 * 28), np.uint8))
    return Refusal(overrides, [str(path), "train_images", "(20, 784)", "expected (N, H, W)"])


def download_overrides(inputs: Inputs, url: str) -> list[str]:
    return ["data=pneumoniamnist", f"data.url={url}", f"data.cache_dir={inputs.cache}"]


def md5_mismatch(inputs: Inputs) -> Refusal:
    # A well-formed npz, but not the official release: its MD5 differs from the pinned one.
    write_npz(inputs.served / "pneumoniamnist.npz")
    url = f"{inputs.url}/pneumoniamnist.npz"
    needles = [url, "expected 28209eda62fecd6e6a2d98b1501bb15f", "deleted", "by hand", "data.path="]
    return Refusal(download_overrides(inputs, url), needles, downloads=True)


def no_network(inputs: Inputs) -> Refusal:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/pneumoniamnist.npz"
    needles = [url, "network", "Download it by hand", "data.path="]
    return Refusal(download_overrides(inputs, url), needles, downloads=True)


def cuda_without_gpu(_: Inputs) -> Refusal:
    no_gpu = "trainer.device=cuda was asked for, but this machine has no usable CUDA GPU"
    return Refusal(["trainer.device=cuda"], [no_gpu, "trainer.device=cpu"])


def split_without(split: str, cls: int) -> Callable[[Inputs], Refusal]:
    """An npz whose `split` has only labels of the other class."""

    def build(inputs: Inputs) -> Refusal:
        n = {"train": 20, "val": 6, "test": 8}[split]
        overrides, path = inputs.npz_overrides(**{f"{split}_labels": np.full((n, 1), 1 - cls, np.uint8)})
        missing = ("NORMAL", "PNEUMONIA")[cls]
        return Refusal(overrides, [f"The {split} split of pneumoniamnist {path}", f"no {missing} images",
                                   f"Add {missing} images to the {split} split"])

    return build


def npz_of_another_size(inputs: Inputs) -> Refusal:
    path = write_npz(inputs.root / "p64.npz", size=64)
    return Refusal(["data=pneumoniamnist", f"data.path={path}"], [f"{path} holds 64x64 px images", "data.size=64"])


def broken_link(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    link = root / "test" / "PNEUMONIA" / "moved.jpeg"
    link.symlink_to(inputs.root / "elsewhere.jpeg")
    return Refusal(inputs.folder_overrides(root), [f"{link} is a broken symbolic link", "Delete the link"])


LOOP_FIX = "is a symbolic link that leads back to itself"


def root_loop(inputs: Inputs) -> Refusal:
    root = inputs.root / "chest_xray"
    root.symlink_to(root)
    return Refusal(inputs.folder_overrides(root), [f"data.root='{root}'", f"{root} {LOOP_FIX}", "the real folder"])


def class_folder_loop(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    shutil.rmtree(root / "test" / "PNEUMONIA")
    (root / "test" / "PNEUMONIA").symlink_to("PNEUMONIA")
    return Refusal(inputs.folder_overrides(root), [f"{root / 'test' / 'PNEUMONIA'} {LOOP_FIX}", "Delete the link"])


def looping_link_among_images(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    link = root / "train" / "NORMAL" / "scans"
    link.symlink_to(link.name)
    return Refusal(inputs.folder_overrides(root), [f"{link} {LOOP_FIX}", "Delete the link"])


def linked_instead_of_copied(folder: str, target: str, twins: tuple[str, str], n: int,
                             harm: str) -> Callable[[Inputs], Refusal]:
    """A folder dataset whose `folder` is a link to `target`; the message names the first image as found
    in both `twins` folders, the `n` files reached a second time, and the `harm`."""

    def build(inputs: Inputs) -> Refusal:
        root = inputs.xray()
        name = sorted((root / twins[0]).iterdir())[0].name
        shutil.rmtree(root / folder)
        (root / folder).symlink_to(target, target_is_directory=True)
        pair = f"{root / twins[0] / name} and {root / twins[1] / name} are both {(root / twins[0] / name).resolve()}"
        return Refusal(inputs.folder_overrides(root), [
            "The same file is reached twice", pair, f"({n} file(s) in all", harm, "replace it with a folder of its own"])

    return build


def image_in_both_splits(inputs: Inputs) -> Refusal:
    root = inputs.xray()
    image = sorted((root / "train" / "NORMAL").iterdir())[0]
    (root / "test" / "NORMAL" / "also.jpeg").symlink_to(image)
    return Refusal(inputs.folder_overrides(root), [
        f"{image} and {root / 'test' / 'NORMAL' / 'also.jpeg'} are both {image}", "(1 file(s) in all",
        "must not be validated or tested on too"])


def too_large(_: Inputs) -> Refusal:
    return Refusal(["data.image_size=100000"], ["images of 100000x100000 px needs about", "is available",
                                                 "Lower the image size"])


def truncate(path: Path, jpeg: bytes) -> None:
    path.write_bytes(jpeg[: len(jpeg) // 2])


SEED_FIX = "use a seed from 0 to 2**64 - 1"
CASES = [
    Case("folder-missing", missing_folder),
    Case("class-folder-missing", missing_class_folder),
    Case("one-class-present", one_class_present, cli=True),
    Case("empty-split", empty_split),
    Case("truncated-jpeg", unreadable_file("cut.jpeg", truncate), cli=True),
    Case("zero-byte-file", unreadable_file("empty.jpeg", lambda p, _: p.write_bytes(b""))),
    Case("text-file", unreadable_file("notes.txt", lambda p, _: p.write_text("radiologist's notes\n"))),
    Case("npz-missing", missing_npz),
    Case("npz-pickled", pickled_npz, cli=True),
    Case("npz-label-2", label_2),
    Case("npz-missing-keys", missing_keys),
    Case("npz-wrong-shape", wrong_shape),
    Case("download-md5-mismatch", md5_mismatch, cli=True),
    Case("download-no-network", no_network, cli=True),
    config_case("image-size-0", ["data.image_size=0"], "use at least 8 pixels"),
    config_case("epochs-0", ["trainer.epochs=0"], "train for at least 1 epoch", cli=True),
    config_case("batch-size-0", ["data.batch_size=0"], "use a batch size of at least 1"),
    config_case("unknown-head", ["head.name=mse"], "choose head=bce (one logit, sigmoid > 0.5) or head=ce"),
    config_case("step-size-0", ["scheduler.step_size=0"], "use a StepLR step size of at least 1 epoch"),
    config_case("no-seeds", ["trainer.seeds=[]"], "give at least one seed"),
    config_case("negative-seed", ["trainer.seeds=[-1]"], "use seeds from 0 to 2**64 - 1"),
    config_case("huge-seed", ["trainer.seeds=[18446744073709551616]"], "use seeds from 0 to 2**64 - 1"),
    config_case("negative-data-seed", ["data.seed=-1"], SEED_FIX),
    config_case("negative-split-seed", ["data=folder", "data.root=.", "data.split_seed=-1"], SEED_FIX),
    config_case("unknown-resize", ["data=folder", "data.root=.", "data.resize=stretch"],
                "use center_crop (the largest centred square, as PneumoniaMNIST) or squeeze (the whole image)",
                cli=True),
    config_case("phantom-without-normals", ["data.pneumonia_fraction_train=1.0"], "use a fraction in (0, 1)"),
    config_case("adam-betas", ["optimizer.betas=[0.9]"], "give two decay rates in [0, 1)"),
    config_case("sgd-momentum", ["optimizer=sgd", "optimizer.momentum=-0.5"], "use a momentum >= 0"),
    config_case("cosine-t-max", ["scheduler=cosine", "scheduler.t_max=-3"], "use null (anneal over trainer.epochs)"),
    config_case("unknown-device", ["trainer.device=tpu"], "use auto, cpu, cuda or cuda:N"),
    Case("cuda-without-gpu", cuda_without_gpu, cli=True),
    Case("npz-test-without-pneumonia", split_without("test", 1), cli=True),
    Case("npz-val-without-normal", split_without("val", 0)),
    Case("npz-train-without-normal", split_without("train", 0)),
    Case("npz-of-another-size", npz_of_another_size),
    Case("broken-link", broken_link, cli=True),
    Case("root-loop", root_loop, cli=True),
    Case("class-folder-loop", class_folder_loop),
    Case("looping-link-among-images", looping_link_among_images),
    Case("class-linked-to-other-class", linked_instead_of_copied(
        "train/PNEUMONIA", "NORMAL", ("train/NORMAL", "train/PNEUMONIA"), 3, "cannot be both NORMAL and PNEUMONIA"),
        cli=True),
    Case("test-linked-to-train", linked_instead_of_copied(
        "test", "train", ("train/NORMAL", "test/NORMAL"), 6, "must not be validated or tested on too")),
    Case("image-in-both-splits", image_in_both_splits),
    Case("too-large-for-memory", too_large, cli=True),
]


def runnable(case: Case) -> bool:
    return case.id != "cuda-without-gpu" or not torch.cuda.is_available()


def check_message(message: str, needles: list[str]) -> None:
    assert "\n" not in message.strip(), f"not one paragraph: {message!r}"
    for needle in needles:
        assert needle in message


def run_in_process(overrides: list[str], job: Path) -> float | None:
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST, *overrides])
    return run_job(cfg, job, overrides)


@pytest.fixture
def inputs(tmp_path, shared_xray, server) -> Inputs:
    return Inputs(tmp_path, shared_xray, *server)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=pytest.mark.skipif(not runnable(c), reason="a CUDA GPU is present"))
             for c in CASES],
)
def test_bad_input_is_refused_with_one_paragraph(case, inputs, restore_torch_state):
    refusal = case.build(inputs)
    with pytest.raises(PneumolabError) as caught:
        run_in_process(refusal.overrides, inputs.job)
    check_message(str(caught.value), refusal.needles)
    assert not (inputs.job / "results.json").exists()
    if refusal.downloads:
        assert [p for p in inputs.cache.rglob("*") if p.is_file()] == []


def test_hidden_files_in_a_class_folder_are_skipped(inputs, restore_torch_state):
    root = inputs.xray()
    (root / "test" / "NORMAL" / ".DS_Store").write_bytes(b"Bud1\0\0\0\1 not an image")
    (root / "test" / "NORMAL" / "._IM-0001.jpeg").write_bytes(b"\0\5\26\7 AppleDouble")
    assert run_in_process(inputs.folder_overrides(root), inputs.job) is not None
    (entry,) = json.loads((inputs.job / "results.json").read_text())["per_seed"]
    assert sum(map(sum, entry["test_confusion"])) == 6  # the six JPEGs of test/, nothing else


def run_cli(case: Case, inputs: Inputs) -> tuple[Refusal, subprocess.CompletedProcess]:
    inputs.root.mkdir()
    refusal = case.build(inputs)
    proc = subprocess.run([*pneumolab_command(), *FAST, *refusal.overrides, f"hydra.run.dir={inputs.job}"],
                          cwd=inputs.root, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    return refusal, proc


@pytest.mark.slow
def test_the_command_prints_the_paragraph_and_exits_non_zero(tmp_path, shared_xray, server):
    cases = [c for c in CASES if c.cli and runnable(c)]
    every_inputs = [Inputs(tmp_path / c.id, shared_xray, *server) for c in cases]
    # Each process spends seconds importing torch: running a few at once keeps every core busy.
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
        outcomes = list(pool.map(run_cli, cases, every_inputs))
    for case, inputs, (refusal, proc) in zip(cases, every_inputs, outcomes):
        assert proc.returncode == 2, (case.id, proc.stderr)
        assert "Traceback" not in proc.stderr, case.id
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pneumolab: error: "), (case.id, proc.stderr)
        check_message(lines[0], refusal.needles)
        assert not (inputs.job / "results.json").exists(), case.id
        if refusal.downloads:
            assert [p for p in inputs.cache.rglob("*") if p.is_file()] == [], case.id


# Hydra's own composition errors, which the command-line pre-check lets through.
HYDRA_ERRORS = {
    "trainer.epochs=abc": ["trainer.epochs=abc", "could not be converted to Integer"],
    "+trainer.epochs=3": ["trainer.epochs", "already"],
    "hydra.run.dir=${nope}": ["nope"],
}


@pytest.mark.slow
def test_hydra_composition_errors_exit_2_with_one_paragraph(tmp_path):
    def run(override: str) -> subprocess.CompletedProcess:
        return subprocess.run([*pneumolab_command(), *FAST, override], cwd=tmp_path, env=subprocess_env(),
                              capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = dict(zip(HYDRA_ERRORS, pool.map(run, HYDRA_ERRORS)))
    for override, proc in outcomes.items():
        assert proc.returncode == 2, (override, proc.stderr)
        assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("pneumolab: error: "), line
        check_message(line, HYDRA_ERRORS[override])
    assert not (tmp_path / "outputs").exists()
