import math

import pytest
import torch
from torch.nn import functional as F

from pneumolab.engine.heads import BCEHead, CEHead, make_head, predict


def test_bce_loss_log_odds_and_prediction_by_hand():
    head = BCEHead()
    logits = torch.tensor([[[2.0], [-1.0], [0.0]]])  # (S=1, B=3, K=1)
    labels = torch.tensor([[1, 1, 0]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0)) + math.log(2.0)) / 3
    assert head.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert head.log_odds(logits).tolist() == [[2.0, -1.0, 0.0]]
    # sigmoid(0) = 0.5 is not > 0.5, so a zero logit predicts normal.
    assert predict(head.log_odds(logits)).tolist() == [[1, 0, 0]]


def test_ce_loss_log_odds_and_prediction_by_hand():
    head = CEHead()
    logits = torch.tensor([[[1.0, 3.0], [2.0, 0.0], [0.5, 0.5]]])
    labels = torch.tensor([[1, 1, 0]])
    l0 = -math.log(math.exp(3) / (math.exp(1) + math.exp(3)))
    l1 = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))
    assert head.loss(logits, labels).item() == pytest.approx((l0 + l1 + math.log(2)) / 3, rel=1e-6)
    # log P(pneumonia) - log P(normal) = z1 - z0; a tie is argmax index 0, normal.
    assert head.log_odds(logits).tolist() == [[2.0, -2.0, 0.0]]
    assert predict(head.log_odds(logits)).tolist() == [[1, 0, 0]]
    assert predict(head.log_odds(logits)).tolist() == [logits[0].argmax(-1).tolist()]


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_stacked_losses_are_each_seeds_own_torch_loss(name):
    head = make_head(name)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, head.n_outputs, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 2, (3, 7), generator=gen)
    loss = head.loss(logits, labels)
    for s in range(3):
        if name == "bce":
            ref = F.binary_cross_entropy_with_logits(logits[s, :, 0], labels[s].double())
            prob = torch.sigmoid(logits[s, :, 0])
        else:
            ref = F.cross_entropy(logits[s], labels[s])
            prob = torch.softmax(logits[s], -1)[:, 1]
        assert loss[s].item() == pytest.approx(ref.item(), rel=1e-12)
        assert torch.allclose(torch.sigmoid(head.log_odds(logits[s])), prob, atol=1e-12)
