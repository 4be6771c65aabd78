#!/usr/bin/env python
"""Write a small stratified copy of a chest X-ray dataset, for smoke tests and CI.

    python scripts/make_tiny_subset.py ~/chest_xray tiny/ --per-class 8
    python scripts/make_tiny_subset.py pneumoniamnist.npz tiny/ --per-class 8 --seed 1

SRC is a folder in the Kaggle layout (SRC/{train,val,test}/{NORMAL,PNEUMONIA}/*)
or a MedMNIST npz. DST is written in the Kaggle layout with N images per class
and split (fewer where the source has fewer): folder sources are copied file by
file, npz images are saved as PNG. A split missing from the source is missing
from DST too. Needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
CLASSES = ("NORMAL", "PNEUMONIA")


class SubsetError(Exception):
    """A problem with the arguments or the source, printed as one line."""


def pick(n_available: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random sample of min(per_class, n_available) items."""
    return np.sort(rng.choice(n_available, size=min(per_class, n_available), replace=False))


def copy_folder_subset(src: Path, dst: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[int]]:
    counts = {}
    for split in SPLITS:
        if not (src / split).is_dir():
            if split == "val":
                continue
            raise SubsetError(f"{src} has no {split}/ folder; expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}/<images>.")
        counts[split] = []
        for cls in CLASSES:
            class_dir = src / split / cls
            if not class_dir.is_dir():
                raise SubsetError(f"The class folder {class_dir} is missing.")
            names = sorted(p.name for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            chosen = [names[i] for i in pick(len(names), per_class, rng)]
            (dst / split / cls).mkdir(parents=True)
            for name in chosen:
                # Content only: read-only permissions of a shared source must not carry over.
                shutil.copyfile(class_dir / name, dst / split / cls / name)
            counts[split].append(len(chosen))
    return counts


def write_npz_subset(src: Path, dst: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[int]]:
    if not zipfile.is_zipfile(src):
        raise SubsetError(f"{src} is neither a folder nor an npz archive.")
    counts = {}
    try:
        with np.load(src, allow_pickle=False) as npz:
            for split in SPLITS:
                if f"{split}_images" not in npz.files or f"{split}_labels" not in npz.files:
                    if split == "val":
                        continue
                    raise SubsetError(f"{src} lacks {split}_images or {split}_labels.")
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
                if images.dtype != np.uint8 or len(images) != len(labels):
                    raise SubsetError(f"{src}: {split}_images must be uint8 with one label per image.")
                counts[split] = []
                for label, cls in enumerate(CLASSES):
                    index = np.flatnonzero(labels == label)
                    chosen = index[pick(len(index), per_class, rng)]
                    (dst / split / cls).mkdir(parents=True)
                    for i in chosen:
                        # PIL reads (H, W) as grayscale and (H, W, 3) as RGB, but not (H, W, 1).
                        image = images[i][..., 0] if images[i].ndim == 3 and images[i].shape[-1] == 1 else images[i]
                        Image.fromarray(image).save(dst / split / cls / f"{split}_{i:05d}.png")
                    counts[split].append(len(chosen))
    except ValueError as exc:
        raise SubsetError(f"{src} could not be read ({exc}); pickled arrays are refused.") from None
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="Kaggle-layout folder or MedMNIST npz")
    parser.add_argument("dst", type=Path, help="new folder for the subset (must not exist or be empty)")
    parser.add_argument("--per-class", type=int, required=True, metavar="N", help="images per class and split")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1.")
    src, dst = args.src.expanduser(), args.dst.expanduser()
    if not src.exists():
        parser.error(f"SRC {src} does not exist.")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        parser.error(f"DST {dst} already exists and is not an empty folder; choose a new folder or delete it.")
    rng = np.random.default_rng(args.seed)
    try:
        if src.is_dir():
            counts = copy_folder_subset(src, dst, args.per_class, rng)
        else:
            counts = write_npz_subset(src, dst, args.per_class, rng)
    except SubsetError as exc:
        shutil.rmtree(dst, ignore_errors=True)
        print(f"make_tiny_subset: error: {exc}", file=sys.stderr)
        return 2
    for split, (n_normal, n_pneumonia) in counts.items():
        print(f"{dst / split}: {n_normal} NORMAL, {n_pneumonia} PNEUMONIA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
