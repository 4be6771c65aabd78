"""Loss heads: how logits become a loss, a gradient, a pneumonia score and a prediction.

All functions take logits of shape (..., B, K) and labels (..., B) and reduce over
the batch axis only, so one call serves a single model (B, K) and S stacked
seeds (S, B, K) alike. Both losses have the gradient (activation(z) - target) / B,
where the target is the label laid out like the logits (`targets`): the training
loop builds the targets once per epoch, so a step spends three operations on it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-z)), rounded the same wherever an element sits in the tensor.

    torch.sigmoid finishes a tensor's last few elements in a scalar loop that rounds
    differently from its vector loop, so a seed's numbers would depend on how many
    seeds share the tensor; exp and reciprocal treat every element alike.
    """
    return torch.neg(z).exp_().add_(1.0).reciprocal_()


class BCEHead:
    """One logit; BCE-with-logits loss; pneumonia when sigmoid(logit) > 0.5."""

    name = "bce"
    n_outputs = 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_item = F.binary_cross_entropy_with_logits(logits[..., 0], labels.to(logits.dtype), reduction="none")
        return per_item.mean(-1)

    def targets(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Labels as (..., B, 1) floats."""
        return labels.to(dtype).unsqueeze(-1)

    def loss_grad(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d mean-loss / d logits = (sigmoid(z) - y) / B."""
        return sigmoid(logits).sub_(targets).div_(logits.shape[-2])

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return sigmoid(logits[..., 0])

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

    def targets(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Labels one-hot, (..., B, 2)."""
        return F.one_hot(labels, self.n_outputs).to(dtype)

    def loss_grad(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """d mean-loss / d logits = (softmax(z) - onehot(y)) / B."""
        return torch.softmax(logits, dim=-1).sub_(targets).div_(logits.shape[-2])

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)[..., 1]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)


Head = BCEHead | CEHead


def make_head(name: str) -> Head:
    heads = {"bce": BCEHead, "ce": CEHead}
    return heads[name]()
