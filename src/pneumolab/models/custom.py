"""A user's own nn.Module, named by `model._target_` and checked before any training."""

from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from pneumolab.config import CustomModelConfig
from pneumolab.errors import PneumolabError


def import_model_class(target: str) -> type[nn.Module]:
    """The class `target` names, importable from the current directory or the environment."""
    # Console scripts do not put the working directory on sys.path, but a user's mynets.py sits there.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, class_name = target.rpartition(".")
    example = "e.g. model._target_=mynets.TinyNet for class TinyNet in ./mynets.py"
    if not module_name:
        raise PneumolabError(f"model._target_={target} names no module. Give module.Class, {example}.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the import raised, the user gets one paragraph
        raise PneumolabError(
            f"model._target_={target}: the module {module_name} does not import ({type(exc).__name__}: {exc}). "
            f"Put it in the current directory or install it, {example}, and check `python -c 'import {module_name}'`."
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PneumolabError(f"model._target_={target}: the module {module_name} ({module.__file__}) has no "
                             f"{class_name}. Check the class name's spelling.")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PneumolabError(f"model._target_={target} is not an nn.Module class. Name a subclass of torch.nn.Module.")
    return cls


def build_custom(cfg: CustomModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    cls = import_model_class(cfg.target)
    call = f"{cfg.target}(in_shape={in_shape}, n_outputs={n_outputs}" + "".join(
        f", {k}={v!r}" for k, v in cfg.options.items()) + ")"
    try:
        return cls(in_shape=in_shape, n_outputs=n_outputs, **cfg.options)
    except Exception as exc:  # noqa: BLE001
        raise PneumolabError(
            f"Building the custom model failed: {call} raised {type(exc).__name__}: {exc}. Its constructor must "
            "accept in_shape and n_outputs, and every extra model key (+model.NAME=value) as a keyword argument."
        ) from None


def check_output_shape(model: nn.Module, target: str, in_shape: tuple[int, int, int], n_outputs: int) -> None:
    """Run two random images through a fresh model: it must give (2, n_outputs) finite logits."""
    x = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001
        raise PneumolabError(
            f"The custom model {target} fails on a batch of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}. "
            "Its forward must take float images (B, 1, H, W) and return logits (B, K)."
        ) from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PneumolabError(
            f"The custom model {target} returned {shape} for a batch of shape {tuple(x.shape)}; it must return "
            f"logits of shape (B, {n_outputs}) = (2, {n_outputs}) for this head ({n_outputs} output"
            f"{'s' if n_outputs > 1 else ''}). Use n_outputs for the size of its last layer."
        )
