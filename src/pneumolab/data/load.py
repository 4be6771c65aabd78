"""Loading a dataset: the source its schema names (config.DataConfig.loader), capped and checked."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any, Callable

from pneumolab.config import DataConfig
from pneumolab.data.dataset import DataPlan, Dataset, check_dataset, limit_per_class


def source_function(cfg: DataConfig, role: str) -> Callable[[DataConfig], Any]:
    """The source's `planner` or `loader`, as its schema names it (`module:function`)."""
    module, _, function = getattr(cfg, role).partition(":")
    return getattr(importlib.import_module(module), function)


def plan_data(cfg: DataConfig) -> DataPlan:
    """What `load_data(cfg)` will allocate and write, from the config and file listings alone."""
    return source_function(cfg, "planner")(cfg)


def load_data(cfg: DataConfig) -> Dataset:
    """Build the dataset its source reads, cap it per class if asked, and check it."""
    dataset = source_function(cfg, "loader")(cfg)
    if cfg.limit_per_class is not None:
        dataset = replace(
            dataset, **{name: limit_per_class(split, cfg.limit_per_class) for name, split in dataset.splits().items()},
            source=f"{dataset.source}, at most {cfg.limit_per_class} per class",
        )
    check_dataset(dataset)
    return dataset
