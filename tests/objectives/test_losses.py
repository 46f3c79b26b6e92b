"""The weighted NLL against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from rwft.objectives.losses import weighted_nll


def test_weighted_nll_by_hand():
    # vocabulary of 2; uniform logits everywhere except one position
    logits = torch.zeros(1, 4, 2)
    logits[0, 1] = torch.tensor([math.log(3.0), 0.0])  # p(token 0) = 3/4 at position 1
    labels = torch.tensor([[-100, 1, 0, 1]])  # targets at positions 1..3 predicted from 0..2
    weights = torch.tensor([[0.0, 2.0, 0.5, -1.0]])
    # token 1 from pos 0: -log(1/2) * 2; token 0 from pos 1: -log(3/4) * 0.5; token 1 from pos 2: -log(1/2) * -1
    expected = (2 * math.log(2) + 0.5 * -math.log(0.75) - math.log(2)) / 3
    assert weighted_nll(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)
    # a given normalizer replaces the local token count
    assert weighted_nll(logits, labels, weights, num_items=6).item() == pytest.approx(expected / 2, rel=1e-6)


def test_unit_weights_give_the_usual_causal_lm_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    ours = weighted_nll(logits, labels, torch.ones(2, 5))
    torch.testing.assert_close(ours, ref)
