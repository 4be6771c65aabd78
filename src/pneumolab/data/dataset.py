"""Datasets as in-memory tensors: every source ends as uint8 (N, 1, H, W) images plus labels.

Label 1 is pneumonia (the positive class), 0 is normal. Images stay uint8 until a
batch is gathered, then `normalize` turns them into float32 with the training
split's mean and std, so a 224 px dataset costs one byte per pixel in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolab.config import CLASSES
from pneumolab.errors import PneumolabError

# Pixels turned into float64 at a time for the pixel statistics (128 MB).
STATS_CHUNK_PIXELS = 2**24


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 1, H, W)
    labels: torch.Tensor  # int64 (N,), 1 = pneumonia

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4 and self.images.shape[1] == 1
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> tuple[int, int]:
        n_pos = int(self.labels.sum())
        return len(self) - n_pos, n_pos

    def take(self, index: np.ndarray | torch.Tensor) -> "Split":
        index = torch.as_tensor(index, dtype=torch.int64)
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    source: str  # one line for logs and results, e.g. "folder /data/chest_xray (28 px)"
    # Set when each training seed holds out its own validation images: this fraction of `train`
    # (stratified, drawn with the seed); `val` is then empty.
    val_per_seed: float | None = None
    # pixel_stats, once computed: training and the saved weights' record both need them.
    _stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and std of the training pixels on the 0..1 scale."""
        if "mean_std" not in self._stats:
            self._stats["mean_std"] = self._measure_pixel_stats()
        return self._stats["mean_std"]

    def _measure_pixel_stats(self) -> tuple[float, float]:
        # Summed a chunk at a time: a float copy of 224 px training images would be 1 GB.
        total = total_sq = 0.0
        per_image = max(1, self.train.images[0].numel()) if len(self.train) else 1
        for chunk in self.train.images.split(max(1, STATS_CHUNK_PIXELS // per_image)):
            pixels = chunk.to(torch.float64)
            total += float(pixels.sum())
            total_sq += float(pixels.square().sum())
        n = self.train.images.numel()
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
        return mean / 255.0, max(var**0.5 / 255.0, 1e-6)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """What was trained and tested on, for results.json: source, image size, images per split and class."""
        counts = {name: dict(zip(CLASSES, split.class_counts())) for name, split in self.splits().items()}
        return {"source": self.source, "image_shape": list(self.image_shape[1:]), "counts": counts}


@dataclass(frozen=True)
class DataPlan:
    """What loading a dataset will hold in memory and write, known before anything is loaded."""

    n_images: int  # over all splits, before limit_per_class
    image_shape: tuple[int, int]  # height, width
    cache_dir: Path | None = None  # a folder the load writes into, if it writes at all
    cache_bytes: int = 0


def normalize(images_u8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 images (any leading shape) -> float32 with zero mean and unit std on the training set."""
    return images_u8.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out), holding out `fraction` of each class, seeded."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def limit_per_class(split: Split, limit: int) -> Split:
    """Keep the first `limit` images of each class, in their original order."""
    labels = split.labels.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:limit] for c in (0, 1)]))
    return split.take(keep)


def check_dataset(dataset: Dataset) -> None:
    """Fail early, with the fix, on splits that cannot train or be evaluated.

    Every split needs both classes: training tells them apart, and validation and test
    accuracy, AUC, sensitivity and specificity are undefined or misleading without one.
    """
    for name, split in dataset.splits().items():
        if name == "val" and dataset.val_per_seed is not None:
            continue  # drawn from train by each seed
        if len(split) == 0:
            raise PneumolabError(
                f"The {name} split of {dataset.source} is empty. Add images to it, or for a "
                "folder dataset check the {train,val,test}/{NORMAL,PNEUMONIA} layout."
            )
        counts = dict(zip(CLASSES, split.class_counts()))
        missing = [cls for cls, n in counts.items() if n == 0]
        if missing:
            have = ", ".join(f"{n} {cls}" for cls, n in counts.items())
            raise PneumolabError(
                f"The {name} split of {dataset.source} has no {missing[0]} images ({have}), so "
                f"{'there is nothing to tell apart' if name == 'train' else 'it cannot measure both classes'}. "
                f"Add {missing[0]} images to the {name} split (for a folder dataset: {name}/{missing[0]}/)."
            )
