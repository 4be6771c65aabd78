"""Training every seed of one configuration: stacked into one model, or one after another,
in one process or in groups spread over forked processes.

Each seed owns a `torch.Generator` that draws, in order, its initial weights, its
shuffling every epoch and its dropout masks, so a seed's draws never depend on which
other seeds ran beside it. Its arithmetic does not either, to the last bit, in any
stack of two or more seeds (see `StackedMLP` and `heads.sigmoid`); the layout that
trains seeds one by one agrees with the stacked one to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Protocol

import numpy as np
import torch

from pneumolab.config import Config, OptimizerConfig
from pneumolab.data import Dataset, Split, normalize
from pneumolab.errors import PneumolabError
from pneumolab.heads import Head, make_head
from pneumolab.model import MLP, StackedMLP
from pneumolab.optim import Optimizer, make_optimizer, make_schedule
from pneumolab.workers import call_side_by_side, fork_available

# Rows per evaluation chunk: bounds the float copy of 224 px images to ~100 MB.
EVAL_CHUNK = 512
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class SeedRun:
    """What one seed's training produced; test arrays are None when the seed diverged."""

    seed: int
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    diverged: bool = False
    epochs_run: int = 0
    best_epoch: int = 0
    val_acc: float | None = None
    test_scores: np.ndarray | None = None
    test_predictions: np.ndarray | None = None


# --- building blocks ---------------------------------------------------------


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


# --- learners: the two layouts behind one interface -------------------------


class Learner(Protocol):
    # Each optimizer with the indices of the seeds it updates (and whose lr it sets).
    optimizer_groups: list[tuple[Optimizer, list[int]]]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, active: list[bool]) -> torch.Tensor:
        """x (S, B, D), labels y (S, B) and `Head.targets` of them -> logits (S, B, K) before the step;
        steps the active seeds."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (S, N, K) in eval mode."""

    def set_training(self, training: bool) -> None: ...

    def state(self, s: int): ...

    def load_state(self, s: int, state) -> None: ...


class StackedLearner:
    """All seeds in one StackedMLP with a hand-written backward.

    One optimizer steps the stacked tensors of all seeds: Adam and SGD act on each
    element alone, so this equals one optimizer per seed, at a fifth of the
    per-step overhead. Only a schedule driven by each seed's own validation loss
    (plateau) needs per-seed learning rates, and then each seed gets an optimizer
    over views of its slice.
    """

    def __init__(self, model: StackedMLP, head: Head, optimizer: OptimizerConfig, per_seed_lr: bool,
                 generators: list[torch.Generator]):
        self.model, self.head, self.generators = model, head, generators
        seeds = list(range(model.n_seeds))
        if per_seed_lr:
            self.optimizer_groups = [(make_optimizer(model.seed_parameters(s), optimizer), [s]) for s in seeds]
        else:
            self.optimizer_groups = [(make_optimizer(model.parameters(), optimizer), seeds)]

    def train_step(self, x, y, targets, active):
        logits = self.model.forward(x, self.generators)
        self.model.backward(self.head.loss_grad(logits, targets))
        for opt, seeds in self.optimizer_groups:
            # A diverged seed sharing an optimizer keeps stepping: its NaNs stay in its own slice.
            if any(active[s] for s in seeds):
                opt.step()
        return logits

    def logits(self, x):
        return self.model.logits(x)

    def set_training(self, training):
        self.model.training = training

    def state(self, s):
        return self.model.state(s)

    def load_state(self, s, state):
        self.model.load_state(s, state)


class ModuleLearner:
    """One seed as a plain nn.Module trained with autograd: the reference layout."""

    def __init__(self, model: MLP, head: Head, optimizer: OptimizerConfig, generator: torch.Generator):
        self.model, self.head, self.generator = model, head, generator
        self.optimizer_groups = [(make_optimizer(list(model.parameters()), optimizer), [0])]

    def train_step(self, x, y, targets, active):
        logits = self.model(x[0], self.generator)[None]
        if active[0]:
            self.model.zero_grad(set_to_none=True)
            self.head.loss(logits, y).sum().backward()
            self.optimizer_groups[0][0].step()
        return logits.detach()

    @torch.no_grad()
    def logits(self, x):
        return self.model(x)[None]

    def set_training(self, training):
        self.model.train(training)

    def state(self, s):
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_state(self, s, state):
        self.model.load_state_dict(state)


