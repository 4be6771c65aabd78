import time

import pytest
import torch

from pneumolab.config import PhantomDataConfig
from pneumolab.data.load import load_data
from pneumolab.data.phantom import load_phantom


def small(**overrides) -> PhantomDataConfig:
    return PhantomDataConfig(**{"n_train": 120, "n_val": 40, "n_test": 50, **overrides})


def test_same_seed_gives_identical_images():
    a, b = load_phantom(small(seed=3)), load_phantom(small(seed=3))
    for name in ("train", "val", "test"):
        assert torch.equal(a.splits()[name].images, b.splits()[name].images)
        assert torch.equal(a.splits()[name].labels, b.splits()[name].labels)


def test_other_seed_gives_other_images():
    a, b = load_phantom(small(seed=0)), load_phantom(small(seed=1))
    assert not torch.equal(a.train.images, b.train.images)


def test_splits_are_drawn_independently():
    data = load_phantom(small(n_train=50, n_val=50, n_test=50))
    assert not torch.equal(data.train.images, data.val.images)
    assert not torch.equal(data.val.images, data.test.images)


def test_default_sizes_and_class_balance_match_pneumoniamnist():
    start = time.perf_counter()
    data = load_phantom(PhantomDataConfig())
    assert time.perf_counter() - start < 5  # about 0.3 s; generous for loaded CI machines
    assert [len(s) for s in data.splits().values()] == [4708, 524, 624]
    assert data.train.class_counts() == (1215, 3493)  # 74.2 % pneumonia
    assert data.val.class_counts() == (135, 389)
    assert data.test.class_counts() == (234, 390)  # 62.5 % pneumonia
    assert data.source == "phantom (seed 0, 28 px)"


def test_images_are_uint8_with_a_full_range_of_grays():
    data = load_phantom(small())
    images = data.train.images
    assert images.dtype == torch.uint8 and images.shape == (120, 1, 28, 28)
    assert images.min() < 30 and images.max() > 220
    assert 0.2 < data.pixel_stats()[0] < 0.6


@pytest.mark.parametrize("size", [16, 64])
def test_other_image_sizes(size):
    data = load_phantom(small(image_size=size))
    assert data.image_shape == (1, size, size)


def test_pneumonia_brightens_the_lungs():
    data = load_phantom(small(n_train=600))
    images, labels = data.train.images[:, 0].float(), data.train.labels
    # Upper-outer lung fields, on both sides: clear of the heart and the spine.
    lungs = torch.cat([images[:, 6:16, 4:9], images[:, 6:16, 19:24]], dim=2).mean(dim=(1, 2))
    assert lungs[labels == 1].mean() > lungs[labels == 0].mean() + 3


def test_load_data_caps_per_class():
    data = load_data(small(limit_per_class=7))
    assert all(split.class_counts() == (7, 7) for split in data.splits().values())
