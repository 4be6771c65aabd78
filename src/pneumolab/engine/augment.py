"""Training-time augmentation: per-image random affine and intensity jitter (`augment=basic`).

Written on PyTorch's own `grid_sample`, with the sampling grid built elementwise rather
than by `affine_grid` (a batched 3x2 matmul that took four times as long as the sampling
itself at 28 px): on one CPU thread a batch of 32 costs about 0.2 ms, against 10 ms for
torchvision.transforms.v2, which draws one set of parameters per call and so needs a
Python loop for per-image parameters, and kornia draws from the global generator,
which would tie a seed's draws to the seeds beside it.

Every seed draws its parameters from a CPU generator of its own, a fixed number per image
whatever the settings, so its augmented images never depend on the seeds beside it or on
the device, and a sweep over one key leaves the other keys' draws unchanged. Each output
pixel is computed from its own image alone, so a seed's images are the same to the last
bit in a stack of any size (tests/test_augment.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from pneumolab.config import AugmentConfig, BasicAugmentConfig

# Uniform draws per image: rotation, scale, shift x, shift y, flip, brightness, contrast.
DRAWS = 7


def augment_seed(seed: int) -> int:
    """The seed of a training seed's augmentation generator: a stream apart from its
    initialisation (stream 0) and its shuffling (stream 1)."""
    return int(np.random.SeedSequence([seed, 2]).generate_state(1, np.uint64)[0])


class Augmenter:
    """Random affine and intensity jitter for the stacked training batches of `seeds`."""

    def __init__(self, cfg: BasicAugmentConfig, seeds: list[int]):
        self.cfg = cfg
        self.generators = [torch.Generator().manual_seed(augment_seed(seed)) for seed in seeds]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (S, B, 1, H, W) on the 0..1 scale -> augmented, same shape and device."""
        n_seeds, batch = images.shape[:2]
        draws = torch.stack([torch.rand(batch, DRAWS, generator=g) for g in self.generators])
        draws = draws.view(n_seeds * batch, DRAWS).to(images.device).mul_(2).sub_(1)  # uniform in [-1, 1)
        flat = images.reshape(n_seeds * batch, *images.shape[2:])
        warped = F.grid_sample(flat, sampling_grid(draws, self.cfg, *flat.shape[-2:]), align_corners=False)
        return jitter_intensity(warped, draws, self.cfg).view_as(images)


def sampling_grid(draws: torch.Tensor, cfg: BasicAugmentConfig, height: int, width: int) -> torch.Tensor:
    """Where each output pixel reads its input, in grid_sample's [-1, 1] coordinates: (N, H, W, 2).

    The input point of output pixel (u, v) is R(angle) (flip * u, v) / zoom + shift.
    """
    angle = draws[:, 0] * math.radians(cfg.rotation)
    zoom = 1.0 + draws[:, 1] * cfg.scale
    shift_x, shift_y = draws[:, 2] * (2 * cfg.translate), draws[:, 3] * (2 * cfg.translate)
    flip = torch.where(draws[:, 4] < 0, -1.0, 1.0) if cfg.hflip else torch.ones_like(zoom)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # Pixel centres, as affine_grid places them with align_corners=False.
    u = (torch.arange(width, device=draws.device, dtype=draws.dtype) * 2 + 1) / width - 1
    v = (torch.arange(height, device=draws.device, dtype=draws.dtype) * 2 + 1) / height - 1
    grid = torch.empty(len(draws), height, width, 2, device=draws.device, dtype=draws.dtype)
    # Each coordinate is a column term plus a row term: one full-size operation per coordinate,
    # written straight into the grid (a stack of two planes would cost an interleaving copy).
    for axis, (along_u, along_v, shift) in enumerate(((cos * flip, -sin, shift_x), (sin * flip, cos, shift_y))):
        row_term = along_v[:, None] * v + shift[:, None]  # (N, H)
        torch.add((along_u[:, None] * u)[:, None, :], row_term[:, :, None], out=grid[..., axis])
    return grid


def jitter_intensity(images: torch.Tensor, draws: torch.Tensor, cfg: BasicAugmentConfig) -> torch.Tensor:
    """Brightness and contrast as torchvision's ColorJitter defines them: scale the pixels, then
    blend with the image's mean; clipped to 0..1."""
    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1, 1)

    images = (images * per_image(1.0 + draws[:, 5] * cfg.brightness)).clamp_(0.0, 1.0)
    contrast = per_image(1.0 + draws[:, 6] * cfg.contrast)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images * contrast + mean * (1.0 - contrast)).clamp_(0.0, 1.0)


def make_augmenter(cfg: AugmentConfig, seeds: list[int]) -> Augmenter | None:
    """The augmentation of `seeds`' training batches, or None for augment=none."""
    return Augmenter(cfg, seeds) if isinstance(cfg, BasicAugmentConfig) else None