# --- the loop ----------------------------------------------------------------


@dataclass
class DeviceData:
    """A split on the training device: (N, D) uint8 images and their labels."""

    images: torch.Tensor
    labels: torch.Tensor
    stats: tuple[float, float]  # the training pixels' mean and std

    @classmethod
    def of(cls, split: Split, device: torch.device, stats: tuple[float, float]) -> "DeviceData":
        return cls(split.images.flatten(1).to(device), split.labels.to(device), stats)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Rows gathered by an index tensor, or sliced, as normalised float32."""
        # index_select on a flat index is a faster gather than images[index].
        x = self.images[index] if isinstance(index, slice) else self.images.index_select(0, index)
        return normalize(x, *self.stats)


@torch.no_grad()
def evaluate(learner: Learner, head: Head, data: DeviceData):
    """Per-seed mean loss (S,), accuracy (S,), pneumonia scores (S, N) and predictions (S, N)."""
    learner.set_training(False)
    losses, scores, preds = [], [], []
    for start in range(0, len(data.labels), EVAL_CHUNK):
        x = data.rows(slice(start, start + EVAL_CHUNK))
        y = data.labels[start : start + EVAL_CHUNK]
        logits = learner.logits(x)
        labels = y.expand(logits.shape[0], -1)
        losses.append(head.loss(logits, labels) * len(y))
        scores.append(head.score(logits))
        preds.append(head.predict(logits))
    preds_all = torch.cat(preds, dim=1)
    loss = torch.stack(losses).sum(0) / len(data.labels)
    acc = (preds_all == data.labels).float().mean(1)
    return loss, acc, torch.cat(scores, dim=1), preds_all


EpochCallback = Callable[[int, int, list[int], list[float]], None]


def train_one_epoch(learner: Learner, head: Head, data: DeviceData, generators, batch_size, active):
    """One pass over the training split, each seed in its own order; returns loss and accuracy (S,)."""
    learner.set_training(True)
    n = len(data.labels)
    order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(data.images.device)
    labels = data.labels[order]
    targets = head.targets(labels, torch.float32)
    logits = []
    for start in range(0, n, batch_size):
        idx = order[:, start : start + batch_size]
        x = data.rows(idx.reshape(-1)).view(*idx.shape, -1)
        batch = slice(start, start + batch_size)
        logits.append(learner.train_step(x, labels[:, batch], targets[:, batch], active))
    # The epoch's loss and accuracy come from the logits each batch had before its step,
    # in one pass here rather than a dozen small operations in every step.
    logits = torch.cat(logits, dim=1)
    return head.loss(logits, labels), (head.predict(logits) == labels).float().mean(1)


def fit_seeds(
    learner: Learner,
    seeds: list[int],
    generators: list[torch.Generator],
    settings: Config,
    head: Head,
    splits: dict[str, DeviceData],
    on_epoch: EpochCallback | None = None,
) -> list[SeedRun]:
    """Train the seeds held by `learner` for trainer.epochs, then evaluate on the test split."""
    epochs = settings.trainer.epochs
    runs = [SeedRun(seed) for seed in seeds]
    # One schedule per optimizer: per seed only when the schedule follows each seed's own val loss.
    schedules = [(make_schedule(settings.scheduler, opt.lr, epochs), opt, idx) for opt, idx in learner.optimizer_groups]
    active = [True] * len(seeds)
    best_val = [-1.0] * len(seeds)
    best_state = [None] * len(seeds)

    for epoch in range(1, epochs + 1):
        for schedule, opt, _ in schedules:
            opt.lr = schedule.lr
        lrs = {s: schedule.lr for schedule, _, idx in schedules for s in idx}
        train_loss, train_acc = train_one_epoch(
            learner, head, splits["train"], generators, settings.data.batch_size, active
        )
        val_loss, val_acc, _, _ = evaluate(learner, head, splits["val"])
        # The one host sync of the epoch.
        rows = torch.stack([train_loss, train_acc, val_loss, val_acc]).cpu().tolist()
        for s, run in enumerate(runs):
            if not active[s]:
                for key in HISTORY_KEYS:
                    run.history[key].append(epoch if key == "epoch" else math.nan)
                continue
            values = dict(epoch=epoch, lr=lrs[s], train_loss=rows[0][s], train_acc=rows[1][s],
                          val_loss=rows[2][s], val_acc=rows[3][s])
            for key in HISTORY_KEYS:
                run.history[key].append(values[key])
            run.epochs_run = epoch
            if not (math.isfinite(values["train_loss"]) and math.isfinite(values["val_loss"])):
                run.diverged, active[s] = True, False
                continue
            if values["val_acc"] > best_val[s]:
                best_val[s], run.best_epoch = values["val_acc"], epoch
                if settings.trainer.eval_checkpoint == "best_val":
                    best_state[s] = learner.state(s)
        for schedule, _, idx in schedules:
            # A schedule shared by several seeds never reads the loss (plateau is per seed).
            if any(active[s] for s in idx):
                schedule.step(rows[2][idx[0]])
        if on_epoch:
            on_epoch(epoch, epochs, seeds, [r.history["val_acc"][-1] for r in runs])
        if not any(active):
            break

    for s, run in enumerate(runs):
        if best_state[s] is not None:
            learner.load_state(s, best_state[s])
    _, val_acc, _, _ = evaluate(learner, head, splits["val"])
    _, _, scores, preds = evaluate(learner, head, splits["test"])
    val_acc, scores, preds = val_acc.cpu().numpy(), scores.cpu().numpy(), preds.cpu().numpy()
    for s, run in enumerate(runs):
        if not run.diverged:
            run.val_acc = float(val_acc[s])
            run.test_scores, run.test_predictions = scores[s], preds[s]
    return runs


def fit_group(settings: Config, head: Head, splits: dict[str, DeviceData], in_features: int, device: torch.device,
              seeds: list[int], on_epoch: EpochCallback | None = None) -> list[SeedRun]:
    """Train `seeds` in this process: stacked into one model, or one after another."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def initial_mlp(generator: torch.Generator) -> MLP:
        return MLP(settings.model, in_features, head.n_outputs, generator)

    if settings.trainer.batched_seeds:
        per_seed_lr = settings.scheduler.name == "plateau"
        # The modules only carry each seed's initial weights into the stacked buffer; none outlives this line.
        model = StackedMLP([initial_mlp(g) for g in generators], device)
        learner = StackedLearner(model, head, settings.optimizer, per_seed_lr, generators)
        return fit_seeds(learner, seeds, generators, settings, head, splits, on_epoch)

    runs = []
    for seed, generator in zip(seeds, generators):
        learner = ModuleLearner(initial_mlp(generator).to(device), head, settings.optimizer, generator)
        runs += fit_seeds(learner, [seed], [generator], settings, head, splits, on_epoch)
    return runs


