"""Models by config: one seed's nn.Module (`build_model`), and all seeds of a job side by side
(`build_stack`), each seed initialised from its own seed of the global generator."""

from __future__ import annotations

import torch
from torch import nn

from pneumolab.config import CNNConfig, CustomModelConfig, MLPConfig
from pneumolab.errors import PneumolabError
from pneumolab.models.cnn import CNN
from pneumolab.models.custom import build_custom, check_output_shape
from pneumolab.models.mlp import MLP
from pneumolab.models.stack import SeedRandomness, SeedStack, StackedMLP

ModelConfig = MLPConfig | CNNConfig | CustomModelConfig


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    """One seed's network, initialised from the global generator."""
    if isinstance(cfg, MLPConfig):
        return MLP(in_shape, n_outputs, cfg.hidden_sizes, cfg.negative_slope, cfg.dropout)
    if isinstance(cfg, CNNConfig):
        smallest = 2 ** len(cfg.channels)
        if min(in_shape[1:]) < smallest:
            raise PneumolabError(
                f"model=cnn with {len(cfg.channels)} pooling stages needs images of at least {smallest} px, but these "
                f"are {in_shape[1]}x{in_shape[2]}. Use fewer model.channels or a larger image size."
            )
        return CNN(in_shape, n_outputs, cfg.channels, cfg.negative_slope, cfg.dropout)
    if isinstance(cfg, CustomModelConfig):
        return build_custom(cfg, in_shape, n_outputs)
    raise PneumolabError(f"Unknown model {cfg!r}: use model=mlp, model=cnn or model=custom.")


def check_model(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> None:
    """Fail before training, with one paragraph, on a model that cannot be built or gives the wrong shape."""
    if isinstance(cfg, CustomModelConfig):
        check_output_shape(build_model(cfg, in_shape, n_outputs), cfg.target, in_shape, n_outputs)
    elif isinstance(cfg, CNNConfig):
        build_model(cfg, in_shape, n_outputs)  # refuses images too small for its pooling stages


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
    randomness = SeedRandomness(seeds, states, device)
    if batched and isinstance(cfg, MLPConfig):
        return StackedMLP(modules, randomness).to(device)
    return SeedStack(modules, randomness).to(device)
