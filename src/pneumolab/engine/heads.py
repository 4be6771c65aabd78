"""Loss heads: how logits become a loss, a pneumonia log-odds and a prediction.

Every function takes logits (..., B, K) and labels (..., B) and reduces over the
batch axis only, so one call serves one seed (B, K) and S stacked seeds (S, B, K).
Both heads predict pneumonia exactly when its log-odds are positive: for BCE the
log-odds are the logit itself (sigmoid > 0.5), for CE the difference of the two
logits (argmax picks index 1).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class BCEHead:
    """One logit; binary cross-entropy with logits."""

    name = "bce"
    n_outputs = 1
    loss_name = "BCE loss"

    def __init__(self, class_weights: torch.Tensor | None = None):
        self.class_weights = class_weights

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_item = F.binary_cross_entropy_with_logits(logits[..., 0], labels.to(logits.dtype), reduction="none")
        return weighted_mean(per_item, labels, self.class_weights)

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., 0]


class CEHead:
    """Two logits; cross-entropy."""

    name = "ce"
    n_outputs = 2
    loss_name = "CE loss"

    def __init__(self, class_weights: torch.Tensor | None = None):
        self.class_weights = class_weights

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_item = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), reduction="none")
        return weighted_mean(per_item.view(labels.shape), labels, self.class_weights)

    def log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., 1] - logits[..., 0]


Head = BCEHead | CEHead


def make_head(name: str, class_weights: torch.Tensor | None = None) -> Head:
    return {"bce": BCEHead, "ce": CEHead}[name](class_weights)


def weighted_mean(per_item: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """The batch mean of the per-item losses, each weighted by its class's weight when there are weights.

    A plain mean, not divided by the weights' sum: balanced weights average 1 over the
    training split, so the loss keeps its scale and the learning rate its meaning.
    """
    if class_weights is None:
        return per_item.mean(-1)
    return (per_item * class_weights[labels]).mean(-1)


def balanced_class_weights(class_counts: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Weights (normal, pneumonia) inverse to the class counts: n / (2 n_c), as scikit-learn's
    compute_class_weight("balanced") gives them."""
    total = sum(class_counts)
    return torch.tensor([total / (2 * count) for count in class_counts], dtype=torch.float32, device=device)


def predict(log_odds: torch.Tensor) -> torch.Tensor:
    """1 (pneumonia) where the log-odds are positive, else 0 (normal)."""
    return (log_odds > 0).long()
