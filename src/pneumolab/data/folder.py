"""Images in the Kaggle chest_xray layout: root/{train,val,test}/{NORMAL,PNEUMONIA}/*.

Every file below a class folder is an image of that class, in sub-folders too (linked
folders are followed, each once); a file that is no image, a broken link, a link that
loops back to itself or an unreadable folder stops the load with its name, and so does
a file reached twice (a class folder linked to the other class, test/ linked to train/). Hidden files and folders (names
starting with a dot: .DS_Store, ._IM-0001.jpeg) are skipped and counted in the log.
Every image is decoded to grayscale and made image_size x image_size by `data.resize`:
center_crop keeps its largest centred square (as PneumoniaMNIST was made), squeeze
resizes the whole image. Decoding thousands of JPEGs takes seconds, so the decoded
arrays are cached as an npz under `<cache_dir>/folder/`, keyed by the resize mode and
the file list with sizes and modification times: editing, adding or removing an image
rebuilds the cache, and nothing is ever written next to the data.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from stat import S_ISREG

import numpy as np
import torch
from PIL import Image

from pneumolab.config import FolderDataConfig
from pneumolab.cores import usable_cores
from pneumolab.data.cache import note_source
from pneumolab.data.dataset import CLASSES, DataPlan, Dataset, Split, stratified_holdout
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_open
from pneumolab.workers import fork_available

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
    identity: tuple[int, int]  # device and inode of the file itself, whatever links lead to it


def data_root(cfg: FolderDataConfig) -> Path:
    link = looping_link(Path(cfg.root).expanduser())
    if link is not None:
        raise PneumolabError(f"The data folder data.root={cfg.root!r} cannot be opened: {loop_text(link)}. Point "
                             "data.root at the real folder, or fix the link.")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise PneumolabError(
            f"The data folder data.root={cfg.root!r} ({root}) does not exist or is not a folder. Point data.root at a folder "
            "laid out as {train,val,test}/{NORMAL,PNEUMONIA}/<images> (val/ is optional), "
            "e.g. data.root=~/chest_xray or data.root=$HOME/chest_xray (both work as typed in bash and zsh)."
        )
    return root


def plan_folder(cfg: FolderDataConfig) -> DataPlan:
    """The images load_folder will decode, and the cache file it will write when it has none yet."""
    files = list_images(data_root(cfg))
    n_images = sum(len(split_files) for split_files in files.values())
    shape = (cfg.image_size, cfg.image_size)
    cache_dir = cfg.resolved_cache_dir() / "folder"
    if (cache_dir / f"{cache_key(files, cfg.image_size, cfg.resize)}.npz").is_file():
        return DataPlan(n_images, shape)
    # An uncompressed npz: the pixels plus a few kB of headers.
    return DataPlan(n_images, shape, cache_dir, n_images * cfg.image_size**2 + 64_000)


def load_folder(cfg: FolderDataConfig) -> Dataset:
    root = data_root(cfg)
    files = list_images(root)
    images = load_decoded(files, cfg.image_size, cfg.resize, cfg.resolved_cache_dir() / "folder")
    cache = cfg.resolved_cache_dir() / "folder" / f"{cache_key(files, cfg.image_size, cfg.resize)}.npz"
    if cache.is_file():  # what `pneumolab-cache list` says it came from
        note_source(cfg.resolved_cache_dir(), cache, f"{root.absolute()} ({cfg.image_size} px, {cfg.resize})")
    splits = {
        name: Split(torch.from_numpy(images[name][:, None]), torch.tensor([f.label for f in files[name]], dtype=torch.int64))
        for name in SPLITS
    }
    # Named as typed (relative stays relative): results and logs are read by people on other machines.
    named = Path(cfg.root).expanduser()
    source = f"folder {named} ({cfg.image_size} px, {cfg.resize})"
    if _is_tiny(splits["val"]):
        # Fold a tiny val/ into train so none of its images are lost, then hold out a stratified share.
        pool = splits["train"]
        if len(splits["val"]):
            pool = Split(
                torch.cat([pool.images, splits["val"].images]),
                torch.cat([pool.labels, splits["val"].labels]),
            )
        source = (f"folder {named} ({cfg.image_size} px, {cfg.resize}, val = {cfg.val_fraction:g} of train, "
                  f"split seed {cfg.split_seed})")
        if cfg.split_seed == "per_seed":
            # Each training seed holds out its own share (train.fit); the pixel statistics cover the pool.
            empty = pool.take(np.zeros(0, dtype=np.int64))
            return Dataset(pool, empty, splits["test"], source, val_per_seed=cfg.val_fraction)
        keep, held = stratified_holdout(pool.labels.numpy(), cfg.val_fraction, cfg.split_seed)
        splits["train"], splits["val"] = pool.take(keep), pool.take(held)
    elif cfg.split_seed == "per_seed":
        log.warning("data.split_seed=per_seed has no effect: %s has its own val/ split, which every seed uses.", root)
    return Dataset(**splits, source=source)


def _is_tiny(split: Split) -> bool:
    return len(split) < MIN_VAL_IMAGES or min(split.class_counts()) == 0


def list_images(root: Path) -> dict[str, list[ImageFile]]:
    """Every non-hidden file under each class folder, sub-folders included, sorted by path;
    val/ may be absent or partial, train/ and test/ may not."""
    files: dict[str, list[ImageFile]] = {}
    hidden: list[str] = []
    for split in SPLITS:
        files[split] = []
        split_dir = root / split
        if not split_dir.is_dir():
            check_not_a_loop(split_dir)
            if split == "val":
                continue
            raise PneumolabError(
                f"{root} has no {split}/ folder. A folder dataset needs {split}/NORMAL/ and "
                f"{split}/PNEUMONIA/ under data.root (val/ is optional); check data.root or create it."
            )
        for label, cls in enumerate(CLASSES):
            class_dir = split_dir / cls
            if not class_dir.is_dir():
                check_not_a_loop(class_dir)
                if split == "val":
                    continue
                present = sorted(p.name for p in split_dir.iterdir() if p.is_dir()) or ["none"]
                raise PneumolabError(
                    f"The class folder {class_dir} is missing (subfolders of {split_dir}: {', '.join(present)}). "
                    f"Create {split}/{cls}/ with its images; the class folders must be named exactly "
                    f"{' and '.join(CLASSES)}."
                )
            for path in walk_files(class_dir, hidden):
                stat = file_stat(path)
                relpath = f"{split}/{cls}/{path.relative_to(class_dir).as_posix()}"
                files[split].append(ImageFile(path, relpath, label, stat.st_size, stat.st_mtime_ns,
                                              (stat.st_dev, stat.st_ino)))
    if hidden:
        # Hidden entries are OS and tool litter (.DS_Store, ._IM-0001.jpeg, .ipynb_checkpoints), never read.
        log.info("Skipped %d hidden file(s) or folder(s) in the class folders: %s%s", len(hidden),
                 ", ".join(hidden[:5]), ", ..." if len(hidden) > 5 else "")
    check_each_file_once(files)
    return files


def check_each_file_once(files: dict[str, list[ImageFile]]) -> None:
    """Refuse a file reached twice: through a class folder linked to the other class (one image, both
    labels), test/ or val/ linked to train/ (tested on what was trained on), or two links to one image.

    Files are told apart by the device and inode their stat (taken anyway) gives: the same answer as
    comparing real paths, for nothing, and it also catches hard links to one file.
    """
    first: dict[tuple[int, int], ImageFile] = {}
    twice: list[tuple[ImageFile, ImageFile]] = []
    for split in SPLITS:
        for f in files[split]:
            earlier = first.setdefault(f.identity, f)
            if earlier is not f:
                twice.append((earlier, f))
    if not twice:
        return
    a, b = twice[0]
    if a.label != b.label:
        harm = f"one image cannot be both {CLASSES[a.label]} and {CLASSES[b.label]}"
    elif a.relpath.split("/")[0] != b.relpath.split("/")[0]:
        harm = "an image trained on must not be validated or tested on too, or the accuracy flatters the model"
    else:
        harm = "an image would count twice"
    raise PneumolabError(
        f"The same file is reached twice under the data folder: {a.path} and {b.path} are both "
        f"{os.path.realpath(b.path)} ({len(twice)} file(s) in all are reached a second time), and {harm}. Look for "
        "a symbolic link between the split or class folders (e.g. PNEUMONIA -> NORMAL or test -> train; `ls -l` "
        "shows them) and replace it with a folder of its own images, or delete the duplicate file or link."
    )


def walk_files(class_dir: Path, hidden: list[str]) -> list[Path]:
    """Every non-hidden file below `class_dir`, following folder links (each folder once), sorted;
    the hidden entries met on the way are appended to `hidden`."""

    def unreadable(exc: OSError) -> None:
        raise PneumolabError(
            f"Cannot list the folder {exc.filename} ({exc.strerror}). Make it readable, or move it out of {class_dir}."
        )

    found, seen = [], set()
    for folder, subfolders, names in os.walk(class_dir, onerror=unreadable, followlinks=True):
        stat = os.stat(folder)
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:  # a link back to a folder already listed
            subfolders[:] = []
            continue
        seen.add(identity)
        hidden += [os.path.join(folder, name) for name in subfolders + names if name.startswith(".")]
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder, name) for name in names if not name.startswith(".")]
    return sorted(found)


def file_stat(path: Path) -> os.stat_result:
    """The file's size and times, or a PneumolabError naming a broken link or a non-file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise PneumolabError(
            f"{path} is a broken symbolic link (it points to {os.readlink(path)}, which does not exist). "
            "Delete the link or point it at the image."
        ) from None
    except OSError as exc:
        check_not_a_loop(path)
        raise PneumolabError(f"Cannot read {path} ({exc.strerror}). Make it readable or delete it.") from None
    if not S_ISREG(stat.st_mode):
        raise PneumolabError(f"{path} is not a regular file (a pipe, socket or device). Move it out of the class folder.")
    return stat


