"""A job's trained seeds on disk: model.safetensors, and what applying them needs.

Every non-diverged seed's weights at the evaluated checkpoint go into one safetensors
file (keys `seed_<k>/<parameter>`; never pickle). results.json's `inference` entry
records what rebuilding and applying them needs without the training data: the model
config, head, input shape, how images were made square (`resize`), the training
pixels' mean and std, the class names and the decision rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from pneumolab.config import SCHEMAS, CustomModelConfig
from pneumolab.data import CLASSES, normalize
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_write_bytes
from pneumolab.heads import make_head
from pneumolab.models import ModelConfig, build_model

if TYPE_CHECKING:
    from pneumolab.train import SeedRun

WEIGHTS = "model.safetensors"
DECISION_RULE = ("a seed predicts PNEUMONIA when its P(pneumonia) > 0.5 (log-odds > 0); the seed ensemble "
                 "predicts PNEUMONIA when the mean of the seeds' P(pneumonia) > 0.5")
BATCH = 256  # images per forward pass when applying saved seeds


def save_weights(job_dir: Path, runs: list["SeedRun"]) -> None:
    # torch's .contiguous(), not np.ascontiguousarray: that makes a 0-d array (BatchNorm's
    # num_batches_tracked) 1-d, which would then not load.
    tensors = {f"seed_{run.seed}/{name}": torch.from_numpy(value).contiguous()
               for run in runs if run.weights is not None for name, value in run.weights.items()}
    metadata = {"seeds": ",".join(str(run.seed) for run in runs if run.weights is not None)}
    atomic_write_bytes(job_dir / WEIGHTS, save(tensors, metadata=metadata))


def inference_record(model: dict, head: str, in_shape: tuple[int, ...], resize: str, stats: tuple[float, float],
                     runs: list["SeedRun"]) -> dict[str, Any]:
    return {
        "weights": WEIGHTS,
        "model": model,
        "head": head,
        "input_shape": list(in_shape),
        "resize": resize,
        "pixel_mean": stats[0],
        "pixel_std": stats[1],
        "classes": list(CLASSES),
        "decision_rule": DECISION_RULE,
        "seeds": [run.seed for run in runs if run.weights is not None],
        "left_out": [{"seed": run.seed, "reason": "diverged"} for run in runs if run.weights is None],
    }


@dataclass
class SavedSeeds:
    """A finished job's seeds, rebuilt on the CPU and ready to apply."""

    run_dir: Path
    record: dict[str, Any]
    models: dict[int, torch.nn.Module]

    @property
    def image_size(self) -> int:
        return int(self.record["input_shape"][1])

    @property
    def resize(self) -> str:
        # Runs from before data.resize existed squeezed every image.
        return self.record.get("resize", "squeeze")

    def log_odds(self, images_u8: torch.Tensor, progress=None) -> np.ndarray:
        """uint8 images (N, 1, H, W) at the run's size -> float64 pneumonia log-odds (seeds, N)."""
        head = make_head(self.record["head"])
        mean, std = self.record["pixel_mean"], self.record["pixel_std"]
        out = []
        with torch.no_grad():
            for start in range(0, len(images_u8), BATCH):
                x = normalize(images_u8[start : start + BATCH], mean, std)
                out.append(torch.stack([head.log_odds(m(x)) for m in self.models.values()]).double())
                if progress:
                    progress(min(start + BATCH, len(images_u8)), len(images_u8))
        return torch.cat(out, dim=1).numpy() if out else np.zeros((len(self.models), 0))


def model_config(node: dict) -> ModelConfig:
    name = node.get("name")
    if name == "custom":
        return CustomModelConfig.from_dict(node)
    schema = SCHEMAS["model"].get(name)
    if schema is None:
        raise PneumolabError(f"The run records an unknown model {name!r}; this pneumolab knows "
                             f"{', '.join(SCHEMAS['model'])} and custom.")
    return schema(**node)


def load_seeds(run_dir: Path) -> SavedSeeds:
    """The run's saved seeds, or one paragraph saying what is missing or broken."""
    results_path = run_dir / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        record = results["inference"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PneumolabError(
            f"{run_dir} holds no finished pneumolab run with saved weights ({results_path} is missing, unreadable "
            "or from a version before 0.2.0). Give the directory of a job that finished (it holds results.json "
            "and model.safetensors), or re-run its command to train and keep the weights."
        ) from None
    tensors = read_weights(run_dir / record.get("weights", WEIGHTS))
    config = model_config(record["model"])
    in_shape = tuple(record["input_shape"])
    n_outputs = make_head(record["head"]).n_outputs
    models = {}
    for seed in record["seeds"]:
        prefix = f"seed_{seed}/"
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        model = build_model(config, in_shape, n_outputs)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise PneumolabError(
                f"The weights of seed {seed} in {run_dir / WEIGHTS} do not fit the model results.json records "
                f"({str(exc).splitlines()[0]}). The two files come from different runs: restore the pair, or re-run "
                "the job."
            ) from None
        models[seed] = model.eval()
    if not models:
        raise PneumolabError(f"Every seed of {run_dir} diverged, so it saved no weights to apply. Re-run it with a "
                             "lower optimizer.lr.")
    return SavedSeeds(run_dir, record, models)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PneumolabError(
            f"{path} is missing: this run was made before pneumolab 0.2.0 kept weights, or the file was deleted. "
            "Re-run the job's command (the same overrides) to train and keep them."
        )
    try:
        # On the CPU whatever device trained them, so that a GPU run predicts on any machine.
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PneumolabError(
            f"{path} is not a readable safetensors file ({exc}); it is truncated or corrupt. Re-run the job to "
            "write it again."
        ) from None
