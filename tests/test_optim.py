"""pneumolab's optimizers and schedules against torch.optim's, bit for bit."""

import math
import subprocess
import sys

import pytest
import torch

from pneumolab.config import (
    AdamConfig, CosineSchedulerConfig, MultiStepSchedulerConfig, NoSchedulerConfig, PlateauSchedulerConfig,
    SGDConfig, StepSchedulerConfig,
)
from pneumolab.optim import make_optimizer, make_schedule

from conftest import subprocess_env


def tensors(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=gen), torch.randn(5, generator=gen), torch.randn(3, 2, 4, generator=gen)]


def run(step, params, n_steps: int, lr_by_step) -> list[torch.Tensor]:
    """Give `params` n_steps pseudo-random gradients (some large, some NaN-free noise) and step."""
    gen = torch.Generator().manual_seed(99)
    for i in range(n_steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * (10.0 if i % 3 == 0 else 0.1)
        lr_by_step(i)
        step()
    return params


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (AdamConfig(lr=3e-3), lambda p: torch.optim.Adam(p, lr=3e-3, fused=True)),
        (AdamConfig(lr=1e-2, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.01),
         lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, fused=True)),
        (SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-3),
         lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3)),
        (SGDConfig(lr=0.05, momentum=0.0), lambda p: torch.optim.SGD(p, lr=0.05)),
    ],
    ids=["adam", "adam-wd-betas", "sgd-momentum-wd", "sgd-plain"],
)
def test_optimizer_matches_torch_optim_exactly(cfg, reference):
    ours_params, torch_params = tensors(0), tensors(0)
    ours = make_optimizer(ours_params, cfg)
    theirs = reference(torch_params)
    # The lr changes mid-run, as a schedule would change it.
    lrs = [cfg.lr] * 5 + [cfg.lr / 10] * 5

    def set_ours(i):
        ours.lr = lrs[i]

    def set_theirs(i):
        theirs.param_groups[0]["lr"] = lrs[i]

    run(ours.step, ours_params, 10, set_ours)
    run(theirs.step, torch_params, 10, set_theirs)
    for a, b, start in zip(ours_params, torch_params, tensors(0)):
        assert not torch.equal(a, start)  # it did move
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (StepSchedulerConfig(step_size=3, gamma=0.1), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.1)),
        (MultiStepSchedulerConfig(milestones=[2, 5, 5, 9], gamma=0.3),
         lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 5, 9], gamma=0.3)),
        (CosineSchedulerConfig(t_max=4, eta_min=1e-5),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=1e-5)),
        (CosineSchedulerConfig(), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12)),
        (PlateauSchedulerConfig(factor=0.5, patience=1),
         lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1)),
        (NoSchedulerConfig(), None),
    ],
    ids=["step", "multistep", "cosine-periodic", "cosine-default-tmax", "plateau", "none"],
)
def test_schedule_matches_torch_lr_scheduler_exactly(cfg, reference):
    base_lr, epochs = 1e-3, 12
    # Validation losses that improve, stall, come back slightly, and go NaN once.
    losses = [1.0, 0.9, 0.9, 0.95, 0.8999, 0.7, 0.7, 0.7, math.nan, 0.6, 0.6, 0.6]
    ours = make_schedule(cfg, base_lr, epochs)
    ours_lrs = []
    for loss in losses:
        ours_lrs.append(ours.lr)
        ours.step(loss)
    if reference is None:
        assert ours_lrs == [base_lr] * epochs
        return
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = reference(optimizer)
    torch_lrs = []
    for loss in losses:
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss)
        else:
            scheduler.step()
    assert len(set(ours_lrs)) > 1  # the schedule did change the rate
    assert ours_lrs == torch_lrs


def test_a_job_does_not_import_torch_dynamo(tmp_path):
    """torch.optim and torch.use_deterministic_algorithms import torch._dynamo: seconds of start-up per job."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pneumolab.cli", "data.limit_per_class=10", "trainer.epochs=1",
         "trainer.seeds=[0,1]", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "results.json").is_file()
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "pneumolab.train" in imported  # the listing is complete
    assert "torch._dynamo" not in imported
