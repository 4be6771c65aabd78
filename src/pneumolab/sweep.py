"""Sweep summaries (work in progress: replaced by the full summary module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_failed_in_last_sweep = False


def failed_jobs_in_last_sweep() -> bool:
    return _failed_in_last_sweep


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _failed_in_last_sweep
        _failed_in_last_sweep = any(Path(config.hydra.sweep.dir).glob("*/error.json"))


def summarize_main() -> None:
    raise SystemExit("pneumolab-summarize: not available yet")
