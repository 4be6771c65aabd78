"""Optimizers and learning-rate schedules from torch.optim, as each option's schema names them (config.py)."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from pneumolab.config import OptimizerConfig, SchedulerConfig


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    keywords = cfg.keywords()
    if cfg.fused:
        # The fused kernels do a whole step in one call on CPU and CUDA alike.
        keywords["fused"] = all(p.device.type in ("cpu", "cuda") for p in params)
    return getattr(torch.optim, cfg.torch_class)(params, **keywords)


Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int) -> Scheduler | None:
    """The epoch schedule of `optimizer`'s learning rate; None keeps it constant."""
    if cfg.torch_class is None:
        return None
    return getattr(lr_scheduler, cfg.torch_class)(optimizer, **cfg.keywords(epochs))
