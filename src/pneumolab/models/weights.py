"""model.weights=PATH: a local state-dict file every seed of a built-in model starts from.

A `.safetensors` file is read with safetensors, any other with torch.load(weights_only=True),
so neither runs pickled code; nothing is downloaded. The file is checked against the model
(`load_initial_weights`) before any training, and each problem is one paragraph.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pneumolab.errors import PneumolabError

HOW_TO_SAVE = ("Save it with safetensors.torch.save_file(model.state_dict(), 'start.safetensors') or "
               "torch.save(model.state_dict(), 'start.pt')")
SHOWN = 3  # mismatches named per kind


def read_state_dict(weights: str) -> dict[str, torch.Tensor]:
    """The file's tensors by name, on the CPU."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PneumolabError(
            f"model.weights={weights}: {path.resolve()} does not exist or is not a file. Give the path of a local "
            f"state-dict file (nothing is downloaded), or model.weights=null for a random start. {HOW_TO_SAVE}."
        )
    try:
        state = (load_file(path, device="cpu") if path.suffix == ".safetensors"
                 else torch.load(path, map_location="cpu", weights_only=True))
    except (SafetensorError, OSError) as exc:
        raise PneumolabError(f"model.weights={weights}: {path} cannot be read ({exc}). {HOW_TO_SAVE}.") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        # torch's own message is a page about weights_only; what matters is that the file is not plain tensors.
        raise PneumolabError(
            f"model.weights={weights}: {path} is not a torch.save file of tensors alone (torch.load with "
            f"weights_only=True refused it; it is corrupt, not a torch file, or holds other Python objects such as a "
            f"whole model or an optimizer). {HOW_TO_SAVE}; a .safetensors file is read as safetensors."
        ) from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise PneumolabError(
            f"model.weights={weights}: {path} holds a {type(state).__name__}, not a state dict (parameter names "
            f"mapped to tensors); a training checkpoint keeps one under a key such as 'state_dict'. {HOW_TO_SAVE}."
        )
    return state


def load_initial_weights(model: nn.Module, state: dict[str, torch.Tensor], weights: str, model_name: str) -> None:
    """Copy `state` into `model`, or one paragraph naming the first keys and shapes that do not fit."""
    expected = model.state_dict()
    problems = [
        named("missing", [k for k in expected if k not in state]),
        named("unexpected", [k for k in state if k not in expected]),
        named("of another shape", [f"{k} {tuple(state[k].shape)} (the model's: {tuple(v.shape)})"
                                   for k, v in expected.items() if k in state and state[k].shape != v.shape]),
    ]
    problems = [p for p in problems if p]
    if problems:
        hint = (" It looks like a pneumolab run's model.safetensors, which holds every seed under seed_<k>/: save one "
                "seed's tensors without that prefix." if any(k.startswith("seed_") and "/" in k for k in state) else "")
        raise PneumolabError(
            f"model.weights={weights} does not fit model={model_name} as configured here: tensors "
            f"{'; '.join(problems)}.{hint} Give weights saved from the same model with the same model.* settings, "
            "image size and head (head=bce has one output, head=ce two), or model.weights=null."
        )
    model.load_state_dict(state)


def named(kind: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{kind}: {', '.join(items[:SHOWN])}{more}"
