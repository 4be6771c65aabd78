"""Training every seed of one configuration with autograd and torch.optim.

The seeds of a process train side by side in one stacked model (`models.build_stack`),
or one after another (trainer.batched_seeds=false); the seeds of a job may be split
over forked processes (`seed_processes`). Each seed draws its initial weights from
torch.manual_seed(seed), its shuffling from a generator of its own and its dropout
masks from its own stream, so its draws never depend on the seeds beside it; in a
stack of two or more its arithmetic does not either, to the last bit (see
`StackedMLP`), and one-by-one training agrees with stacked training to float rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, ContextManager

import numpy as np
import torch

from pneumolab.config import Config
from pneumolab.data.dataset import Dataset, Split, normalize, stratified_holdout
from pneumolab.errors import PneumolabError
from pneumolab.record.metrics import binary_metrics
from pneumolab.record.seed_run import HISTORY_KEYS, SeedRun
from pneumolab.engine.augment import Augmenter, make_augmenter
from pneumolab.engine.heads import Head, balanced_class_weights, make_head, predict
from pneumolab.models import build_stack, check_model, trained_rows
from pneumolab.models.target import fenced, step_fence
from pneumolab.engine.optim import Scheduler, make_optimizer, make_scheduler
from pneumolab.workers import call_side_by_side, fork_available

# Rows per evaluation chunk: bounds the float copy of 224 px images to ~100 MB.
EVAL_CHUNK = 512
# Pixels per seed augmented at a time (16 MB of float32): a whole epoch at 28 px, two batches at 224 px.
AUGMENT_CHUNK_PIXELS = 2**22
EpochCallback = Callable[[int, int, list[int], dict[str, list[float]]], None]


def configure_torch(settings: Config) -> None:
    import torch

    # One thread is fastest for these small matrices (see scripts/bench.py); parallel
    # sweep jobs get one core each instead.
    torch.set_num_threads(settings.trainer.threads or 1)
    # Tiny gradients and Adam moments turn subnormal in the first epochs, and every CPU
    # operation on a subnormal float is many times slower: those epochs took 1.6x as long.
    torch.set_flush_denormal(True)
    if settings.trainer.deterministic:
        # Must be set before the first cuBLAS call; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: sweep jobs can share one process, and one job's choice must not leak into the next.
    # Only on a change: the call imports the graph compiler, seconds of start-up.
    if torch.are_deterministic_algorithms_enabled() != settings.trainer.deterministic:
        torch.use_deterministic_algorithms(settings.trainer.deterministic)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PneumolabError(
                f"trainer.device={name} was asked for, but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
                "Use trainer.device=cpu or trainer.device=auto."
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise PneumolabError(
                f"trainer.device={name} names GPU {index}, but only {torch.cuda.device_count()} "
                "are visible. Pick an existing index or set CUDA_VISIBLE_DEVICES."
            )
    return torch.device(name)


@dataclass
class DeviceData:
    """A split on the training device: uint8 images (N, 1, H, W) and their labels."""

    images: torch.Tensor
    labels: torch.Tensor
    stats: tuple[float, float]  # the training pixels' mean and std
    # (S, n): the rows each seed uses, when seeds hold out their own validation images; None: all rows.
    index: torch.Tensor | None = None

    @classmethod
    def of(cls, split: Split, device: torch.device, stats: tuple[float, float]) -> "DeviceData":
        return cls(split.images.to(device), split.labels.to(device), stats)

    @property
    def n_rows(self) -> int:
        """The rows a seed uses."""
        return len(self.labels) if self.index is None else self.index.shape[1]

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Images gathered by a flat index tensor, or sliced, as normalised float32."""
        # index_select is a faster gather than images[index].
        x = self.images[index] if isinstance(index, slice) else self.images.index_select(0, index)
        return normalize(x, *self.stats)

    def batch(self, index: torch.Tensor, augment: Augmenter | None = None) -> torch.Tensor:
        """The stacked batch of index (S, B) as normalised float32 (S, B, 1, H, W), augmented if asked."""
        shape = (*index.shape, *self.images.shape[1:])
        if augment is None:
            return self.rows(index.reshape(-1)).view(shape)
        pixels = self.images.index_select(0, index.reshape(-1)).view(shape).to(torch.float32).div_(255.0)
        mean, std = self.stats
        return augment(pixels).sub_(mean).div_(std)

    def seed_labels(self, n_seeds: int) -> torch.Tensor:
        """The labels of the rows each seed uses: (S, n)."""
        return self.labels.expand(n_seeds, -1) if self.index is None else self.labels[self.index]

    def class_counts(self) -> tuple[int, int]:
        """(normal, pneumonia) among the rows a seed uses (every seed's rows hold as many of each)."""
        labels = self.labels if self.index is None else self.labels[self.index[0]]
        n_pos = int(labels.sum())
        return len(labels) - n_pos, n_pos


