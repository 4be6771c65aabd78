import math

import numpy as np
import pytest
import torch

from pneumolab.config import (
    AdamConfig, Config, HeadConfig, ModelConfig, PhantomDataConfig, PlateauSchedulerConfig, SGDConfig, StepSchedulerConfig, TrainerConfig, built_in_model,
)
from pneumolab.data.dataset import Dataset, Split
from pneumolab.errors import PneumolabError
from pneumolab.engine.train import DeviceData, TrainingData, fit, seed_groups, seed_processes


# tests/models_for_tests.py holds a plain one-seed nn.Module, as a user would write one.
TINY_CUSTOM = ModelConfig(target="models_for_tests.TinyConvNet", options={"width": 4})


def toy_split(n: int, gen: torch.Generator) -> Split:
    """Class 1 is brighter on the left half, with noise so the task is learnable but not trivial."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.rand(n, 1, 8, 8, generator=gen) * 160
    images[:, :, :, :4] += labels[:, None, None, None] * 40
    return Split(images.to(torch.uint8), labels)


@pytest.fixture(scope="module")
def toy() -> Dataset:
    gen = torch.Generator().manual_seed(123)
    return Dataset(toy_split(150, gen), toy_split(40, gen), toy_split(60, gen), "toy")


def settings(**overrides) -> Config:
    parts = dict(
        model=built_in_model("mlp", hidden_sizes=[16, 16, 16]),
        head=HeadConfig("ce"),
        data=PhantomDataConfig(batch_size=16),
        optimizer=AdamConfig(lr=3e-3),
        scheduler=StepSchedulerConfig(step_size=2, gamma=0.5),
        trainer=TrainerConfig(epochs=4, seeds=[0, 1, 2]),
    )
    parts.update(overrides)
    return Config(**parts)


def run_numbers(runs):
    return [(r.seed, r.history["train_loss"], r.history["val_acc"], r.history["lr"], r.val_acc) for r in runs]


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"head": HeadConfig("bce")},
        {"model": built_in_model("mlp", hidden_sizes=[16, 8], dropout=0.3, negative_slope=0.1)},
        {"optimizer": SGDConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)},
        {"scheduler": PlateauSchedulerConfig(factor=0.5, patience=0)},
    ],
    ids=["ce", "bce", "dropout", "sgd", "plateau"],
)
def test_stacked_and_sequential_layouts_agree_per_seed(toy, variant):
    stacked = fit(settings(**variant), toy, torch.device("cpu"))
    sequential = fit(settings(**variant, trainer=TrainerConfig(epochs=4, seeds=[0, 1, 2], batched_seeds=False)),
                     toy, torch.device("cpu"))
    for a, b in zip(stacked, sequential):
        assert a.seed == b.seed
        np.testing.assert_allclose(a.history["train_loss"], b.history["train_loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.history["val_loss"], b.history["val_loss"], rtol=1e-4, atol=1e-5)
        assert a.history["lr"] == pytest.approx(b.history["lr"])
        np.testing.assert_allclose(a.test_scores, b.test_scores, atol=1e-4)
    # The task is learnable: training loss falls for every seed.
    assert all(r.history["train_loss"][-1] < r.history["train_loss"][0] for r in stacked)


def test_a_seed_does_not_depend_on_its_neighbours(toy):
    together = fit(settings(), toy, torch.device("cpu"))[2]
    (alone,) = fit(settings(trainer=TrainerConfig(epochs=4, seeds=[2])), toy, torch.device("cpu"))
    # Same draws, same arithmetic; only float rounding may differ, as BLAS kernels can
    # pick other code paths for other matrix addresses and batch counts.
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(together.history[key], alone.history[key], rtol=1e-5)
    assert together.history["lr"] == alone.history["lr"]
    np.testing.assert_allclose(together.test_scores, alone.test_scores, atol=1e-5)


def same_numbers(a, b) -> bool:
    return [(r.seed, r.history, r.val_acc) for r in a] == [(r.seed, r.history, r.val_acc) for r in b] and all(
        np.array_equal(x.test_scores, y.test_scores) for x, y in zip(a, b))


@pytest.mark.parametrize("head", ["bce", "ce"])
@pytest.mark.slow
def test_seeds_get_the_same_bits_in_any_grouping_and_process(toy, head):
    # 150 training images in batches of 16 end in a ragged batch of 6, where element-wise
    # kernels switch to scalar code; five seeds make every stacked tensor an odd size.
    def run(seeds, processes=1):
        config = settings(head=HeadConfig(head), trainer=TrainerConfig(epochs=3, seeds=seeds))
        return fit(config, toy, torch.device("cpu"), processes=processes)

    together = run([0, 1, 2, 3, 4])
    assert same_numbers(together, run([0, 1, 2]) + run([3, 4]))
    assert same_numbers(together, run([0, 1]) + run([2, 3, 4]))
    assert same_numbers(together, run([0, 1, 2, 3, 4], processes=2))
    # Ten or more seeds put a one-logit output layer's bmm on another BLAS path, unless padded.
    assert same_numbers(run(list(range(12)))[:2], run([0, 1]))


# The modern CNN and the ResNet have BatchNorm: per-seed statistics, which must keep seeds apart too.
MODERN_CNN = built_in_model("cnn", channels=[4, 8], convs_per_block=2, batch_norm=True, global_pool=True, dropout=0.2)


# ResNet-18 has 2000 times the small CNN's weights: two seeds.
@pytest.mark.parametrize("model, n_seeds", [(built_in_model("cnn", channels=[4, 8]), 3), (MODERN_CNN, 3), (built_in_model("resnet"), 2),
                                            (TINY_CUSTOM, 3)], ids=["cnn", "cnn-bn", "resnet", "custom"])
@pytest.mark.slow
def test_models_by_config_train_and_keep_seeds_apart(toy, model, n_seeds, restore_torch_state):
    torch.set_num_threads(1)  # as every job trains (cli.configure_torch); two threads crawl on a busy machine

    def run(seeds, **trainer):
        return fit(settings(model=model, trainer=TrainerConfig(epochs=3, seeds=seeds, **trainer)), toy,
                   torch.device("cpu"))

    seeds = list(range(n_seeds))
    together = run(seeds)
    assert same_numbers(together, run(seeds[:1]) + run(seeds[1:]))
    assert same_numbers(together, run(seeds, batched_seeds=False))
    assert all(r.history["train_loss"][-1] < r.history["train_loss"][0] for r in together)
    assert together[0].history["train_loss"] != together[1].history["train_loss"]
    weights = together[0].weights
    assert weights and all(isinstance(v, np.ndarray) for v in weights.values())


def test_seed_groups_are_consecutive_and_balanced():
    assert seed_groups([0, 1, 2, 3, 4], 1) == [[0, 1, 2, 3, 4]]
    assert seed_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert seed_groups([7, 3, 9, 1, 5, 2, 8], 3) == [[7, 3, 9], [1, 5], [2, 8]]
    assert seed_groups([4, 5], 3) == [[4], [5]]


@pytest.mark.parametrize(
    "seeds, trainer, device, cores, expected",
    [
        (5, {}, "cpu", 1, 1),
        (5, {}, "cpu", 2, 2),
        (5, {}, "cpu", 16, 2),  # every process keeps two seeds at least
        (10, {}, "cpu", 4, 4),
        (1, {}, "cpu", 8, 1),
        (5, {}, "cuda", 8, 1),  # a GPU trains all seeds as one batch
        (5, {"threads": 2}, "cpu", 8, 1),  # forking is for one-thread processes only
        (5, {"processes": 1}, "cpu", 8, 1),
        (6, {"processes": 3}, "cpu", 1, 3),  # asked for: taken as given
    ],
)
def test_seed_processes_default_to_the_cores_the_job_may_use(seeds, trainer, device, cores, expected):
    config = settings(trainer=TrainerConfig(seeds=list(range(seeds)), **trainer))
    assert seed_processes(config, torch.device(device), cores) == expected


def test_processes_on_a_gpu_are_refused_with_the_fix():
    config = settings(trainer=TrainerConfig(seeds=[0, 1, 2, 3], processes=2))
    with pytest.raises(PneumolabError, match=r"trainer\.processes=2 .* trainer\.processes=null"):
        seed_processes(config, torch.device("cuda"), 8)


def test_without_fork_a_job_keeps_one_process_and_refuses_more(monkeypatch):
    monkeypatch.setattr("pneumolab.engine.train.fork_available", lambda: False)  # as on macOS and Windows
    assert seed_processes(settings(trainer=TrainerConfig(seeds=[0, 1, 2, 3])), torch.device("cpu"), 8) == 1
    with pytest.raises(PneumolabError, match=r"needs Linux .* trainer\.processes=1"):
        seed_processes(settings(trainer=TrainerConfig(seeds=[0, 1, 2, 3], processes=2)), torch.device("cpu"), 8)


@pytest.mark.slow
def test_same_seed_is_bitwise_repeatable_and_seeds_differ(toy):
    first = fit(settings(), toy, torch.device("cpu"))
    second = fit(settings(), toy, torch.device("cpu"))
    assert run_numbers(first) == run_numbers(second)
    assert all(np.array_equal(a.test_scores, b.test_scores) for a, b in zip(first, second))
    assert first[0].history["train_loss"] != first[1].history["train_loss"]


def test_step_schedule_is_logged_per_epoch(toy):
    runs = fit(settings(), toy, torch.device("cpu"))
    assert runs[0].history["lr"] == pytest.approx([3e-3, 3e-3, 1.5e-3, 1.5e-3])
    assert runs[0].history["epoch"] == [1, 2, 3, 4]


@pytest.mark.slow
def test_best_val_checkpoint_reports_the_best_epoch(toy):
    runs = fit(settings(trainer=TrainerConfig(epochs=4, seeds=[0, 1], eval_checkpoint="best_val")), toy,
               torch.device("cpu"))
    for run in runs:
        best = max(run.history["val_acc"])
        assert run.val_acc == pytest.approx(best)
        assert run.history["val_acc"][run.best_epoch - 1] == best


def test_divergence_is_recorded_and_other_seeds_go_on(toy):
    # A huge SGD step blows up every seed but the loop must finish and say so.
    runs = fit(settings(optimizer=SGDConfig(lr=1e4, momentum=0.9)), toy, torch.device("cpu"))
    assert all(r.diverged for r in runs)
    for run in runs:
        assert run.test_scores is None and run.val_acc is None
        assert 1 <= run.epochs_run <= 4
        assert not math.isfinite(run.history["train_loss"][run.epochs_run - 1])
        assert all(math.isnan(v) for v in run.history["val_acc"][run.epochs_run :])


@pytest.mark.slow
def test_per_seed_holdouts_give_each_seed_its_own_validation_images(toy):
    from dataclasses import replace

    from pneumolab.data.dataset import stratified_holdout

    pool = Split(torch.cat([toy.train.images, toy.val.images]), torch.cat([toy.train.labels, toy.val.labels]))
    per_seed = replace(toy, train=pool, val=pool.take(np.zeros(0, dtype=np.int64)), val_per_seed=0.2)
    runs = fit(settings(trainer=TrainerConfig(epochs=3, seeds=[0, 1, 2])), per_seed, torch.device("cpu"))
    # A seed's numbers depend on its own holdout only, not on the seeds beside it.
    (alone,) = fit(settings(trainer=TrainerConfig(epochs=3, seeds=[2])), per_seed, torch.device("cpu"))
    np.testing.assert_allclose(runs[2].history["val_loss"], alone.history["val_loss"], rtol=1e-5)
    # Each seed trains on the pool minus the stratified holdout drawn with that seed, and validates on it.
    devices = {name: DeviceData.of(split, torch.device("cpu"), (0.5, 0.2)) for name, split in per_seed.splits().items()}
    splits = TrainingData(devices, 0.2).for_seeds([0, 1, 2])
    for row, seed in enumerate([0, 1, 2]):
        keep, held = stratified_holdout(pool.labels.numpy(), 0.2, seed)
        assert splits["train"].index[row].tolist() == keep.tolist()
        assert splits["val"].index[row].tolist() == held.tolist()
    assert len({tuple(row) for row in splits["val"].index.tolist()}) == 3
    assert len({tuple(r.history["val_acc"]) for r in runs}) == 3
