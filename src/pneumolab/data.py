"""Datasets as in-memory tensors: every source ends as uint8 (N, 1, H, W) images plus labels.

Label 1 is pneumonia (the positive class), 0 is normal. Images stay uint8 until a
batch is gathered, then `normalize` turns them into float32 with the training
split's mean and std, so a 224 px dataset costs one byte per pixel in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pneumolab.config import DataConfig
from pneumolab.errors import PneumolabError

CLASSES = ("NORMAL", "PNEUMONIA")


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and std of the training pixels on the 0..1 scale.

        Summed a chunk at a time: a float copy of 224 px training images would be 1 GB.
        """
        total = total_sq = 0.0
        for chunk in self.train.images.split(256):
            pixels = chunk.to(torch.float64)
            total += float(pixels.sum())
            total_sq += float(pixels.square().sum())
        n = self.train.images.numel()
        mean = total / n
        var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
        return mean / 255.0, max(var**0.5 / 255.0, 1e-6)

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}


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
    """Fail early, with the fix, on splits that cannot train or be evaluated."""
    for name, split in dataset.splits().items():
        if len(split) == 0:
            raise PneumolabError(
                f"The {name} split of {dataset.source} is empty. Add images to it, or for a "
                "folder dataset check the {train,val,test}/{NORMAL,PNEUMONIA} layout."
            )
    n_normal, n_pneumonia = dataset.train.class_counts()
    if n_normal == 0 or n_pneumonia == 0:
        missing = "NORMAL" if n_normal == 0 else "PNEUMONIA"
        raise PneumolabError(
            f"The train split of {dataset.source} has no {missing} images, so there is nothing to "
            f"tell apart. Add {missing} images to the training data."
        )


def load_data(cfg: DataConfig) -> Dataset:
    """Build the dataset named by `cfg.name`, cap it per class if asked, and check it."""
    if cfg.name == "phantom":
        from pneumolab.phantom import load_phantom as loader
    elif cfg.name == "pneumoniamnist":
        from pneumolab.medmnist import load_pneumoniamnist as loader
    elif cfg.name == "folder":
        from pneumolab.folder import load_folder as loader
    else:
        raise PneumolabError(f"Unknown data source {cfg.name!r}: use data=phantom, data=pneumoniamnist or data=folder.")
    dataset = loader(cfg)
    if cfg.limit_per_class is not None:
        dataset = Dataset(
            *(limit_per_class(s, cfg.limit_per_class) for s in (dataset.train, dataset.val, dataset.test)),
            source=f"{dataset.source}, at most {cfg.limit_per_class} per class",
        )
    check_dataset(dataset)
    return dataset