@dataclass
class TrainingData:
    """The splits on the device; with `val_per_seed`, val is drawn from train by each seed."""

    splits: dict[str, DeviceData]
    val_per_seed: float | None = None

    def for_seeds(self, seeds: list[int]) -> dict[str, DeviceData]:
        if self.val_per_seed is None:
            return self.splits
        pool = self.splits["train"]
        held = [stratified_holdout(pool.labels.cpu().numpy(), self.val_per_seed, seed) for seed in seeds]
        # Stratified by class counts alone, so every seed keeps and holds out as many images.
        keep, val = (torch.from_numpy(np.stack([h[part] for h in held])).to(pool.images.device) for part in (0, 1))
        return {"train": replace(pool, index=keep), "val": replace(pool, index=val), "test": self.splits["test"]}


class SeedOptimizers:
    """torch.optim over a stack's seeds: one optimizer and schedule for all of them, or one each
    when the schedule follows each seed's own validation loss (plateau)."""

    def __init__(self, stack, settings: Config):
        n = stack.n_seeds
        if settings.scheduler.follows_each_seed:
            groups = [(stack.seed_parameters(s), [s]) for s in range(n)]
        else:
            groups = [(list(stack.parameters()), list(range(n)))]
        self.groups: list[tuple[torch.optim.Optimizer, Scheduler | None, list[int]]] = []
        for params, seeds in groups:
            optimizer = make_optimizer(params, settings.optimizer)
            self.groups.append((optimizer, make_scheduler(optimizer, settings.scheduler, settings.trainer.epochs), seeds))

    def lrs(self) -> list[float]:
        lr = {}
        for optimizer, _, seeds in self.groups:
            lr.update(dict.fromkeys(seeds, optimizer.param_groups[0]["lr"]))
        return [lr[s] for s in sorted(lr)]

    def step(self, loss: torch.Tensor, active: list[bool]) -> None:
        """Backpropagate the seeds' losses (S,) and step the optimizers of the active seeds."""
        for optimizer, _, _ in self.groups:
            optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        for optimizer, _, seeds in self.groups:
            # A diverged seed sharing an optimizer keeps stepping: its NaNs stay in its own weights.
            if any(active[s] for s in seeds):
                optimizer.step()

    def end_epoch(self, val_loss: list[float], active: list[bool]) -> None:
        for _, scheduler, seeds in self.groups:
            if scheduler is None or not any(active[s] for s in seeds):
                continue
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss[seeds[0]])
            else:
                scheduler.step()


