"""The losses (weighted NLL, STaR-GATE-D's distillation) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rwft.objectives.losses import distill_nll, weighted_nll


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


def test_distill_nll_by_hand():
    # vocabulary of 2, T = 2, lam = 0.5; two trained positions (weights 1 and 0.5), one masked
    logits = torch.zeros(1, 4, 2)
    logits[0, 0] = torch.tensor([2 * math.log(3.0), 0.0])  # student p(0) = 9/10 at T=1, 3/4 at T=2
    teacher = torch.zeros(1, 4, 2)
    teacher[0, 1] = torch.tensor([0.0, 2 * math.log(2.0)])  # teacher at T=2: q(1) = 2/3
    labels = torch.tensor([[-100, 1, 0, -100]])  # targets: token 1 from pos 0, token 0 from pos 1
    weights = torch.tensor([[0.0, 1.0, 0.5, 3.0]])  # the last weight is on a masked token: ignored

    def kl(q0: float, p0: float) -> float:  # KL(q || p) for two-point distributions
        return q0 * math.log(q0 / p0) + (1 - q0) * math.log((1 - q0) / (1 - p0))

    # position 0: NLL of token 1 = log 10; at T=2 the student is (3/4, 1/4), the teacher uniform
    t0 = 0.5 * math.log(10.0) + 0.5 * 4 * kl(0.5, 0.75)
    # position 1: student uniform, NLL of token 0 = log 2; at T=2 teacher (1/3, 2/3), student uniform
    t1 = 0.5 * math.log(2.0) + 0.5 * 4 * kl(1 / 3, 0.5)
    expected = (1.0 * t0 + 0.5 * t1) / 2  # N = 2 agent tokens
    got = distill_nll(logits, teacher, labels, weights, distill_weight=0.5, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # lam = 0 is the weighted NLL; a teacher equal to the student adds nothing but scales the NLL by 1 - lam
    torch.testing.assert_close(distill_nll(logits, teacher, labels, weights, distill_weight=0.0),
                               weighted_nll(logits, labels, weights))
    torch.testing.assert_close(distill_nll(logits, logits, labels, weights, num_items=4, distill_weight=0.5),
                               0.5 * weighted_nll(logits, labels, weights, num_items=4))


def test_distill_gradient_pulls_toward_the_teacher():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    teacher = torch.randn(1, 3, 5)
    labels = torch.tensor([[-100, 2, 4]])
    loss = distill_nll(logits, teacher, labels, torch.ones(1, 3), distill_weight=1.0, temperature=2.0)
    loss.backward()
    # lam = 1: pure KL at T; its gradient wrt z is T * (softmax(z/T) - softmax(z0/T)) / N per position
    p = torch.softmax(logits.detach()[0, :2] / 2, -1)
    q = torch.softmax(teacher[0, :2] / 2, -1)
    torch.testing.assert_close(logits.grad[0, :2], 2 * (p - q) / 2)
    assert logits.grad[0, 2].abs().max() == 0  # the last position predicts nothing


def test_push_down_stops_at_the_limit_by_hand():
    # vocabulary of 2; three trained tokens: w = 2 (never clipped), w = -1 above its floor, w = -1 below it
    logits = torch.zeros(1, 4, 2)
    logits[0, 2] = torch.tensor([0.0, math.log(1 / 9)])  # p(token 1) = 1/10 at position 2
    logits.requires_grad_(True)
    labels = torch.tensor([[-100, 1, 0, 1]])
    weights = torch.tensor([[0.0, 2.0, -1.0, -1.0]])
    # pi_0's log-probs at the targets' positions: token 0 from pos 1 had 1/2 (policy 1/2: above log(1/2) - 1);
    # token 1 from pos 2 had 1/2 (policy 1/10 < e^-1 / 2: clipped at log(1/2) - 1)
    ref = torch.tensor([[0.0, math.log(0.9), math.log(0.5), math.log(0.5)]])
    loss = weighted_nll(logits, labels, weights, ref_logprobs=ref, push_down_limit=1.0)
    expected = (2 * math.log(2) - math.log(2) - (1.0 - math.log(0.5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 2].abs().max() == 0  # the clipped token pushes no more
    assert logits.grad[0, 1].abs().max() > 0 and logits.grad[0, 0].abs().max() > 0
    # no limit: the plain weighted NLL, which keeps pushing the third token down
    plain = weighted_nll(logits, labels, weights, ref_logprobs=ref, push_down_limit=None)
    assert plain.item() == pytest.approx((2 * math.log(2) - math.log(2) - math.log(10)) / 3, rel=1e-6)


def test_push_down_never_clips_a_positive_weight():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    labels = torch.randint(0, 5, (2, 6))
    weights = torch.rand(2, 6) + 0.1
    ref = torch.zeros(2, 6)  # pi_0 gave every token probability 1: every policy token is far below it
    torch.testing.assert_close(weighted_nll(logits, labels, weights, ref_logprobs=ref, push_down_limit=0.0),
                               weighted_nll(logits, labels, weights))
