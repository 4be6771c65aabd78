"""What one seed's training produced: the record the engine returns and every writer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class SeedRun:
    """What one seed's training produced; test arrays and weights are None when the seed diverged."""

    seed: int
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    diverged: bool = False
    epochs_run: int = 0
    best_epoch: int = 0
    val_acc: float | None = None
    # Threshold-free and class-balanced validation measures, to choose recipes on (never on test).
    val_auc: float | None = None
    val_balanced_acc: float | None = None
    test_scores: np.ndarray | None = None  # float64 pneumonia log-odds per test image
    test_predictions: np.ndarray | None = None  # 0/1, pneumonia where the log-odds are positive
    weights: dict[str, np.ndarray] | None = None  # the evaluated checkpoint, as the one-seed module's state dict
