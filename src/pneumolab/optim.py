"""Optimizers and learning-rate schedules by config name, from torch.optim."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from pneumolab.config import (
    AdamConfig, AdamWConfig, CosineSchedulerConfig, MultiStepSchedulerConfig, NoSchedulerConfig, OptimizerConfig,
    PlateauSchedulerConfig, SchedulerConfig, SGDConfig, StepSchedulerConfig,
)
from pneumolab.errors import PneumolabError


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # The fused kernels do a whole step in one call on CPU and CUDA alike.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if isinstance(cfg, AdamWConfig):  # before AdamConfig: AdamW's schema extends Adam's
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, fused=fused)
    if isinstance(cfg, AdamConfig):
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, fused=fused)
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise PneumolabError(f"Unknown optimizer {cfg.name!r}: use optimizer=adam, optimizer=adamw or optimizer=sgd.")


Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int) -> Scheduler | None:
    """The epoch schedule of `optimizer`'s learning rate; None keeps it constant."""
    if isinstance(cfg, StepSchedulerConfig):
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if isinstance(cfg, MultiStepSchedulerConfig):
        return lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.gamma)
    if isinstance(cfg, CosineSchedulerConfig):
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.t_max or epochs, eta_min=cfg.eta_min)
    if isinstance(cfg, PlateauSchedulerConfig):
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.factor, patience=cfg.patience)
    if isinstance(cfg, NoSchedulerConfig):
        return None
    raise PneumolabError(f"Unknown scheduler {cfg.name!r}: use step, multistep, cosine, plateau or none.")


def follows_each_seed(cfg: SchedulerConfig) -> bool:
    """Whether the schedule reads a seed's own validation loss, so each seed needs its own optimizer."""
    return isinstance(cfg, PlateauSchedulerConfig)
