"""A model's class, named by `model._target_` (a built-in model's or a user's), built and checked before training."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys

import torch
from torch import nn

from pneumolab.config import ModelConfig, model_name
from pneumolab.errors import PneumolabError
from pneumolab.extras import EXTRA_MODULES, require_extra

EXAMPLE = "e.g. model._target_=mynets.TinyNet for class TinyNet in ./mynets.py"


def import_model_class(target: str) -> type[nn.Module]:
    """The class `target` names, importable from the current directory or the environment."""
    # Console scripts do not put the working directory on sys.path, but a user's mynets.py sits there.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, class_name = target.rpartition(".")
    if not module_name:
        raise PneumolabError(f"model._target_={target} names no module. Give module.Class, {EXAMPLE}.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the import raised, the user gets one paragraph
        missing = (getattr(exc, "name", None) or "").split(".")[0]
        for extra, modules in EXTRA_MODULES.items():
            if missing in modules:  # a built-in model needing an extra (model=resnet: torchvision)
                require_extra(extra, f"model={model_name(target)}" if model_name(target) != "custom"
                              else f"model._target_={target}")
        raise PneumolabError(
            f"model._target_={target}: the module {module_name} does not import ({type(exc).__name__}: {exc}). "
            f"Put it in the current directory or install it, {EXAMPLE}, and check `python -c 'import {module_name}'`."
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PneumolabError(f"model._target_={target}: the module {module_name} ({module.__file__}) has no "
                             f"{class_name}. Check the class name's spelling.")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PneumolabError(f"model._target_={target} is not an nn.Module class. Name a subclass of torch.nn.Module.")
    return cls


def model_title(cfg: ModelConfig) -> str:
    """How messages name the model: model=cnn for a built-in one, the class for a user's."""
    return f"model={cfg.name}" if cfg.name != "custom" else f"the custom model {cfg.target}"


def unknown_key_hint(cls: type[nn.Module], options: dict) -> str:
    """' Did you mean model.x?' for a key the constructor does not take, when one it takes is close."""
    parameters = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return ""
    for key in options:
        if key not in parameters:
            close = difflib.get_close_matches(key, [p for p in parameters if p not in ("in_shape", "n_outputs")], n=1)
            return f" Did you mean model.{close[0]}?" if close else f" model.{key} is not one of its keys."
    return ""


def build_from_target(cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    cls = import_model_class(cfg.target)
    call = f"{cfg.target}(in_shape={in_shape}, n_outputs={n_outputs}" + "".join(
        f", {k}={v!r}" for k, v in cfg.options.items()) + ")"
    try:
        return cls(in_shape=in_shape, n_outputs=n_outputs, **cfg.options)
    except Exception as exc:  # noqa: BLE001
        what = "the custom model" if cfg.name == "custom" else f"model={cfg.name}"
        # A ValueError is the class refusing a value and says the fix; anything else is a call that does not fit.
        advice = "" if isinstance(exc, ValueError) else (
            f"{unknown_key_hint(cls, cfg.options)} Its constructor must accept in_shape and n_outputs, and every "
            "extra model key (+model.NAME=value) as a keyword argument.")
        raise PneumolabError(
            f"Building {what} failed: {call} raised {type(exc).__name__}: {str(exc).rstrip('.')}.{advice}"
        ) from None


def check_output_shape(model: nn.Module, cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int) -> None:
    """Run two random images through a fresh model: it must give (2, n_outputs) finite logits."""
    x = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    title = model_title(cfg)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001
        raise PneumolabError(
            f"{title[0].upper()}{title[1:]} fails on a batch of shape {tuple(x.shape)}: {type(exc).__name__}: {exc}. "
            "Its forward must take float images (B, 1, H, W) and return logits (B, K)."
        ) from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PneumolabError(
            f"{title[0].upper()}{title[1:]} returned {shape} for a batch of shape {tuple(x.shape)}; it must return "
            f"logits of shape (B, {n_outputs}) = (2, {n_outputs}) for this head ({n_outputs} output"
            f"{'s' if n_outputs > 1 else ''}). Use n_outputs for the size of its last layer."
        )
