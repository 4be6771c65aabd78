"""A job's trained seeds on disk: model.safetensors, and what applying them needs.

Every non-diverged seed's weights at the evaluated checkpoint go into one safetensors
file (keys `seed_<k>/<parameter>`; never pickle). results.json's `inference` entry
records what rebuilding and applying them needs without the training data: the model
config, head, input shape, how images were made square (`resize`), the training
pixels' mean and std, the class names and the decision rule.

Reading a run back trusts neither file: before any image is read, the entry is checked
against its schema (`check_record`), against the tensors of model.safetensors (every
listed seed present, every tensor of the shape the recorded model, head and input shape
give, all finite) and against the copy of the entry the weights file keeps in its own
metadata (runs saved with it). A damaged or edited entry is one paragraph naming the key
and the fix, never a raw error or a prediction at the wrong size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from pneumolab.config import CLASSES, HEADS, ModelConfig, built_in_model
from pneumolab.data.dataset import normalize
from pneumolab.errors import PneumolabError
from pneumolab.files import atomic_write_bytes
from pneumolab.record.names import RESULTS, WEIGHTS
from pneumolab.record.results import read_json
from pneumolab.engine.heads import make_head
from pneumolab.models import build_model

if TYPE_CHECKING:
    from pneumolab.record.seed_run import SeedRun

BATCH = 256  # images per forward pass when applying saved seeds


RESIZE_MODES = ("squeeze", "center_crop")
MAX_SIDE = 8192  # px: far above any image size pneumolab trains at
# What the weights file keeps a copy of in its metadata, for load_seeds to hold results.json's entry against.
RECORDED_KEYS = ("model", "head", "input_shape", "resize", "pixel_mean", "pixel_std", "seeds")


def save_weights(job_dir: Path, runs: list["SeedRun"], record: dict[str, Any] | None = None) -> None:
    """model.safetensors: every non-diverged seed's tensors, and (given `record`, results.json's inference
    entry) a copy of RECORDED_KEYS in the file's metadata, which reading the run back checks the entry against."""
    # torch's .contiguous(), not np.ascontiguousarray: that makes a 0-d array (BatchNorm's
    # num_batches_tracked) 1-d, which would then not load.
    tensors = {f"seed_{run.seed}/{name}": torch.from_numpy(value).contiguous()
               for run in runs if run.weights is not None for name, value in run.weights.items()}
    metadata = {"seeds": ",".join(str(run.seed) for run in runs if run.weights is not None)}
    if record is not None:
        metadata["inference"] = json.dumps({key: record[key] for key in RECORDED_KEYS if key in record},
                                           allow_nan=False)
    atomic_write_bytes(job_dir / WEIGHTS, save(tensors, metadata=metadata))


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
    """The recorded model config; runs saved before models were named by `_target_` record `name: mlp`."""
    node = dict(node)
    name = node.pop("name", None)
    if "_target_" not in node and name not in (None, "custom"):
        builtin = built_in_model(name)
        node = {"_target_": builtin.target, **node}
    return ModelConfig.from_dict(node)


class RecordProblem(PneumolabError):
    """results.json's inference entry does not hold what applying the saved seeds needs."""


def entry_problem(run_dir: Path, key: str, problem: str, fix: str | None = None) -> RecordProblem:
    """One paragraph: which key of the entry is wrong, how, and what to do."""
    results = run_dir / RESULTS
    fix = fix or "restore the file from a copy"
    return RecordProblem(
        f"{results}: inference{'.' + key if key else ''} {problem}. The entry was edited or damaged, and the saved "
        f"seeds cannot be applied as they were trained. Fix: {fix}, or re-run the job's command (the same "
        "overrides) to train and write the run again."
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_record(record: Any, run_dir: Path) -> dict[str, Any]:
    """The inference entry when it has the schema `inference_record` writes; else a RecordProblem naming the key."""
    if not isinstance(record, dict):
        raise entry_problem(run_dir, "", f"is a JSON {type(record).__name__}, not an object")
    weights = record.get("weights", WEIGHTS)
    if not (isinstance(weights, str) and weights and Path(weights).name == weights and weights not in (".", "..")):
        raise entry_problem(run_dir, "weights", f"is {weights!r}, not the name of a file in the run directory",
                            f'set it back to "{WEIGHTS}"')
    for key in ("model", "head", "input_shape", "pixel_mean", "pixel_std", "seeds"):
        if key not in record:
            raise entry_problem(run_dir, key, "is missing")
    model = record["model"]
    if not isinstance(model, dict) or not isinstance(model.get("_target_", model.get("name")), str):
        raise entry_problem(run_dir, "model", f"is {model!r}, not a model config with a _target_")
    if record["head"] not in HEADS:
        raise entry_problem(run_dir, "head", f"is {record['head']!r}, not a head pneumolab knows ({', '.join(HEADS)})",
                            "set it back to the head the run was trained with (its config.head.name)")
    shape = record["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(map(is_int, shape)) and shape[0] == 1
            and shape[1] == shape[2] and 1 <= shape[1] <= MAX_SIDE):
        raise entry_problem(run_dir, "input_shape", f"is {shape!r}, not [1, H, H] (one channel, square images of "
                            f"1 to {MAX_SIDE} px)", "set it back to [1, S, S] with S the run's image size "
                            "(data_summary in results.json gives it)")
    if record.get("resize", "squeeze") not in RESIZE_MODES:
        raise entry_problem(run_dir, "resize", f"is {record['resize']!r}, not one of {', '.join(RESIZE_MODES)}",
                            "set it back to the run's data.resize (center_crop unless the run set squeeze)")
    for key in ("pixel_mean", "pixel_std"):
        value = record[key]
        if not is_number(value):
            raise entry_problem(run_dir, key, f"is {value!r}, not a finite number")
    if not 0.0 <= record["pixel_mean"] <= 1.0:
        raise entry_problem(run_dir, "pixel_mean", f"is {record['pixel_mean']!r}, outside [0, 1] (the mean training "
                            "pixel as a fraction of 255)")
    if not 0.0 < record["pixel_std"] <= 1.0:
        raise entry_problem(run_dir, "pixel_std", f"is {record['pixel_std']!r}, not in (0, 1] (the training pixels' "
                            "std as a fraction of 255)")
    if "classes" in record and record["classes"] != list(CLASSES):
        raise entry_problem(run_dir, "classes", f"is {record['classes']!r}; pneumolab's classes are "
                            f"{list(CLASSES)} in that order (label 1 is pneumonia)", f"set it back to {list(CLASSES)}")
    seeds = record["seeds"]
    if not (isinstance(seeds, list) and all(map(is_int, seeds)) and len(set(seeds)) == len(seeds)):
        raise entry_problem(run_dir, "seeds", f"is {seeds!r}, not a list of distinct integer seeds")
    return record


def check_against_results(record: dict[str, Any], results: dict[str, Any], run_dir: Path) -> None:
    """The entry against the rest of results.json, which records the same facts another way: the config's model
    and head, the data summary's image shape (and, for folder data, data.resize)."""
    config = results.get("config") if isinstance(results.get("config"), dict) else {}
    head = config.get("head", {}).get("name") if isinstance(config.get("head"), dict) else None
    if head in HEADS and record["head"] != head:
        raise entry_problem(run_dir, "head", f"is {record['head']!r}, but the run was trained with head={head} "
                            "(config.head.name)", f'set it back to "{head}"')
    if isinstance(config.get("model"), dict) and record["model"] != config["model"]:
        raise entry_problem(run_dir, "model", f"is {json.dumps(record['model'])}, but the run was trained with "
                            f"{json.dumps(config['model'])} (config.model)", "set it back to config.model")
    summary = results.get("data_summary")
    image_shape = summary.get("image_shape") if isinstance(summary, dict) else None
    if (isinstance(image_shape, list) and len(image_shape) == 2 and all(map(is_int, image_shape))
            and record["input_shape"][1:] != image_shape):
        raise entry_problem(run_dir, "input_shape", f"is {record['input_shape']}, but the run was trained on "
                            f"{image_shape[0]}x{image_shape[1]} px images (data_summary.image_shape)",
                            f"set it back to {[1, *image_shape]}")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    if data.get("resize") in RESIZE_MODES and record.get("resize", "squeeze") != data["resize"]:
        raise entry_problem(run_dir, "resize", f"is {record.get('resize')!r}, but the run was trained with "
                            f"data.resize={data['resize']}", f'set it back to "{data["resize"]}"')


def weights_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} when it has none)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PneumolabError(
            f"{path} is not a readable safetensors file ({exc}); it is truncated or corrupt. Re-run the job to "
            "write it again."
        ) from None


def check_against_weights_record(record: dict[str, Any], metadata: dict[str, str], run_dir: Path,
                                 weights: Path) -> None:
    """The entry against what the weights file says of itself: its seeds, and (runs saved with it) its copy of
    the entry."""
    held = [int(k) for k in metadata.get("seeds", "").split(",") if k.strip().lstrip("-").isdigit()]
    if "seeds" in metadata:
        missing = [seed for seed in record["seeds"] if seed not in held]
        if missing:
            raise entry_problem(run_dir, "seeds", f"lists seed{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(str, missing))}, which {weights.name} does not hold (it holds "
                                f"{', '.join(map(str, held)) or 'none'})", f"set it back to {held}")
        if sorted(record["seeds"]) != sorted(held):
            # The file holds exactly the seeds the entry lists: a seed left out would change the ensemble.
            raise entry_problem(run_dir, "seeds", f"is {record['seeds']}, but {weights.name} holds seeds {held}",
                                f"set it back to {held}")
    try:
        saved = json.loads(metadata["inference"]) if "inference" in metadata else {}
    except ValueError:
        saved = {}
    for key in RECORDED_KEYS:
        if key in saved and record.get(key, "squeeze" if key == "resize" else None) != saved[key]:
            raise entry_problem(run_dir, key, f"is {json.dumps(record.get(key))}, but {weights.name} was saved with "
                                f"{json.dumps(saved[key])}", f"set it back to {json.dumps(saved[key])}")


def check_tensors(run_dir: Path, weights: Path, seed: int, state: dict[str, torch.Tensor], model: torch.nn.Module,
                  record: dict[str, Any]) -> None:
    """Seed `seed`'s tensors against the model the entry describes: the same names, shapes, finite values."""
    if not state:
        raise entry_problem(run_dir, "seeds", f"lists seed {seed}, which {weights.name} holds no tensors of",
                            "remove it from the list")
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        name = (next((n for n in expected if found.get(n) != expected[n]), None)
                or next(n for n in found if n not in expected))
        there = "missing" if name not in found else "x".join(map(str, found[name])) or "a scalar"
        wanted = "absent" if name not in expected else "x".join(map(str, expected[name])) or "a scalar"
        suspects = "inference.model, inference.head or inference.input_shape"
        raise entry_problem(
            run_dir, "model",
            f"(with head {record['head']!r} and input_shape {record['input_shape']}) does not describe the network "
            f"{weights.name} holds: its tensor seed_{seed}/{name} is {there} there but {wanted} in the model this "
            f"entry builds. One of {suspects} was changed, or the two files come from different runs",
            "set the keys back to what the run was trained with (its config in results.json), or restore the pair "
            "of files from one run")
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise PneumolabError(
            f"{weights} holds NaN or infinite values in seed {seed}'s {bad[0]}: the file is damaged. Restore it from "
            "a copy, or re-run the job to write it again."
        )


def load_seeds(run_dir: Path) -> SavedSeeds:
    """The run's saved seeds, checked against results.json's entry; else one paragraph saying what is wrong."""
    results_path = run_dir / RESULTS
    results, _ = read_json(results_path)
    record = results.get("inference") if isinstance(results, dict) else None
    if record is None:
        raise PneumolabError(
            f"{run_dir} holds no finished pneumolab run with saved weights ({results_path} is missing, unreadable "
            "or from a version before 0.2.0). Give the directory of a job that finished (it holds results.json "
            "and model.safetensors), or re-run its command to train and keep the weights."
        ) from None
    record = check_record(record, run_dir)
    check_against_results(record, results, run_dir)
    weights = run_dir / record.get("weights", WEIGHTS)
    tensors = read_weights(weights)
    check_against_weights_record(record, weights_metadata(weights), run_dir, weights)
    if not record["seeds"]:
        raise PneumolabError(f"Every seed of {run_dir} diverged, so it saved no weights to apply. Re-run it with a "
                             "lower optimizer.lr.")
    in_shape = tuple(record["input_shape"])
    n_outputs = make_head(record["head"]).n_outputs
    config = recorded_model_config(record, run_dir)
    models = {}
    for seed in record["seeds"]:
        prefix = f"seed_{seed}/"
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        model = build_recorded_model(config, in_shape, n_outputs, run_dir)
        check_tensors(run_dir, weights, seed, state, model, record)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise PneumolabError(
                f"The weights of seed {seed} in {weights} do not fit the model results.json records "
                f"({str(exc).splitlines()[0]}). The two files come from different runs: restore the pair, or re-run "
                "the job."
            ) from None
        models[seed] = model.eval()
    check_outputs(next(iter(models.values())), in_shape, n_outputs, run_dir)
    return SavedSeeds(run_dir, record, models)


def recorded_model_config(record: dict[str, Any], run_dir: Path) -> ModelConfig:
    try:
        return model_config(record["model"])
    except RecordProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - a schema's own check or a key it does not take
        detail = str(exc).removeprefix("Invalid config value ")
        raise entry_problem(run_dir, "model", f"is not a model config this pneumolab builds ({detail})",
                            "set it back to the run's config.model in results.json") from None


def build_recorded_model(config: ModelConfig, in_shape: tuple[int, ...], n_outputs: int,
                         run_dir: Path) -> torch.nn.Module:
    if config.name == "custom":
        return build_model(config, in_shape, n_outputs)  # a user's class: its own errors already say what to do
    try:
        return build_model(config, in_shape, n_outputs)
    except Exception as exc:  # noqa: BLE001
        raise entry_problem(run_dir, "model", f"with input_shape {list(in_shape)} does not build a network "
                            f"({type(exc).__name__}: {exc})", "set inference.model and inference.input_shape back "
                            "to what the run was trained with") from None


def check_outputs(model: torch.nn.Module, in_shape: tuple[int, ...], n_outputs: int, run_dir: Path) -> None:
    """One blank image through the model: (1, n_outputs) logits, or a paragraph."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *in_shape))
    except Exception as exc:  # noqa: BLE001
        raise entry_problem(run_dir, "input_shape", f"is {list(in_shape)}, and the saved network fails on an image "
                            f"of that shape ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                            "set it back to the run's image size") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise entry_problem(run_dir, "head", f"gives {n_outputs} output{'s' if n_outputs > 1 else ''} per image, but "
                            f"the saved network returns {shape} for one image", "set it back to the run's head")


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