def train_one_epoch(stack, optimizers: SeedOptimizers, head: Head, data: DeviceData,
                    shufflers: list[torch.Generator], batch_size: int, active: list[bool],
                    augment: Augmenter | None, fence: Callable[[str], ContextManager[None]]):
    """One pass over the training split, each seed in its own order; loss and accuracy (S,) over the
    images trained on (all, except a last batch of one image for a model with BatchNorm layers).
    `fence("forward")` and `fence("backward")` wrap the model's steps (see `models.target.fenced`)."""
    stack.train()
    n = data.n_rows
    order = torch.stack([torch.randperm(n, generator=g) for g in shufflers]).to(data.images.device)
    if data.index is not None:
        order = data.index.gather(1, order)
    # A last batch of one left out is the last image of each epoch's shuffle, so a different one each epoch.
    n = trained_rows(n, batch_size, stack)
    order = order[:, :n]
    labels = data.labels[order]
    logits = []
    for start, x in epoch_batches(data, order, batch_size, augment):
        with fence("forward"):
            batch_logits = checked_logits(stack(x), x.shape[:2], head.n_outputs)
            loss = head.loss(batch_logits, labels[:, start : start + batch_size])
        with fence("backward"):
            optimizers.step(loss, active)
        logits.append(batch_logits.detach())
    # The epoch's loss and accuracy come from the logits each batch had before its step,
    # in one pass here rather than a few small operations in every step.
    logits = torch.cat(logits, dim=1)
    return head.loss(logits, labels), (predict(head.log_odds(logits)) == labels).float().mean(1)


