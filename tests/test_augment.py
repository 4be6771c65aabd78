"""augment=basic and head.class_weights=balanced: what they compute, and the guarantees every
training option keeps (same bits per seed in any stack, stacked and one-by-one agree)."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pneumolab.engine.augment import DRAWS, Augmenter, jitter_intensity, sampling_grid
from pneumolab.config import BasicAugmentConfig, HeadConfig, TrainerConfig, built_in_model
from pneumolab.engine.heads import balanced_class_weights, make_head
from pneumolab.engine.train import fit

from test_train import same_numbers, settings, toy  # noqa: F401 - toy is a fixture

CPU = torch.device("cpu")
NO_CHANGE = BasicAugmentConfig(rotation=0, translate=0, scale=0, brightness=0, contrast=0)


def images(n_seeds: int, batch: int, size: int = 12) -> torch.Tensor:
    return torch.rand(n_seeds, batch, 1, size, size, generator=torch.Generator().manual_seed(7))


def test_a_seeds_augmented_images_are_the_same_bits_in_any_stack():
    x = images(5, 9)
    together = Augmenter(BasicAugmentConfig(hflip=True), [0, 1, 2, 3, 4])(x)
    for s, seed in enumerate([0, 1, 2, 3, 4]):
        alone = Augmenter(BasicAugmentConfig(hflip=True), [seed])(x[s : s + 1])
        assert torch.equal(alone[0], together[s])
    pair = Augmenter(BasicAugmentConfig(hflip=True), [3, 4])(x[3:])
    assert torch.equal(pair, together[3:])
    # Seeds draw differently, and a second batch differs from the first.
    assert not torch.equal(together[0], Augmenter(BasicAugmentConfig(), [1])(x[:1])[0])


def test_the_grid_is_the_affine_grid_of_rotation_zoom_shift_and_flip():
    cfg = BasicAugmentConfig(rotation=30, translate=0.2, scale=0.3, hflip=True)
    draws = torch.rand(16, DRAWS, generator=torch.Generator().manual_seed(1)) * 2 - 1
    angle, zoom = draws[:, 0] * math.radians(30), 1 + draws[:, 1] * 0.3
    flip = torch.where(draws[:, 4] < 0, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, draws[:, 2] * 0.4], 1),
                         torch.stack([sin * flip, cos, draws[:, 3] * 0.4], 1)], 1)
    expected = F.affine_grid(theta, (16, 1, 10, 14), align_corners=False)
    torch.testing.assert_close(sampling_grid(draws, cfg, 10, 14), expected, atol=1e-6, rtol=0)


def test_all_keys_zero_leave_the_images_as_they_are():
    x = images(2, 4)
    torch.testing.assert_close(Augmenter(NO_CHANGE, [0, 1])(x), x, atol=1e-6, rtol=0)


def test_intensity_jitter_is_torchvisions_brightness_then_contrast():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    cfg = BasicAugmentConfig(brightness=0.5, contrast=0.5)
    x = images(1, 6)[0]
    draws = torch.rand(6, DRAWS, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = jitter_intensity(x, draws, cfg)
    for i in range(6):
        bright = tvf.adjust_brightness(x[i], 1 + float(draws[i, 5]) * 0.5)
        expected = tvf.adjust_contrast(bright, 1 + float(draws[i, 6]) * 0.5)
        torch.testing.assert_close(ours[i], expected, atol=1e-6, rtol=0)


def test_rotation_moves_a_bright_dot_by_the_drawn_angle():
    # A dot right of centre, turned by the largest angle of rotation=90, ends above or below centre.
    x = torch.zeros(1, 1, 21, 21)
    x[..., 10, 16] = 1.0
    draws = torch.zeros(1, DRAWS)
    draws[0, 0] = 1.0
    cfg = BasicAugmentConfig(rotation=90, translate=0, scale=0, brightness=0, contrast=0)
    out = F.grid_sample(x, sampling_grid(draws, cfg, 21, 21), align_corners=False)[0, 0]
    row, col = divmod(int(out.argmax()), 21)
    assert (row, col) in ((4, 10), (16, 10)) and out.max() > 0.99


@pytest.mark.parametrize("head", ["bce", "ce"])
@pytest.mark.slow
def test_augmented_seeds_keep_their_bits_in_any_grouping_and_process(toy, head):  # noqa: F811
    def run(seeds, processes=1):
        config = settings(head=HeadConfig(head, "balanced"), augment=BasicAugmentConfig(),
                          trainer=TrainerConfig(epochs=3, seeds=seeds))
        return fit(config, toy, CPU, processes=processes)

    together = run([0, 1, 2, 3, 4])
    assert same_numbers(together, run([0, 1, 2]) + run([3, 4]))
    assert same_numbers(together, run([0, 1, 2, 3, 4], processes=2))
    assert same_numbers(together, run([0, 1, 2, 3, 4]))  # the same command, the same bits


@pytest.mark.parametrize("model", [None, built_in_model("cnn", channels=[4, 8])], ids=["mlp", "cnn"])
@pytest.mark.slow
def test_augmented_stacked_and_one_by_one_training_agree(toy, model):  # noqa: F811
    extra = {"model": model} if model else {}
    stacked = fit(settings(augment=BasicAugmentConfig(), **extra), toy, CPU)
    sequential = fit(settings(augment=BasicAugmentConfig(), trainer=TrainerConfig(epochs=4, seeds=[0, 1, 2],
                                                                                  batched_seeds=False), **extra), toy, CPU)
    for a, b in zip(stacked, sequential):
        np.testing.assert_allclose(a.history["train_loss"], b.history["train_loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.test_scores, b.test_scores, atol=1e-4)


@pytest.mark.slow
def test_augmentation_changes_training_only(toy):  # noqa: F811
    plain = fit(settings(), toy, CPU)
    unchanged = fit(settings(augment=NO_CHANGE), toy, CPU)
    jittered = fit(settings(augment=BasicAugmentConfig(rotation=20)), toy, CPU)
    for a, b in zip(plain, unchanged):  # all keys 0: the same training, up to float rounding
        np.testing.assert_allclose(a.test_scores, b.test_scores, atol=1e-4)
    assert all(not np.allclose(a.history["train_loss"], c.history["train_loss"]) for a, c in zip(plain, jittered))


def test_balanced_weights_are_scikit_learns():
    utils = pytest.importorskip("sklearn.utils")
    labels = np.array([0] * 1341 + [1] * 3875)
    expected = utils.class_weight.compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    np.testing.assert_allclose(balanced_class_weights((1341, 3875), CPU).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_weighted_losses_match_torchs_weighted_losses(name):
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (2, 20), generator=gen)
    weights = torch.tensor([2.5, 0.6])
    logits = torch.randn(2, 20, make_head(name).n_outputs, generator=gen)
    ours = make_head(name, weights).loss(logits, labels)
    if name == "bce":
        expected = torch.stack([F.binary_cross_entropy_with_logits(logits[s, :, 0], labels[s].float(),
                                                                   weight=weights[labels[s]]) for s in range(2)])
    else:  # torch's weighted mean divides by the weights' sum; ours by the count (weights average 1)
        expected = torch.stack([F.cross_entropy(logits[s], labels[s], weight=weights, reduction="sum") / 20
                                for s in range(2)])
    torch.testing.assert_close(ours, expected)


@pytest.mark.slow
def test_balanced_weights_raise_the_rarer_class_recall(toy):  # noqa: F811
    # Make normal images rare in training: a quarter of them kept.
    labels = toy.train.labels.numpy()
    keep = np.flatnonzero((labels == 1) | (np.arange(len(labels)) % 4 == 0))
    skewed = type(toy)(toy.train.take(keep), toy.val, toy.test, "skewed toy")
    plain = fit(settings(), skewed, CPU)
    balanced = fit(settings(head=HeadConfig("ce", "balanced")), skewed, CPU)
    normal = toy.test.labels.numpy() == 0

    def specificity(runs):
        return np.mean([np.mean(r.test_predictions[normal] == 0) for r in runs])

    assert specificity(balanced) > specificity(plain)