def seed_processes(settings: Config, device: torch.device, cores: int) -> int:
    """How many processes share the seeds: trainer.processes, or when that is null, one per
    core of `cores` with at least two seeds each (CPU training on Linux, one thread each).

    At least two seeds, because a lone seed's one-logit layer takes another BLAS path than
    a stack of seeds, which would change its numbers; this way every seed gets the same
    numbers however many processes there are.
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


def fit(settings: Config, dataset: Dataset, device: torch.device, on_epoch: EpochCallback | None = None,
        processes: int = 1) -> list[SeedRun]:
    """Train every seed of `settings.trainer.seeds` on `dataset`, split over `processes`
    processes (see `seed_processes`); `on_epoch` hears from this process's seeds."""
    head = make_head(settings.head.name)
    stats = dataset.pixel_stats()
    splits = {name: DeviceData.of(split, device, stats) for name, split in dataset.splits().items()}
    in_features = int(np.prod(dataset.image_shape))
    groups = seed_groups(list(settings.trainer.seeds), processes)
    calls = [
        partial(fit_group, settings, head, splits, in_features, device, group, on_epoch if i == 0 else None)
        for i, group in enumerate(groups)
    ]
    if len(calls) == 1:
        return calls[0]()
    # One thread in every process, the parent's too: forked children inherit the setting, and
    # they could not use an OpenMP pool of the parent's anyway (its threads are not copied).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [run for runs in call_side_by_side(calls) for run in runs]
    finally:
        torch.set_num_threads(threads)