def looping_link(path: Path) -> Path | None:
    """The first symbolic link along `path` that leads back to itself (following it never ends), or None."""
    path = path.absolute()
    for prefix in (*reversed(path.parents), path):
        try:
            os.stat(prefix)
        except OSError as exc:
            return prefix if exc.errno == errno.ELOOP else None
    return None


def check_not_a_loop(path: Path) -> None:
    """A paragraph naming `path` when it is a link that loops (checked where it is not a folder or file
    as it should be, so that a loop is not reported as a missing folder or an unreadable file)."""
    link = looping_link(path)
    if link is not None:
        raise PneumolabError(f"{loop_text(link)}. Delete the link, or point it at the real folder or image.")


def loop_text(link: Path) -> str:
    return (f"{link} is a symbolic link that leads back to itself (it points to {os.readlink(link)}, and following "
            "it never reaches a folder or file)")


def cache_key(files: dict[str, list[ImageFile]], image_size: int, resize: str) -> str:
    # squeeze keeps the key it had before data.resize existed: its pixels are unchanged, so old caches still hit.
    mode = "" if resize == "squeeze" else f" {resize}"
    digest = hashlib.sha256(f"pneumolab folder v{DECODE_VERSION} {image_size}px{mode}\n".encode())
    for split in SPLITS:
        for f in files[split]:
            digest.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()


