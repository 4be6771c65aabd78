"""Models by config: one seed's nn.Module (`build_model`), and all seeds of a job side by side
(`build_stack`), each seed initialised from its own seed of the global generator."""

from __future__ import annotations

import torch
from torch import nn

from pneumolab.config import CNNConfig, CustomModelConfig, MLPConfig, ResNetConfig
from pneumolab.errors import PneumolabError
from pneumolab.extras import require_extra
from pneumolab.initial_weights import load_initial_weights, read_state_dict
from pneumolab.models.cnn import CNN
from pneumolab.models.custom import build_custom, check_custom_model
from pneumolab.models.mlp import MLP
from pneumolab.models.stack import SeedRandomness, SeedStack, StackedMLP

ModelConfig = MLPConfig | CNNConfig | ResNetConfig | CustomModelConfig


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
        return CNN(in_shape, n_outputs, cfg.channels, cfg.negative_slope, cfg.dropout, cfg.convs_per_block,
                   cfg.batch_norm, cfg.global_pool)
    if isinstance(cfg, ResNetConfig):
        require_extra("resnet", "model=resnet")
        from pneumolab.models.resnet import ResNet18  # torchvision, an optional extra

        return ResNet18(in_shape, n_outputs)
    if isinstance(cfg, CustomModelConfig):
        return build_custom(cfg, in_shape, n_outputs)
    raise PneumolabError(f"Unknown model {cfg!r}: use model=mlp, model=cnn, model=resnet or model=custom.")


def check_model(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int, batch_size: int,
                n_train: int) -> None:
    """Fail before training, with one paragraph, on a model that cannot be built (e.g. images too small for
    the CNN's pooling stages), does not fit its model.weights file, or has BatchNorm layers and batches of
    one image; a custom model must also train on batches of the sizes `n_train` images in batches of
    `batch_size` give (`check_custom_model`)."""
    model = build_model(cfg, in_shape, n_outputs)
    start_from_weights(cfg, [model])
    if batch_size == 1 and has_batch_norm(model):
        other_fix = " or model.batch_norm=false" if isinstance(cfg, CNNConfig) else ""
        raise PneumolabError(
            f"model={cfg.name} has BatchNorm layers, which cannot learn from a batch of one image, but "
            f"data.batch_size=1. Use data.batch_size=2 or more{other_fix}."
        )
    if isinstance(cfg, CustomModelConfig):
        n = trained_rows(n_train, batch_size, model)
        sizes = sorted({min(batch_size, n), n % batch_size} - {0}, reverse=True)  # the full batch, then the last
        check_custom_model(model, cfg, in_shape, n_outputs, sizes)


def trained_rows(n: int, batch_size: int, module: nn.Module) -> int:
    """How many of an epoch's `n` images `module` trains on: all, except a last batch of one image
    when it has BatchNorm layers, which cannot learn from a lone image."""
    return n - 1 if n % batch_size == 1 and has_batch_norm(module) else n


def start_from_weights(cfg: ModelConfig, modules: list[nn.Module]) -> None:
    """Load model.weights, when set, into every module (each seed's)."""
    weights = getattr(cfg, "weights", None)
    if weights:
        state = read_state_dict(weights)
        for module in modules:
            load_initial_weights(module, state, weights, cfg.name)


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
    if batched and isinstance(cfg, MLPConfig):
        return StackedMLP(modules, randomness).to(device)
    return SeedStack(modules, randomness).to(device)
