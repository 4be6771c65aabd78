"""Optimizers and learning-rate schedules over plain tensors.

They compute exactly what `torch.optim.Adam(fused=True)`, `torch.optim.SGD` and the
`torch.optim.lr_scheduler` classes compute (tests/test_optim.py checks it bit for
bit), without `torch.optim`: constructing any `torch.optim.Optimizer` imports
`torch._dynamo`, two to three seconds of every process's start-up, and its `step`
adds Python work that shows in a 1 ms training step.

An optimizer updates the tensors it was given from their `.grad`, read at every
step, so it serves autograd (which may replace `.grad`) and the stacked model
(whose `.grad` are views into one gradient buffer) alike. Its `lr` is a plain
attribute that the epoch loop sets from a schedule.
"""

from __future__ import annotations

import math

import torch

from pneumolab.config import (
    AdamConfig, CosineSchedulerConfig, MultiStepSchedulerConfig, NoSchedulerConfig, OptimizerConfig,
    PlateauSchedulerConfig, SchedulerConfig, SGDConfig, StepSchedulerConfig,
)
from pneumolab.errors import PneumolabError


class Adam:
    """Adam with L2 weight decay folded into the gradient, one fused kernel per step."""

    def __init__(self, params: list[torch.Tensor], cfg: AdamConfig):
        self.params, self.lr = params, cfg.lr
        self.betas, self.eps, self.weight_decay = tuple(cfg.betas), cfg.eps, cfg.weight_decay
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        # The kernel takes one float32 step counter per tensor, on the tensor's device.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(
            self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs, [], self.steps,
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
            amsgrad=False, maximize=False,
        )


class SGD:
    """SGD with heavy-ball momentum (no dampening) and L2 weight decay."""

    def __init__(self, params: list[torch.Tensor], cfg: SGDConfig):
        self.params, self.lr = params, cfg.lr
        self.momentum, self.weight_decay = cfg.momentum, cfg.weight_decay
        # None until the first step, which starts the buffer at the gradient itself.
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if self.weight_decay:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            p.add_(grad, alpha=-self.lr)


Optimizer = Adam | SGD


def make_optimizer(params: list[torch.Tensor], cfg: OptimizerConfig) -> Optimizer:
    if isinstance(cfg, AdamConfig):
        return Adam(params, cfg)
    if isinstance(cfg, SGDConfig):
        return SGD(params, cfg)
    raise PneumolabError(f"Unknown optimizer {cfg.name!r}: use optimizer=adam or optimizer=sgd.")


# --- schedules ----------------------------------------------------------------
# Each holds the learning rate for the coming epoch in `lr`; `step(val_loss)` ends an
# epoch. The rates are updated by the same multiplications torch's schedulers use,
# so a run's lr column and its weights match theirs to the last bit.


class ConstantSchedule:
    def __init__(self, base_lr: float):
        self.lr, self.epoch = base_lr, 0

    def step(self, val_loss: float) -> None:
        self.epoch += 1


class StepSchedule(ConstantSchedule):
    """lr times gamma every `step_size` epochs (StepLR)."""

    def __init__(self, base_lr: float, step_size: int, gamma: float):
        super().__init__(base_lr)
        self.step_size, self.gamma = step_size, gamma

    def step(self, val_loss: float) -> None:
        super().step(val_loss)
        if self.epoch % self.step_size == 0:
            self.lr *= self.gamma


class MultiStepSchedule(ConstantSchedule):
    """lr times gamma at each milestone epoch, once per time it is listed (MultiStepLR)."""

    def __init__(self, base_lr: float, milestones: list[int], gamma: float):
        super().__init__(base_lr)
        self.milestones, self.gamma = list(milestones), gamma

    def step(self, val_loss: float) -> None:
        super().step(val_loss)
        if self.epoch in self.milestones:
            self.lr *= self.gamma ** self.milestones.count(self.epoch)


class CosineSchedule(ConstantSchedule):
    """Half a cosine from base_lr down to eta_min over t_max epochs, then back up (CosineAnnealingLR)."""

    def __init__(self, base_lr: float, t_max: int, eta_min: float):
        super().__init__(base_lr)
        self.base_lr, self.t_max, self.eta_min = base_lr, t_max, eta_min

    def step(self, val_loss: float) -> None:
        super().step(val_loss)
        e, t = self.epoch, self.t_max
        if (e - 1 - t) % (2 * t) == 0:
            # At the trough the ratio below is 0/0; this is its limit.
            self.lr += (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / t)) / 2
        else:
            ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
            self.lr = ratio * (self.lr - self.eta_min) + self.eta_min


class PlateauSchedule(ConstantSchedule):
    """lr times `factor` once the validation loss has not improved (by 0.01 %) for more
    than `patience` epochs (ReduceLROnPlateau's defaults otherwise)."""

    threshold = 1e-4
    min_change = 1e-8  # a smaller reduction is skipped

    def __init__(self, base_lr: float, factor: float, patience: int):
        super().__init__(base_lr)
        self.factor, self.patience = factor, patience
        self.best, self.bad_epochs = math.inf, 0

    def step(self, val_loss: float) -> None:
        super().step(val_loss)
        if val_loss < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            lower = self.lr * self.factor
            if self.lr - lower > self.min_change:
                self.lr = lower
            self.bad_epochs = 0


def make_schedule(cfg: SchedulerConfig, base_lr: float, epochs: int) -> ConstantSchedule:
    if isinstance(cfg, StepSchedulerConfig):
        return StepSchedule(base_lr, cfg.step_size, cfg.gamma)
    if isinstance(cfg, MultiStepSchedulerConfig):
        return MultiStepSchedule(base_lr, cfg.milestones, cfg.gamma)
    if isinstance(cfg, CosineSchedulerConfig):
        return CosineSchedule(base_lr, cfg.t_max or epochs, cfg.eta_min)
    if isinstance(cfg, PlateauSchedulerConfig):
        return PlateauSchedule(base_lr, cfg.factor, cfg.patience)
    if isinstance(cfg, NoSchedulerConfig):
        return ConstantSchedule(base_lr)
    raise PneumolabError(f"Unknown scheduler {cfg.name!r}: use step, multistep, cosine, plateau or none.")
