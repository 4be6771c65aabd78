"""Loss heads: how logits become a loss, a gradient, a pneumonia score and a prediction.

All functions take logits of shape (..., B, K) and labels (..., B) and reduce over
the batch axis only, so one call serves a single model (B, K) and S stacked
seeds (S, B, K) alike.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class BCEHead:
    """One logit; BCE-with-logits loss; pneumonia when sigmoid(logit) > 0.5."""

    name = "bce"
    n_outputs = 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_item = F.binary_cross_entropy_with_logits(logits[..., 0], labels.to(logits.dtype), reduction="none")
        return per_item.mean(-1)

    def loss_grad(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d mean-loss / d logits = (sigmoid(z) - y) / B."""
        batch = logits.shape[-2]
        return (torch.sigmoid(logits[..., 0]) - labels.to(logits.dtype)).div_(batch).unsqueeze(-1)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[..., 0])

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        # sigmoid(z) > 0.5 exactly when z > 0; comparing logits avoids rounding at the threshold.
        return (logits[..., 0] > 0).long()


class CEHead:
    """Two logits; cross-entropy loss; the prediction is the argmax."""

    name = "ce"
    n_outputs = 2

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=-1)
        return -log_probs.gather(-1, labels.unsqueeze(-1))[..., 0].mean(-1)

    def loss_grad(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d mean-loss / d logits = (softmax(z) - onehot(y)) / B."""
        batch = logits.shape[-2]
        grad = torch.softmax(logits, dim=-1)
        grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
        return grad.div_(batch)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)[..., 1]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)


Head = BCEHead | CEHead


def make_head(name: str) -> Head:
    heads = {"bce": BCEHead, "ce": CEHead}
    return heads[name]()
