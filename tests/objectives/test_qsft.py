"""Q-SFT's math: the loss's fixed point, the loss against its dense form, Bellman targets by hand, Polyak."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwft.objectives.qsft import bellman_targets, next_state_values, polyak_, qsft_loss, transitions


def _fit(vocab: int, actions: list[int], targets: list[float], steps: int = 200) -> torch.Tensor:
    """Minimize the loss over a one-state data set (convex in the logits; L-BFGS, a quasi-Newton descent);
    returns the learned distribution."""
    logits = torch.zeros(vocab, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    a, b = torch.tensor(actions), torch.tensor(targets, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss, _ = qsft_loss(logits.expand(len(actions), vocab), a, b)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(logits.detach(), -1)


def test_gradient_descent_reaches_the_fixed_point_b_times_pi_beta():
    """Behaviour 0.5 / 0.3 / 0.2 on tokens 0 / 1 / 2 of 6, targets 0.9 / 0.4 / 0.1. The minimizer is
    p_v = pi_beta(v) B_v + sum_{a != v} pi_beta(a) (1 - B_a) / (V - 1) (module docstring)."""
    vocab, pi, b = 6, np.array([0.5, 0.3, 0.2, 0, 0, 0]), np.array([0.9, 0.4, 0.1, 0, 0, 0])
    actions = [0] * 5 + [1] * 3 + [2] * 2
    p = _fit(vocab, actions, [b[a] for a in actions]).numpy()
    spill = pi * (1 - b)
    expected = pi * b + (spill.sum() - spill) / (vocab - 1)
    np.testing.assert_allclose(p, expected, atol=2e-4)
    # on the support p / pi_beta = B up to at most 1 / (V - 1); off it p is the spread alone
    assert np.all(np.abs(p[:3] / pi[:3] - b[:3]) <= 1 / (vocab - 1) / pi[:3] + 1e-3)
    np.testing.assert_allclose(p[3:], spill.sum() / (vocab - 1), atol=2e-4)


def test_with_a_large_vocabulary_the_ratio_is_the_target():
    vocab, pi, b = 2000, [0.6, 0.4], [0.7, 0.2]
    actions = [0] * 3 + [1] * 2
    p = _fit(vocab, actions, [b[a] for a in actions])
    for a in (0, 1):
        assert float(p[a]) / pi[a] == pytest.approx(b[a], abs=2e-3)


def test_loss_equals_the_dense_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, actions, targets = torch.randn(7, 11), torch.randint(0, 11, (7,)), torch.rand(7)
    dense = ((1 - targets) / 10)[:, None].expand(7, 11).clone()
    dense[torch.arange(7), actions] = targets
    want = -(dense * torch.log_softmax(logits, -1)).sum() / 7
    got, logp = qsft_loss(logits, actions, targets)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[torch.arange(7), actions])
    assert float(qsft_loss(logits, actions, targets, num_items=14)[0]) == pytest.approx(float(want) / 2)


def test_bellman_targets_of_a_two_turn_conversation_by_hand():
    """[task task task a0 a0 a0 | reply reply | a1 a1], turn rewards 0.2 and 0.5, gamma 0.9."""
    ti = np.array([-1, -1, -1, 0, 0, 0, -1, -1, 1, 1])
    nxt, r, d = transitions(ti, [0.2, 0.5], 0.9)
    assert nxt.tolist() == [-1, -1, -1, 4, 5, 8, -1, -1, 9, -1]
    np.testing.assert_allclose(r, [0, 0, 0, 0, 0, 0.2, 0, 0, 0, 0.5])
    np.testing.assert_allclose(d, [0, 0, 0, 1, 1, 0.9, 0, 0, 1, 0])
    # support at each next state: (p_bar, pi_phi) of the logged token and two behaviour top tokens
    inf = -math.inf
    p_bar = {4: [0.9, 0.05, 0.01], 5: [0.2, 0.4, 0.3], 8: [0.3, 0.1, 0.05], 9: [0.1, 0.1, 0.1]}
    p_phi = {4: [0.6, 0.3, 0.05], 5: [0.5, 0.5, 0.0], 8: [0.6, 0.2, 0.0], 9: [0.5, 0.25, 0.2]}
    lbar = torch.full((10, 3), -30.0)
    lphi = torch.full((10, 3), inf)
    for u in p_bar:
        lbar[u] = torch.tensor(p_bar[u]).log()
        lphi[u] = torch.tensor([math.log(x) if x > 0 else inf for x in p_phi[u]])
    values = next_state_values(lbar, lphi)
    # by hand: V(4) = min(1, 0.9/0.6) = 1; V(5) = max(0.4, 0.8) = 0.8 (0.3 is outside the support);
    # V(8) = max(0.5, 0.5) = 0.5; V(9) = max(0.2, 0.4, 0.5) = 0.5
    torch.testing.assert_close(values[[4, 5, 8, 9]], torch.tensor([1.0, 0.8, 0.5, 0.5]))
    b = bellman_targets(torch.tensor(r, dtype=torch.float32), torch.tensor(d, dtype=torch.float32),
                        torch.tensor(nxt), values, torch.zeros(10))
    # lambda 0, the one-step targets: B(3) = V(4) = 1; B(4) = V(5) = 0.8; B(5) = 0.2 + 0.9 V(8) = 0.65;
    # B(8) = V(9) = 0.5; B(9) = r = 0.5 (each at least the logged return, 0.65 in turn 0 and 0.5 in turn 1)
    torch.testing.assert_close(b[[3, 4, 5, 8, 9]], torch.tensor([1.0, 0.8, 0.65, 0.5, 0.5]))


def test_a_turn_left_out_is_stepped_over_with_its_reward():
    ti = np.array([-1, 0, 0, -1, -1, -1, 2, -1])  # turn 1 has weight 0: its tokens carry -1
    nxt, r, d = transitions(ti, [0.1, 0.2, 0.3], 0.5)
    assert nxt[2] == 6 and r[2] == pytest.approx(0.1 + 0.5 * 0.2) and d[2] == pytest.approx(0.25)
    assert nxt[6] == -1 and r[6] == pytest.approx(0.3) and d[6] == 0


def test_targets_are_clamped_to_the_unit_interval():
    values = torch.tensor([[0.0, 0.9, 0.0]])
    b = bellman_targets(torch.tensor([[-0.5, 0.6, 1.4]]), torch.tensor([[1.0, 0.0, 0.0]]),
                        torch.tensor([[1, -1, -1]]), values, torch.zeros(1, 3))
    torch.testing.assert_close(b, torch.tensor([[0.4, 0.6, 1.0]]))
    neg = bellman_targets(torch.tensor([[-0.5]]), torch.tensor([[0.0]]), torch.tensor([[-1]]), torch.zeros(1, 1),
                          torch.zeros(1, 1))
    assert float(neg) == 0.0


def test_polyak_moves_the_target_a_fraction_alpha_toward_the_weights():
    target, params = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0], requires_grad=True)]
    polyak_(target, params, 0.25)
    torch.testing.assert_close(target[0], torch.tensor([1.5, 3.0]))
    polyak_(target, params, 0.25)  # twice: (1 - a)^2 theta_bar + (1 - (1 - a)^2) theta
    torch.testing.assert_close(target[0], 0.5625 * torch.tensor([1.0, 2.0]) + 0.4375 * torch.tensor([3.0, 6.0]))


def test_a_logged_token_below_the_support_floor_stays_out_of_the_max():
    """The logged token at s' has pi_phi = 1e-6 and p_bar = 5e-4 (the loss's uniform spread): its ratio 500
    would make V = 1. Below the floor it is left out like any top-k token: V is the in-support max."""
    lbar = torch.tensor([[math.log(5e-4), math.log(0.3), math.log(0.1)]])
    lphi = torch.tensor([[math.log(1e-6), math.log(0.6), math.log(0.2)]])
    torch.testing.assert_close(next_state_values(lbar, lphi), torch.tensor([0.5]))
    at_floor = torch.tensor([[math.log(2e-3), math.log(0.3)]]), torch.tensor([[math.log(1e-3), math.log(0.6)]])
    torch.testing.assert_close(next_state_values(*at_floor), torch.tensor([1.0]))  # in the support: counted
    nothing = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(1e-4)]])
    torch.testing.assert_close(next_state_values(*nothing), torch.tensor([0.0]))


def test_lambda_returns_and_the_logged_return_as_a_lower_bound_by_hand():
    """Three agent turns of two tokens, [a0 a0 | a1 a1 | a2 a2] with replies between, turn rewards 0, 0.1, 0.6,
    gamma 0.9; lambda 1 inside a turn and 0.5 into the next one (as QCollator sets it). V(first token of
    turn 1) = 0.2 and V(first token of turn 2) = 0.9; V inside a turn is never used at lambda 1."""
    ti = np.array([-1, 0, 0, -1, 1, 1, -1, 2, 2])
    nxt, r, d = transitions(ti, [0.0, 0.1, 0.6], 0.9)
    same = (nxt >= 0) & (ti[np.maximum(nxt, 0)] == ti)
    lam = torch.tensor(np.where(same, 1.0, 0.5), dtype=torch.float64)
    values = torch.zeros(9, dtype=torch.float64)
    values[4], values[7] = 0.2, 0.9
    values[[2, 5, 8]] = 0.99  # inside a turn: ignored at lambda 1
    args = (torch.tensor(r), torch.tensor(d), torch.tensor(nxt), values)
    b = bellman_targets(*args, lam)
    # turn 2: Y = G = 0.6. turn 1: Y = 0.1 + 0.9 (0.5 * 0.9 + 0.5 * 0.6) = 0.775, G = 0.1 + 0.9 * 0.6 = 0.64.
    # turn 0: Y = 0 + 0.9 (0.5 * 0.2 + 0.5 * 0.775) = 0.43875, G = 0.9 * 0.64 = 0.576 > Y: the lower bound holds
    want = torch.tensor([0, 0.576, 0.576, 0, 0.775, 0.775, 0, 0.6, 0.6], dtype=torch.float64)
    torch.testing.assert_close(b * torch.tensor(ti >= 0), want)
    mc = bellman_targets(*args, torch.ones(9, dtype=torch.float64))  # lambda 1: the logged return
    torch.testing.assert_close(mc[[1, 4, 7]], torch.tensor([0.576, 0.64, 0.6], dtype=torch.float64))
    # lambda 0: V of the next token inside a turn; at turn 0's end 0.9 V(4) = 0.18 < G = 0.576
    one_step = bellman_targets(*args, torch.zeros(9, dtype=torch.float64))
    torch.testing.assert_close(one_step[[1, 2, 4]], torch.tensor([0.99, 0.576, 0.99], dtype=torch.float64))
