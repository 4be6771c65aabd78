"""PneumoniaMNIST (MedMNIST v2) from its npz: a local file, or downloaded once into the cache.

The npz holds `{train,val,test}_images` (N, H, W) uint8 and `{train,val,test}_labels`
(N, 1) with 1 = pneumonia, which is already this package's convention.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from pneumolab.config import PneumoniaMNISTDataConfig
from pneumolab.data.cache import note_source
from pneumolab.data.dataset import DataPlan, Dataset, Split
from pneumolab.data.release import MD5, size_suffix
from pneumolab.errors import PneumolabError
from pneumolab.files import create_temp_beside, human_size, unwritable_reason

log = logging.getLogger(__name__)

RECORD_PAGE = "https://zenodo.org/records/10519652"
SPLITS = ("train", "val", "test")
DOWNLOAD_TIMEOUT_S = 60.0


# Images in the official release, every size: train 4708, val 524, test 624.
OFFICIAL_IMAGES = 5856


def load_pneumoniamnist(cfg: PneumoniaMNISTDataConfig) -> Dataset:
    path = local_npz(cfg) if cfg.path is not None else fetch(cfg)
    splits = read_npz(path)
    check_size(cfg, path, tuple(splits["train"].images.shape[-2:]))
    size = splits["train"].images.shape[-1]
    return Dataset(**splits, source=f"pneumoniamnist {path} ({size} px)")


def plan_pneumoniamnist(cfg: PneumoniaMNISTDataConfig) -> DataPlan:
    """The images the npz holds (from its array headers alone), and the cache a download writes into."""
    side = (cfg.size, cfg.size)
    if cfg.path is None:
        dest = cached_npz(cfg)
        # The download's own size is checked against the free space once the server names it.
        return DataPlan(OFFICIAL_IMAGES, side, None if dest.is_file() else dest.parent)
    path = local_npz(cfg)
    shapes = npz_image_shapes(path)
    if shapes is None:  # not a readable npz: read_npz names the problem
        return DataPlan(0, side)
    check_size(cfg, path, shapes[0][1:3])
    return DataPlan(sum(shape[0] for shape in shapes), shapes[0][1:3])


def local_npz(cfg: PneumoniaMNISTDataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise PneumolabError(
            f"data.path={cfg.path!r} does not exist or is not a file. Point data.path at a "
            f"PneumoniaMNIST npz (e.g. pneumoniamnist.npz from {RECORD_PAGE}), or drop data.path "
            "to download it automatically."
        )
    return path


def check_size(cfg: PneumoniaMNISTDataConfig, path: Path, side: tuple[int, ...]) -> None:
    """data.size must say what the npz holds, so that results.json records what was trained on."""
    if tuple(side) != (cfg.size, cfg.size):
        raise PneumolabError(
            f"{path} holds {side[0]}x{side[1]} px images, but data.size={cfg.size}. Pass "
            f"data.size={side[0]} with this file, so that the run records the size it trained on"
            + ("." if side[0] == side[1] else ", after making the images square.")
        )


def npz_image_shapes(path: Path) -> list[tuple[int, ...]] | None:
    """Shapes of train_images, val_images and test_images, read from the npy headers without loading
    the pixels; None when the file is not an npz of such arrays."""
    shapes = []
    try:
        with zipfile.ZipFile(path) as archive:
            for split in SPLITS:
                with archive.open(f"{split}_images.npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shapes.append(read_header(fh)[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error, EOFError):
        return None
    return shapes if all(len(shape) >= 3 for shape in shapes) else None


def cached_npz(cfg: PneumoniaMNISTDataConfig) -> Path:
    return cfg.resolved_cache_dir() / f"pneumoniamnist{size_suffix(cfg.size)}.npz"


def fetch(cfg: PneumoniaMNISTDataConfig) -> Path:
    """The cached npz for `cfg.size`, downloaded and checked first if it is not there yet."""
    dest = cached_npz(cfg)
    if not dest.is_file():
        url = cfg.url.format(suffix=size_suffix(cfg.size))
        download(url, dest, MD5[cfg.size])
        note_source(cfg.resolved_cache_dir(), dest, f"{url} (MD5 {MD5[cfg.size]})")  # what `pneumolab-cache list` says it came from
    return dest


def download(url: str, dest: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream `url` to `dest`, which appears only once its MD5 matches.

    The bytes go to a uniquely named temp file beside `dest`, so concurrent
    downloads of the same file do not collide, and a failed or corrupt
    download leaves nothing behind.
    """
    by_hand = (
        f"Download it by hand from {url} (listed on {RECORD_PAGE}), check that its MD5 is {md5}, "
        f"and pass data.path=/path/to/{dest.name}."
    )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_beside(dest, ".part")
    except OSError as exc:
        raise PneumolabError(
            f"Cannot write the download cache {dest.parent} ({exc.strerror or exc}). Set data.cache_dir "
            f"(or $PNEUMOLAB_DATA) to a writable folder, or: {by_hand}"
        ) from None
    try:
        log.info("Downloading %s to %s", url, dest)
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            check_room(response, url, dest, by_hand)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise PneumolabError(
                f"The file downloaded from {url} has MD5 {actual}, expected {md5}: it is corrupt or not "
                f"the official release, so it was deleted. Try again later, or: {by_hand}"
            )
        os.replace(tmp, dest)
    except urllib.error.HTTPError as exc:
        raise PneumolabError(f"Could not download {url}: the server answered HTTP {exc.code} ({exc.reason}). {by_hand}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PneumolabError(
            f"Could not download {url} ({reason}); check the network connection. {by_hand}"
        ) from None
    except OSError as exc:
        raise PneumolabError(
            f"Could not write {dest} ({exc.strerror or exc}). Free some disk space or set data.cache_dir "
            f"(or $PNEUMOLAB_DATA) to another folder, or: {by_hand}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def check_room(response: http.client.HTTPResponse, url: str, dest: Path, by_hand: str) -> None:
    """Refuse before streaming a download that the cache's disk cannot hold, when the server gives its size."""
    length = response.headers.get("Content-Length", "")
    reason = unwritable_reason(dest.parent, int(length)) if length.isdigit() else None
    if reason:
        raise PneumolabError(
            f"Cannot download {url} ({human_size(int(length))}) into {dest.parent}: {reason}. Free some space, or set "
            f"data.cache_dir (or $PNEUMOLAB_DATA) to a folder with room, or: {by_hand}"
        )


def read_npz(path: Path) -> dict[str, Split]:
    """The three splits of a MedMNIST-format npz, checked key by key."""
    if not zipfile.is_zipfile(path):
        raise PneumolabError(
            f"{path} is not an npz archive. Give data.path a MedMNIST npz with the keys "
            "train_images, train_labels, val_images, val_labels, test_images, test_labels."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            expected = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
            missing = [key for key in expected if key not in npz.files]
            if missing:
                raise PneumolabError(
                    f"{path} lacks the key(s) {', '.join(missing)} (it has: {', '.join(npz.files) or 'none'}). "
                    "A PneumoniaMNIST npz needs train_images, train_labels, val_images, val_labels, "
                    "test_images and test_labels; re-download it or fix the file."
                )
            arrays = {key: npz[key] for key in expected}
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise PneumolabError(f"{path} could not be read ({exc}). Re-download it or fix the file.") from None
        raise PneumolabError(
            f"{path} stores Python objects (pickled arrays), which pneumolab never loads because "
            "unpickling can run arbitrary code. Save plain numeric arrays instead: images as uint8, labels as integers."
        ) from None
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise PneumolabError(f"{path} could not be read ({exc}); it may be truncated. Re-download it or fix the file.") from None

    splits = {}
    for split in SPLITS:
        images = _check_images(arrays[f"{split}_images"], f"{split}_images", path)
        labels = _check_labels(arrays[f"{split}_labels"], f"{split}_labels", len(images), path)
        splits[split] = Split(torch.from_numpy(images[:, None]), torch.from_numpy(labels))
    shapes = {tuple(s.images.shape[2:]) for s in splits.values()}
    if len(shapes) > 1:
        raise PneumolabError(
            f"The splits in {path} have different image sizes {sorted(shapes)}. Use one npz in which "
            "train, val and test images share a size."
        )
    return splits


def _check_images(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    """(N, H, W) uint8, from (N, H, W), (N, H, W, 1) or RGB (N, H, W, 3)."""
    if images.dtype != np.uint8:
        raise PneumolabError(
            f"{key} in {path} has dtype {images.dtype}; expected uint8 pixels 0..255. "
            "Convert it, e.g. (images * 255).round().astype(np.uint8) for 0..1 floats."
        )
    if images.ndim == 4 and images.shape[-1] == 3:
        images = _to_gray(images)
    elif images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or min(images.shape) == 0:
        raise PneumolabError(
            f"{key} in {path} has shape {images.shape}; expected (N, H, W) grayscale images "
            "(or (N, H, W, 1), (N, H, W, 3)) with N, H, W >= 1. Fix the array or use the official npz."
        )
    return np.ascontiguousarray(images)


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the weights of PIL's convert("L"); in chunks, as 224 px RGB is large."""
    gray = np.empty(rgb.shape[:3], dtype=np.uint8)
    for start in range(0, len(rgb), 256):
        chunk = rgb[start : start + 256].astype(np.uint32)
        gray[start : start + 256] = (chunk[..., 0] * 299 + chunk[..., 1] * 587 + chunk[..., 2] * 114 + 500) // 1000
    return gray


def _check_labels(labels: np.ndarray, key: str, n_images: int, path: Path) -> np.ndarray:
    """(N,) int64 of 0/1, from (N,) or (N, 1)."""
    shape = labels.shape
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n_images:
        raise PneumolabError(
            f"{key} in {path} has shape {shape}; expected ({n_images},) or ({n_images}, 1), "
            "one label per image. Fix the array or use the official npz."
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise PneumolabError(f"{key} in {path} has dtype {labels.dtype}; expected integer labels 0 (normal) or 1 (pneumonia).")
    bad = np.setdiff1d(np.unique(labels), [0, 1])
    if len(bad):
        raise PneumolabError(
            f"{key} in {path} holds label value(s) {bad.tolist()}; PneumoniaMNIST labels are 0 (normal) "
            "and 1 (pneumonia). Fix the labels or use the official npz."
        )
    return labels.astype(np.int64)