def epoch_batches(data: DeviceData, order: torch.Tensor, batch_size: int, augment: Augmenter | None):
    """(start, stacked batch) for every batch of an epoch in `order` (S, n).

    Augmentation runs on whole chunks of batches: a few large operations cost far less
    than many small ones per batch. A chunk's size depends on the image size alone,
    never on the number of seeds, so every seed draws the same parameters in any stack.
    """
    chunk = batch_size
    if augment is not None:
        chunk = max(1, AUGMENT_CHUNK_PIXELS // data.images[0].numel() // batch_size) * batch_size
    for chunk_start in range(0, order.shape[1], chunk):
        images = data.batch(order[:, chunk_start : chunk_start + chunk], augment)
        for start in range(0, images.shape[1], batch_size):
            yield chunk_start + start, images[:, start : start + batch_size]


def checked_logits(logits: torch.Tensor, batch_shape: tuple[int, int], n_outputs: int) -> torch.Tensor:
    """`logits`, which must be (S, B, n_outputs) for batch_shape (S, B): a custom model may change its
    output's shape mid-training, which the heads would otherwise slice or broadcast without a word."""
    if tuple(logits.shape) != (*batch_shape, n_outputs):
        raise ValueError(f"it returned logits of shape {tuple(logits.shape[1:])} for a batch of {batch_shape[1]} "
                         f"images, where every batch needs ({batch_shape[1]}, {n_outputs})")
    return logits


@torch.no_grad()
def evaluate(stack, head: Head, data: DeviceData):
    """Per-seed mean loss (S,), accuracy (S,) and pneumonia log-odds (S, N)."""
    stack.eval()
    n = data.n_rows
    losses, log_odds, labels = [], [], []
    for start in range(0, n, EVAL_CHUNK):
        if data.index is None:
            y = data.labels[start : start + EVAL_CHUNK].expand(stack.n_seeds, -1)
            logits = stack.forward_shared(data.rows(slice(start, start + EVAL_CHUNK)))
        else:  # each seed its own rows
            idx = data.index[:, start : start + EVAL_CHUNK]
            y = data.labels[idx]
            logits = stack(data.rows(idx.reshape(-1)).view(*idx.shape, *data.images.shape[1:]))
        logits = checked_logits(logits, y.shape, head.n_outputs)
        losses.append(head.loss(logits, y) * y.shape[1])
        log_odds.append(head.log_odds(logits))
        labels.append(y)
    log_odds = torch.cat(log_odds, dim=1)
    acc = (predict(log_odds) == torch.cat(labels, dim=1)).float().mean(1)
    return torch.stack(losses).sum(0) / n, acc, log_odds


def record_epoch(runs: list[SeedRun], active: list[bool], values: dict[str, list[float]]) -> list[int]:
    """Append one epoch to each active seed's history (NaN rows for inactive ones); marks newly
    diverged seeds inactive and returns the seeds whose validation accuracy is a new best."""
    improved = []
    for s, run in enumerate(runs):
        for key in HISTORY_KEYS:
            run.history[key].append(values[key][s] if active[s] or key == "epoch" else math.nan)
        if not active[s]:
            continue
        run.epochs_run = int(values["epoch"][s])
        if not (math.isfinite(values["train_loss"][s]) and math.isfinite(values["val_loss"][s])):
            run.diverged, active[s] = True, False
        elif values["val_acc"][s] > max((a for a in run.history["val_acc"][:-1] if a == a), default=-1.0):
            run.best_epoch = run.epochs_run
            improved.append(s)
    return improved


def fit_seeds(settings: Config, head: Head, data: TrainingData, seeds: list[int], batched: bool,
              on_epoch: EpochCallback | None = None) -> list[SeedRun]:
    """Train `seeds` side by side for trainer.epochs, then evaluate the chosen checkpoint on the test split."""
    splits = data.for_seeds(seeds)
    device, epochs = splits["train"].images.device, settings.trainer.epochs
    in_shape = tuple(splits["train"].images.shape[1:])
    stack = build_stack(settings.model, in_shape, head.n_outputs, seeds, device,
                        batched and not settings.scheduler.follows_each_seed)
    optimizers = SeedOptimizers(stack, settings)
    if settings.head.class_weights == "balanced":
        head = make_head(settings.head.name, balanced_class_weights(splits["train"].class_counts(), device))
    augment = make_augmenter(settings.augment, seeds)
    shufflers = [torch.Generator().manual_seed(shuffle_seed(seed)) for seed in seeds]
    runs, active, best = [SeedRun(seed) for seed in seeds], [True] * len(seeds), {}
    for epoch in range(1, epochs + 1):
        lrs = optimizers.lrs()
        train_loss, train_acc = train_one_epoch(stack, optimizers, head, splits["train"], shufflers,
                                                settings.data.batch_size, active, augment,
                                                step_fence(settings.model, f"during training, epoch {epoch}"))
        with fenced(settings.model, f"during validation after epoch {epoch} (eval() mode, no gradients)"):
            val_loss, val_acc, _ = evaluate(stack, head, splits["val"])
        # The one host sync of the epoch.
        rows = torch.stack([train_loss, train_acc, val_loss, val_acc]).cpu().tolist()
        values = dict(zip(HISTORY_KEYS, [[epoch] * len(seeds), lrs, *rows]))
        for s in record_epoch(runs, active, values):
            if settings.trainer.eval_checkpoint == "best_val":
                best[s] = stack.seed_state(s)
        optimizers.end_epoch(rows[2], active)
        if on_epoch:
            on_epoch(epoch, epochs, seeds, values)
        if not any(active):
            break
    with fenced(settings.model, "during the final evaluation on the validation and test images"):
        for s, state in best.items():
            stack.load_seed_state(s, state)
        return finish_runs(stack, head, splits, runs)


def finish_runs(stack, head: Head, splits: dict[str, DeviceData], runs: list[SeedRun]) -> list[SeedRun]:
    """The evaluated checkpoint's validation measures, test log-odds and weights, per seed."""
    _, val_acc, val_log_odds = evaluate(stack, head, splits["val"])
    _, _, log_odds = evaluate(stack, head, splits["test"])
    val_acc, log_odds = val_acc.cpu().tolist(), log_odds.cpu().double().numpy()
    val_labels = splits["val"].seed_labels(len(runs)).cpu().numpy()
    val_log_odds = val_log_odds.cpu().double().numpy()
    for s, run in enumerate(runs):
        if not run.diverged:
            run.val_acc, run.test_scores = val_acc[s], log_odds[s]
            val = binary_metrics(val_labels[s], val_log_odds[s], (val_log_odds[s] > 0).astype(np.int64))
            run.val_auc, run.val_balanced_acc = val["auc"], val["balanced_acc"]
            run.test_predictions = (log_odds[s] > 0).astype(np.int64)
            run.weights = {k: v.cpu().numpy() for k, v in stack.seed_state(s).items()}
    return runs


def shuffle_seed(seed: int) -> int:
    """The seed of a seed's shuffling generator: a stream apart from its initialisation."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0])


def fit_group(settings: Config, head: Head, data: TrainingData, seeds: list[int],
              on_epoch: EpochCallback | None = None) -> list[SeedRun]:
    """Train `seeds` in this process: side by side, or one after another."""
    if settings.trainer.batched_seeds:
        return fit_seeds(settings, head, data, seeds, batched=True, on_epoch=on_epoch)
    return [run for seed in seeds for run in fit_seeds(settings, head, data, [seed], False, on_epoch)]


def seed_processes(settings: Config, device: torch.device, cores: int) -> int:
    """How many processes share the seeds: trainer.processes, or when that is null, one per
    core of `cores` with at least two seeds each (CPU training on Linux, one thread each).

    At least two seeds, because a lone seed in a stack takes other BLAS paths than a stack
    of several, which would change its numbers; this way every seed gets the same numbers
    however many processes there are.
    """
    asked = settings.trainer.processes
    if asked is not None and asked > 1:
        if device.type != "cpu":
            raise PneumolabError(
                f"trainer.processes={asked} splits the seeds over CPU processes, but this job trains on "
                f"{device}, where all seeds already run as one batch. Use trainer.processes=null."
            )
        if not fork_available():
            raise PneumolabError(
                f"trainer.processes={asked} needs Linux (worker processes are forked). Use trainer.processes=1."
            )
    if asked is not None:
        return asked
    if device.type != "cpu" or not fork_available() or (settings.trainer.threads or 1) > 1:
        return 1
    return max(1, min(cores, len(settings.trainer.seeds) // 2))


def seed_groups(seeds: list[int], processes: int) -> list[list[int]]:
    """`seeds` in `processes` runs of consecutive seeds (fewer if there are fewer seeds),
    sizes differing by at most one, larger first."""
    processes = min(processes, len(seeds))
    size, extra = divmod(len(seeds), processes)
    bounds = [0]
    for i in range(processes):
        bounds.append(bounds[-1] + size + (i < extra))
    return [seeds[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def warm_up_optimizers() -> None:
    """A process's first torch.optim step imports the graph compiler (about a second); taken
    once before forking, it spares every seed process that second."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0).step()


def fit(settings: Config, dataset: Dataset, device: torch.device, on_epoch: EpochCallback | None = None,
        processes: int = 1) -> list[SeedRun]:
    """Train every seed of `settings.trainer.seeds` on `dataset`, split over `processes`
    processes (see `seed_processes`); `on_epoch` hears from this process's seeds."""
    head = make_head(settings.head.name)
    stats = dataset.pixel_stats()
    data = TrainingData({name: DeviceData.of(split, device, stats) for name, split in dataset.splits().items()},
                        dataset.val_per_seed)
    n_train = data.for_seeds(settings.trainer.seeds[:1])["train"].n_rows  # as many for every seed
    check_model(settings.model, dataset.image_shape, head.n_outputs, settings.data.batch_size, n_train)
    groups = seed_groups(list(settings.trainer.seeds), processes)
    # The first group reports in this process; the others' reports reach it through `relay`.
    relay = getattr(on_epoch, "relay", None)
    callbacks = [on_epoch] + [relay() if relay else None for _ in groups[1:]]
    calls = [partial(fit_group, settings, head, data, group, callback) for group, callback in zip(groups, callbacks)]
    if len(calls) == 1:
        return calls[0]()
    # One thread in every process, the parent's too: forked children inherit the setting, and
    # they could not use an OpenMP pool of the parent's anyway (its threads are not copied).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    warm_up_optimizers()
    try:
        return [run for runs in call_side_by_side(calls) for run in runs]
    finally:
        torch.set_num_threads(threads)
