"""A model's class, named by `model._target_` (a built-in model's or a user's): imported, built and
checked before training, and a user's code fenced during it.

Everything pneumolab runs of a user's class (the import, the constructor, forward and backward)
is fenced: an exception from it, SystemExit included, becomes one paragraph that names the class,
the phase and the user's line. Ctrl-C is not caught: it stops the run as always.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import io
import os
import sys
import traceback
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from types import ModuleType
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from pneumolab.config import ModelConfig, model_name
from pneumolab.errors import PneumolabError
from pneumolab.extras import EXTRA_MODULES, require_extra

NO_FENCE = nullcontext()  # reusable: what a built-in model's code runs in
EXAMPLE = "e.g. model._target_=mynets.TinyNet for class TinyNet in ./mynets.py"
# Frames in these folders are torch's and pneumolab's; the last frame outside them is the user's line.
NOT_USER_CODE = (str(Path(torch.__file__).parent) + os.sep, str(Path(__file__).parent.parent) + os.sep)


def import_model_class(target: str) -> type[nn.Module]:
    """The class `target` names, importable from the current directory or the environment."""
    # Console scripts do not put the working directory on sys.path, but a user's mynets.py sits there.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, class_name = target.rpartition(".")
    if not module_name:
        raise PneumolabError(f"model._target_={target} names no module. Give module.Class, {EXAMPLE}.")
    module = import_model_module(target, module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PneumolabError(f"model._target_={target}: the module {module_name} ({module.__file__}) has no "
                             f"{class_name}. Check the class name's spelling.")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PneumolabError(f"model._target_={target} is not an nn.Module class. Name a subclass of torch.nn.Module.")
    return cls


def import_model_module(target: str, module_name: str) -> ModuleType:
    """Import the model's module as `python -c 'import mynets'` would: with none of pneumolab's
    arguments in sys.argv, so a module that parses the command line when imported (argparse's
    parse_args() at module level) sees none and keeps its defaults, instead of refusing
    pneumolab's overrides and exiting. What it writes to stderr then is held back: on a
    failure it goes into the paragraph, otherwise it is written out after the import."""
    argv, sys.argv = sys.argv, [module_name]
    said = io.StringIO()
    try:
        with redirect_stderr(said):
            module = importlib.import_module(module_name)
    except SystemExit as exc:
        written = " ".join(said.getvalue().split())
        raise PneumolabError(
            f"model._target_={target}: the module {module_name} exits while it is imported (SystemExit: {exc.code}"
            f"{'; it wrote: ' + written if written else ''}). pneumolab imports it with no command-line arguments: "
            "move the code that parses them (argparse's parse_args()) or calls sys.exit() under "
            "`if __name__ == \"__main__\":`, which an import does not run."
        ) from None
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
    finally:
        sys.argv = argv
    sys.stderr.write(said.getvalue())
    return module


def model_title(cfg: ModelConfig) -> str:
    """How a message starts naming the model: Model=cnn for a built-in one, The custom model X for a user's."""
    return f"Model={cfg.name}" if cfg.name != "custom" else f"The custom model {cfg.target}"


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
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        what = "the custom model" if cfg.name == "custom" else f"model={cfg.name}"
        # A ValueError is the class refusing a value and says the fix; anything else is a call that does not fit.
        advice = "" if isinstance(exc, ValueError) else (
            f"{unknown_key_hint(cls, cfg.options)} Its constructor must accept in_shape and n_outputs, and every "
            "extra model key (+model.NAME=value) as a keyword argument.")
        raise PneumolabError(
            f"Building {what} failed: {call} raised {type(exc).__name__}: {str(exc).rstrip('.')}{user_line(exc)}."
            f"{advice}"
        ) from None


def fenced(cfg: ModelConfig, where: str) -> ContextManager[None]:
    """Run pneumolab's calls into a user's model code (nothing for a built-in model, whose errors are
    pneumolab's own): whatever that code raises, SystemExit included, becomes one paragraph naming the
    class and `where` ("during training, epoch 3, forward"). KeyboardInterrupt passes: Ctrl-C still stops."""
    return user_code(cfg.target, where) if cfg.name == "custom" else NO_FENCE


def step_fence(cfg: ModelConfig, where: str) -> Callable[[str], ContextManager[None]]:
    """`fenced(cfg, f"{where}, {step}")` for each step of a loop, decided once: a built-in model's steps
    get the one shared nullcontext, with no name looked up or message formatted per batch."""
    if cfg.name != "custom":
        return lambda step: NO_FENCE
    return lambda step: user_code(cfg.target, f"{where}, {step}")


@contextmanager
def user_code(target: str, where: str) -> Iterator[None]:
    try:
        yield
    except PneumolabError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code may raise anything
        raise PneumolabError(
            f"The custom model {target} failed {where}: {described(exc)}{user_line(exc)}. Fix the model's code "
            "(its forward must take float images (B, 1, H, W) and return logits (B, K) for every batch, in train() "
            "and eval() mode alike) and run the command again."
        ) from None


def described(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({'' if exc.code is None else repr(exc.code)}) (SystemExit)"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def user_line(exc: BaseException) -> str:
    """" (at mynets.py:12, in forward)": the last line of the traceback outside torch and pneumolab."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(NOT_USER_CODE)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def check_in_training(model: nn.Module, cfg: ModelConfig, in_shape: tuple[int, int, int], n_outputs: int,
                      batch_sizes: list[int]) -> None:
    """Before training, as training will run it: trainable parameters, then in train() mode, on a random
    batch of each size an epoch has (the full batch, and a last, smaller one), finite logits
    (B, n_outputs) that depend on the parameters, and a backward pass."""
    title = model_title(cfg)
    if not any(p.requires_grad for p in model.parameters()):
        raise PneumolabError(
            f"{title} has no trainable parameters, so there is nothing to train. Give it "
            "layers with weights (nn.Linear, nn.Conv2d, ...) registered as attributes of the module (a plain list "
            "hides them: use nn.ModuleList), and leave their requires_grad on."
        )
    model.train()
    for size in batch_sizes:
        x = torch.randn(size, *in_shape, generator=torch.Generator().manual_seed(0))
        where = f"before training, on a random batch of shape {tuple(x.shape)} in train() mode"
        with fenced(cfg, f"{where}, forward"):
            out = model(x)
        check_first_logits(out, title, where, x.shape[0], n_outputs)
        with fenced(cfg, f"{where}, backward"):
            out.float().sum().backward()


def check_first_logits(out, title: str, where: str, batch: int, n_outputs: int) -> None:
    """The check batch's output: a tensor (batch, n_outputs), finite, and computed from the parameters."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PneumolabError(
            f"{title} returned {shape} {where}; it must return logits of shape (B, {n_outputs}) = "
            f"({batch}, {n_outputs}) for this head ({n_outputs} output{'s' if n_outputs > 1 else ''}). Use n_outputs "
            "for the size of its last layer."
        )
    if not torch.isfinite(out).all():
        raise PneumolabError(
            f"{title} returned NaN or infinite logits {where}, before any training. Check its "
            "initialisation and the operations of its forward that can overflow (exp, log of 0, division by 0)."
        )
    if not out.requires_grad:
        raise PneumolabError(
            f"{title} returned logits that do not depend on its parameters {where}, so no "
            "gradient can train it. Do not detach the output or compute it under torch.no_grad() in forward."
        )