def load_decoded(files: dict[str, list[ImageFile]], image_size: int, resize: str,
                 cache_dir: Path) -> dict[str, np.ndarray]:
    """uint8 (N, size, size) per split, from the cache when the files and the resize mode are unchanged."""
    cache = cache_dir / f"{cache_key(files, image_size, resize)}.npz"
    cached = _read_cache(cache, {split: len(files[split]) for split in SPLITS}, image_size)
    if cached is not None:
        return cached
    everything = [f.path for split in SPLITS for f in files[split]]
    log.info("Decoding %d images to %d px, %s (cached in %s)", len(everything), image_size, resize, cache)
    decoded = decode_images(everything, image_size, resize)
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


def decode_images(paths: list[Path], size: int, resize: str) -> np.ndarray:
    """uint8 (N, size, size), decoded in a process pool when there are many files."""
    workers = usable_cores()
    if len(paths) < MIN_FILES_FOR_POOL or workers == 1:
        return _decode_chunk(paths, size, resize)
    chunks = [list(chunk) for chunk in np.array_split(np.array(paths, dtype=object), 4 * workers) if len(chunk)]
    try:
        # fork where it is safe: workers then skip re-importing torch, which costs seconds each.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(
            "fork" if fork_available() else None))
    except OSError as exc:
        # Sandboxes without working process pools (no /dev/shm) still get their images.
        log.warning("No process pool (%s); decoding in this process instead.", exc)
        return _decode_chunk(paths, size, resize)
    try:
        # Filled chunk by chunk as results arrive, so the decoded images are never held twice.
        out = np.empty((len(paths), size, size), dtype=np.uint8)
        start = 0
        for block in pool.map(_decode_chunk, chunks, repeat(size), repeat(resize)):
            out[start : start + len(block)] = block
            start += len(block)
        return out
    except BrokenProcessPool as exc:
        log.warning("The decoding processes died (%s); decoding in this process instead.", exc)
        return _decode_chunk(paths, size, resize)
    finally:
        # After a bad image, drop the chunks not started yet instead of decoding them for nothing.
        pool.shutdown(cancel_futures=True)


