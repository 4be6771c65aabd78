"""Optimizers and schedules by config name: torch.optim's own, wired as the config says."""

import math
import re
from pathlib import Path

import pytest
import torch

from pneumolab.config import (
    AdamConfig, AdamWConfig, CosineSchedulerConfig, MultiStepSchedulerConfig, NoSchedulerConfig,
    PlateauSchedulerConfig, SGDConfig, StepSchedulerConfig,
)
from pneumolab.engine.optim import make_optimizer, make_scheduler

SRC = Path(__file__).resolve().parents[1] / "src" / "pneumolab"


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize(
    "cfg, kind, settings",
    [
        (AdamConfig(lr=3e-3, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.01), torch.optim.Adam,
         {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01, "fused": True}),
        (AdamWConfig(lr=1e-3), torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 1e-2, "fused": True}),
        (SGDConfig(lr=0.05, momentum=0.5, weight_decay=1e-3), torch.optim.SGD,
         {"lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3}),
    ],
    ids=["adam", "adamw", "sgd"],
)
def test_each_optimizer_name_builds_that_torch_optimizer_with_its_settings(cfg, kind, settings):
    optimizer = make_optimizer(params(), cfg)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    for key, value in settings.items():
        assert group[key] == value, key


def lrs_over(cfg, epochs: int, val_losses=None) -> list[float]:
    optimizer = make_optimizer(params(), AdamConfig(lr=1.0))
    scheduler = make_scheduler(optimizer, cfg, epochs)
    seen = []
    for epoch in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is None:
            continue
        if val_losses is None:
            scheduler.step()
        else:
            scheduler.step(val_losses[epoch])
    return seen


def test_schedules_give_the_learning_rates_their_names_promise():
    assert lrs_over(StepSchedulerConfig(step_size=2, gamma=0.5), 6) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lrs_over(MultiStepSchedulerConfig(milestones=[1, 3, 3], gamma=0.1), 5) == pytest.approx(
        [1, 0.1, 0.1, 1e-3, 1e-3])  # a milestone listed twice decays twice
    cosine = lrs_over(CosineSchedulerConfig(eta_min=0.0), 4)
    assert cosine == pytest.approx([(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert lrs_over(NoSchedulerConfig(), 3) == [1, 1, 1]
    # Plateau: the loss stops improving after epoch 1; with patience 1 the second bad epoch cuts the lr.
    assert lrs_over(PlateauSchedulerConfig(factor=0.5, patience=1), 5, [3, 2, 2, 2, 2]) == [1, 1, 1, 1, 0.5]


def test_src_uses_no_private_torch_names():
    # Private kernels carry no compatibility promise across the torch versions pyproject accepts.
    private = re.compile(r"torch\._[a-z]|torch\.ops\.")
    offenders = [f"{path.name}:{n}" for path in SRC.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []
