"""Checks made before a job allocates or writes anything: disk room and memory.

A full, read-only or uncreatable output or cache folder, and a request that cannot fit
in memory, stop the job with one paragraph while nothing has been rendered, decoded or
written yet. The checks read the file system (statvfs, access) rather than writing probe
files, so they leave nothing behind in folders that are not the job's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pneumolab.cores import own_cgroup_dirs
from pneumolab.errors import PneumolabError
from pneumolab.files import human_size, unwritable_reason

if TYPE_CHECKING:  # torch is imported only when a GPU is checked
    import torch

    from pneumolab.config import Config

MB = 1_000_000
# What a job writes besides its weights: results.json, metrics.csv, two figures, Hydra's
# .hydra/ and its log (a few hundred kB at the report's 30 epochs), with room to spare.
OUTPUT_BYTES = 2 * MB
# Bytes per parameter per seed while training: weights, gradients and the optimizer's
# state (Adam's two moments; SGD's momentum), all float32.
FLOAT32 = 4
STATE_COPIES = {"adam": 4, "sgd": 3}


# --- disk ---------------------------------------------------------------------


def check_output_dir(path: Path, need_bytes: int = OUTPUT_BYTES) -> None:
    reason = unwritable_reason(path, need_bytes)
    if reason:
        raise PneumolabError(
            f"Cannot write the output folder {path}: {reason}. Free some space there or make it writable, "
            "or write elsewhere with hydra.run.dir=/path/to/folder (hydra.sweep.dir=... for a sweep)."
        )


def check_cache_dir(path: Path, need_bytes: int) -> None:
    reason = unwritable_reason(path, need_bytes)
    if reason:
        raise PneumolabError(
            f"Cannot write the data cache {path}: {reason}. Free some space there or make it writable, "
            "or point data.cache_dir (or $PNEUMOLAB_DATA) at a writable folder with room."
        )


# --- memory -------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _room_under(limit_file: Path, usage_file: Path) -> int | None:
    try:
        limit, used = limit_file.read_text().strip(), int(usage_file.read_text())
    except (OSError, ValueError):
        return None
    # cgroup v2 writes "max", v1 a number near 2**63 when there is no limit.
    if limit == "max" or int(limit) >= 2**60:
        return None
    return int(limit) - used


def _cgroup_room() -> int | None:
    """Room left under this process's cgroup memory limits (v2 or v1, with their parents), None if unlimited.

    By hand: no library reads cgroup limits (psutil reports the whole machine).
    """
    rooms = [room for folder in own_cgroup_dirs("memory")
             for room in (_room_under(folder / "memory.max", folder / "memory.current"),
                          _room_under(folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes"))
             if room is not None]
    return min(rooms) if rooms else None


def available_memory(device: "torch.device | None" = None) -> tuple[int | None, str]:
    """Bytes this process may still allocate (on `device` when it is a GPU), and where that figure comes from."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0], f"free memory on {device}"
    candidates = [(b, what) for b, what in ((_meminfo_available(), "MemAvailable in /proc/meminfo"),
                                            (_cgroup_room(), "this process's cgroup memory limit")) if b is not None]
    if not candidates:
        return None, "unknown"
    return min(candidates)


@dataclass(frozen=True)
class MemoryNeed:
    images: int  # uint8 pixels of every split, as loaded
    model: int  # training state of every seed
    batch: int  # one training batch and one evaluation chunk, as float32

    @property
    def total(self) -> int:
        return self.images + self.model + self.batch


def check_memory(need: MemoryNeed, room: int | None, source: str, what: str, fix: str) -> None:
    if room is None or need.total <= room:
        return
    raise PneumolabError(
        f"{what} needs about {human_size(need.total)} of memory (images {human_size(need.images)}, model training "
        f"state {human_size(need.model)}, batches {human_size(need.batch)}), but only {human_size(room)} is available "
        f"({source}). {fix}"
    )


# --- a job --------------------------------------------------------------------

# Test images scored at once (train.EVAL_CHUNK), held as float32 like a training batch.
EVAL_IMAGES = 512


def model_parameters(settings: "Config", in_shape: tuple[int, int, int]) -> int:
    """Parameters of one seed's model, counted on torch's meta device (which allocates nothing); a model
    whose constructor cannot run there is built for real, as `models.check_model` builds it anyway."""
    import torch

    from pneumolab.engine.heads import make_head
    from pneumolab.models import build_model

    def build():
        return build_model(settings.model, in_shape, make_head(settings.head.name).n_outputs)

    try:
        with torch.device("meta"):
            model = build()
    except PneumolabError:
        model = build()  # a constructor that cannot run there; refused here only if it fails on the CPU too
    return sum(p.numel() for p in model.parameters())


def check_job_resources(settings: "Config", job_dir: Path, device: "torch.device") -> None:
    """Disk room for the outputs and caches, and memory for images and models, before any is used."""
    from pneumolab.data.load import plan_data

    plan = plan_data(settings.data)
    height, width = plan.image_shape
    seeds = len(settings.trainer.seeds)
    params = model_parameters(settings, (1, height, width))
    need = MemoryNeed(
        images=plan.n_images * height * width,
        model=seeds * params * FLOAT32 * STATE_COPIES.get(settings.optimizer.name, 4),
        batch=(settings.data.batch_size * seeds + EVAL_IMAGES) * height * width * FLOAT32,
    )
    what = f"Training {seeds} seed(s) on {plan.n_images} images of {height}x{width} px"
    fix = ("Lower the image size (data.image_size, or data.size for PneumoniaMNIST), the model "
           "(model.hidden_sizes), the number of seeds (trainer.seeds) or data.batch_size.")
    if device.type == "cuda":
        check_memory(MemoryNeed(need.images, 0, 0), *available_memory(), what, fix)
    check_memory(need, *available_memory(device), what, fix)
    check_output_dir(job_dir, OUTPUT_BYTES + seeds * params * FLOAT32)  # model.safetensors: every seed's weights
    if plan.cache_dir is not None:
        check_cache_dir(plan.cache_dir, plan.cache_bytes)
