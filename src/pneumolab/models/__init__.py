"""Models by config: one seed's nn.Module (`build_model`), and all seeds of a job side by side
(`build_stack`), each seed initialised from its own seed of the global generator.

Every model, built-in or a user's, is the class its config names (`model._target_`); see
models/mlp.py and conf/model/mlp.yaml for the two files a model is.
"""

from __future__ import annotations

import torch
from torch import nn

from pneumolab.config import ModelConfig
from pneumolab.errors import PneumolabError
from pneumolab.models.mlp import MLP
from pneumolab.models.stack import SeedRandomness, SeedStack, StackedMLP
from pneumolab.models.target import build_from_target, check_in_training
from pneumolab.models.weights import load_initial_weights, read_state_dict


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    """One seed's network, initialised from the global generator."""
    return build_from_target(cfg, in_shape, n_outputs)


def check_model(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int, batch_size: int,
                n_train: int) -> None:
    """Fail before training, with one paragraph, on a model that cannot be built (a key its class rejects,
    e.g. images too small for the CNN's pooling stages), does not fit its model.weights file, has
    BatchNorm layers and batches of one image, or does not train on batches of the sizes `n_train`
    images in batches of `batch_size` give (`target.check_in_training`)."""
    model = build_model(cfg, in_shape, n_outputs)
    start_from_weights(cfg, [model])
    if batch_size == 1 and has_batch_norm(model):
        other_fix = " or model.batch_norm=false" if "batch_norm" in cfg.options else ""
        raise PneumolabError(
            f"model={cfg.name} has BatchNorm layers, which cannot learn from a batch of one image, but "
            f"data.batch_size=1. Use data.batch_size=2 or more{other_fix}."
        )
    n = trained_rows(n_train, batch_size, model)
    sizes = sorted({min(batch_size, n), n % batch_size} - {0}, reverse=True)  # the full batch, then the last
    check_in_training(model, cfg, in_shape, n_outputs, sizes)


def trained_rows(n: int, batch_size: int, module: nn.Module) -> int:
    """How many of an epoch's `n` images `module` trains on: all, except a last batch of one image
    when it has BatchNorm layers, which cannot learn from a lone image."""
    return n - 1 if n % batch_size == 1 and has_batch_norm(module) else n


def start_from_weights(cfg: ModelConfig, modules: list[nn.Module]) -> None:
    """Load model.weights, when set, into every module (each seed's)."""
    if cfg.weights:
        state = read_state_dict(cfg.weights)
        for module in modules:
            load_initial_weights(module, state, cfg.weights, cfg.name)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def build_stack(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int, seeds: list[int],
                device: torch.device, batched: bool) -> SeedStack | StackedMLP:
    """Every seed's network, initialised from torch.manual_seed(seed); batched=True stacks MLPs into
    batched tensors (the fast layout), otherwise each seed keeps its own module."""
    modules, states = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        modules.append(build_model(cfg, in_shape, n_outputs))
        # The seed's dropout stream continues where its initialisation left the generator.
        states.append(torch.get_rng_state())
    # Before stacking: StackedMLP copies the seeds' modules into its batched tensors.
    start_from_weights(cfg, modules)
    randomness = SeedRandomness(seeds, states, device)
    # Chosen by what the model is: the MLP class itself, not a subclass that may change its forward.
    if batched and all(type(m) is MLP for m in modules):
        return StackedMLP(modules, randomness).to(device)
    return SeedStack(modules, randomness).to(device)
