"""Images in the Kaggle chest_xray layout: root/{train,val,test}/{NORMAL,PNEUMONIA}/*.

Every image is decoded to grayscale and resized to image_size x image_size
(no crop, so non-square images are squeezed). Decoding thousands of JPEGs
takes seconds, so the decoded arrays are cached as an npz under
`<cache_dir>/folder/`, keyed by the file list with sizes and modification
times: editing, adding or removing an image rebuilds the cache, and nothing
is ever written next to the data.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pneumolab.config import FolderDataConfig
from pneumolab.data import CLASSES, Dataset, Split, stratified_holdout
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_open

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Part of the cache key: bump it whenever decoding or resizing changes, so old caches miss.
DECODE_VERSION = 1
# A val/ folder with fewer images (or one class missing) is merged into train and re-split.
MIN_VAL_IMAGES = 10
# Below this many files a process pool costs more than it saves.
MIN_FILES_FOR_POOL = 256
# High-bit-depth modes (16-bit PNG, TIFF) are stretched to 0..255; convert("L") would clip them.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class ImageFile:
    path: Path
    relpath: str
    label: int
    size: int
    mtime_ns: int


def load_folder(cfg: FolderDataConfig) -> Dataset:
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise PneumolabError(
            f"The data folder data.root={cfg.root!r} ({root}) does not exist or is not a folder. Point data.root at a folder "
            "laid out as {train,val,test}/{NORMAL,PNEUMONIA}/<images> (val/ is optional), "
            "e.g. data.root=~/chest_xray."
        )
    files = list_images(root)
    images = load_decoded(files, cfg.image_size, cfg.resolved_cache_dir() / "folder")
    splits = {
        name: Split(torch.from_numpy(images[name][:, None]), torch.tensor([f.label for f in files[name]], dtype=torch.int64))
        for name in SPLITS
    }
    source = f"folder {root} ({cfg.image_size} px)"
    if _is_tiny(splits["val"]):
        # Fold a tiny val/ into train so none of its images are lost, then hold out a stratified share.
        pool = splits["train"]
        if len(splits["val"]):
            pool = Split(
                torch.cat([pool.images, splits["val"].images]),
                torch.cat([pool.labels, splits["val"].labels]),
            )
        keep, held = stratified_holdout(pool.labels.numpy(), cfg.val_fraction, cfg.split_seed)
        splits["train"], splits["val"] = pool.take(keep), pool.take(held)
        source = f"folder {root} ({cfg.image_size} px, val = {cfg.val_fraction:g} of train, split seed {cfg.split_seed})"
    return Dataset(**splits, source=source)


def _is_tiny(split: Split) -> bool:
    return len(split) < MIN_VAL_IMAGES or min(split.class_counts()) == 0


def list_images(root: Path) -> dict[str, list[ImageFile]]:
    """Every non-hidden file per split, sorted; val/ may be absent or partial, train/ and test/ may not."""
    files: dict[str, list[ImageFile]] = {}
    for split in SPLITS:
        files[split] = []
        split_dir = root / split
        if not split_dir.is_dir():
            if split == "val":
                continue
            raise PneumolabError(
                f"{root} has no {split}/ folder. A folder dataset needs {split}/NORMAL/ and "
                f"{split}/PNEUMONIA/ under data.root (val/ is optional); check data.root or create it."
            )
        for label, cls in enumerate(CLASSES):
            class_dir = split_dir / cls
            if not class_dir.is_dir():
                if split == "val":
                    continue
                present = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) or ["none"]
                raise PneumolabError(
                    f"The class folder {class_dir} is missing (subfolders of {split_dir}: {', '.join(present)}). "
                    f"Create {split}/{cls}/ with its images; the class folders must be named exactly "
                    f"{' and '.join(CLASSES)}."
                )
            with os.scandir(class_dir) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    # Hidden files are OS litter (.DS_Store, ._foo.jpeg), never images.
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    stat = entry.stat()
                    files[split].append(
                        ImageFile(Path(entry.path), f"{split}/{cls}/{entry.name}", label, stat.st_size, stat.st_mtime_ns)
                    )
    return files


def cache_key(files: dict[str, list[ImageFile]], image_size: int) -> str:
    digest = hashlib.sha256(f"pneumolab folder v{DECODE_VERSION} {image_size}px\n".encode())
    for split in SPLITS:
        for f in files[split]:
            digest.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()


def load_decoded(files: dict[str, list[ImageFile]], image_size: int, cache_dir: Path) -> dict[str, np.ndarray]:
    """uint8 (N, size, size) per split, from the cache when the files are unchanged."""
    cache = cache_dir / f"{cache_key(files, image_size)}.npz"
    cached = _read_cache(cache, {split: len(files[split]) for split in SPLITS}, image_size)
    if cached is not None:
        return cached
    everything = [f.path for split in SPLITS for f in files[split]]
    log.info("Decoding %d images to %d px (cached in %s)", len(everything), image_size, cache)
    decoded = decode_images(everything, image_size)
    ends = np.cumsum([len(files[split]) for split in SPLITS])
    images = dict(zip(SPLITS, np.split(decoded, ends[:-1])))
    try:
        with atomic_open(cache, "wb") as fh:
            np.savez(fh, **images)
    except OSError as exc:
        log.warning("Could not write the image cache %s (%s); the images will be decoded again next time.", cache, exc)
    return images


def _read_cache(path: Path, counts: dict[str, int], image_size: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unusable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = {split: npz[split] for split in SPLITS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    for split, array in images.items():
        if array.dtype != np.uint8 or array.shape != (counts[split], image_size, image_size):
            return None
    return images


def decode_images(paths: list[Path], size: int) -> np.ndarray:
    """uint8 (N, size, size), decoded in a process pool when there are many files."""
    workers = os.cpu_count() or 1
    if len(paths) < MIN_FILES_FOR_POOL or workers == 1:
        return _decode_chunk(paths, size)
    chunks = [list(chunk) for chunk in np.array_split(np.array(paths, dtype=object), 4 * workers) if len(chunk)]
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    except OSError as exc:
        # Sandboxes without working process pools (no /dev/shm) still get their images.
        log.warning("No process pool (%s); decoding in this process instead.", exc)
        return _decode_chunk(paths, size)
    try:
        # Filled chunk by chunk as results arrive, so the decoded images are never held twice.
        out = np.empty((len(paths), size, size), dtype=np.uint8)
        start = 0
        for block in pool.map(_decode_chunk, chunks, repeat(size)):
            out[start : start + len(block)] = block
            start += len(block)
        return out
    except BrokenProcessPool as exc:
        log.warning("The decoding processes died (%s); decoding in this process instead.", exc)
        return _decode_chunk(paths, size)
    finally:
        # After a bad image, drop the chunks not started yet instead of decoding them for nothing.
        pool.shutdown(cancel_futures=True)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe: workers then skip re-importing torch, which costs seconds each."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _decode_chunk(paths: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size)
    return out


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (size, size) grayscale, or a PneumolabError that names the file."""
    try:
        with Image.open(path) as image:
            # JPEG only: decode straight to luma at a reduced DCT scale (still >= size), several times faster.
            image.draft("L", (size, size))
            if image.mode in _WIDE_MODES:
                pixels = np.asarray(image, dtype=np.float32)
                low, high = float(pixels.min()), float(pixels.max())
                gray = Image.fromarray(np.round((pixels - low) * (255.0 / max(high - low, 1e-6))).astype(np.uint8))
            else:
                gray = image.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PneumolabError(
            f"Cannot read the image {path} ({type(exc).__name__}: {exc}). It is empty, truncated or not an "
            "image: delete it, or replace it with a readable image file (JPEG, PNG, ...)."
        ) from None