def _decode_chunk(paths: list[Path], size: int, resize: str) -> np.ndarray:
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size, resize)
    return out


def decode_image(path: Path, size: int, resize: str) -> np.ndarray:
    """One image as uint8 (size, size) grayscale, or a PneumolabError that names the file."""
    try:
        with Image.open(path) as image:
            # JPEG only: decode straight to luma at a reduced DCT scale (both sides still >= size, so a
            # centre crop too), several times faster.
            image.draft("L", (size, size))
            if image.mode in _WIDE_MODES:
                pixels = np.asarray(image, dtype=np.float32)
                low, high = float(pixels.min()), float(pixels.max())
                gray = Image.fromarray(np.round((pixels - low) * (255.0 / max(high - low, 1e-6))).astype(np.uint8))
            else:
                gray = image.convert("L")
            return np.asarray(to_square(gray, size, resize), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise PneumolabError(too_large(path)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PneumolabError(
            f"Cannot read the image {path} ({type(exc).__name__}: {exc}). It is empty, truncated or not an "
            "image: delete it, or replace it with a readable image file (JPEG, PNG, ...)."
        ) from None


def too_large(path: Path) -> str:
    """The paragraph for an image above the decoder's pixel limit (Pillow's guard against decompression bombs)."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # Pillow refuses above twice its warning threshold
    side = int(limit**0.5)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # Its width and height from the header alone (nothing is decoded), with the guard off for this one look.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            width, height = image.size
        size = f" is {width}x{height} px ({width * height:,} pixels), which is"
    except Exception:  # noqa: BLE001 - the paragraph goes out without the size
        size = " is"
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return (f"The image {path}{size} too large to decode: the limit is {limit:,} pixels (about {side:,}x{side:,} "
            "px; Pillow's guard against decompression bombs). If it is a real image, shrink it (e.g. `convert "
            "big.png -resize 2048x2048 small.png`; every image is resized to the run's image size anyway), or move it "
            "out of the data folder.")


def to_square(image: Image.Image, size: int, resize: str) -> Image.Image:
    """`image` as size x size, bilinear: its largest centred square (resize="center_crop", as PneumoniaMNIST
    was made) or all of it squeezed (resize="squeeze"). The one place folder data, predict and eval resize."""
    width, height = image.size
    if resize == "center_crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image
