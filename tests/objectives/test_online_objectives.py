import math
import random

import pytest
import torch

from rwft.objectives.online import (
    dpo_loss,
    grpo_advantages,
    grpo_loss,
    masked_entropy,
    online_pairs,
    per_token_kl,
    span_advantages,
)


def test_grpo_advantages_by_hand():
    r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.9]
    g = ["a", "a", "a", "a", "b", "b", "c"]
    std_a = math.sqrt(4 * 0.25 / 3)  # the sample std of group a (n - 1 = 3)
    a = 0.5 / (std_a + 1e-4)
    assert grpo_advantages(r, g) == pytest.approx([a, -a, -a, a, 0.0, 0.0, 0.0])
    # without the std (Dr. GRPO): r - group mean; a group of one sample gets 0
    assert grpo_advantages(r, g, scale=False) == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0])
    r2 = [0.9, 0.0, 1.0]
    assert grpo_advantages(r2, ["x"] * 3, scale=False) == pytest.approx([0.9 - 19 / 30, -19 / 30, 1 - 19 / 30])


def test_grpo_advantages_are_trls():
    """TRL's GRPOTrainer (scale_rewards="group"): rewards viewed as [groups, G], A = (r - mean) / (std + 1e-4) with
    torch's std (n - 1)."""
    rng = random.Random(0)
    rewards = torch.tensor([rng.choice([0.0, 0.5, 0.9, 1.0]) for _ in range(60)], dtype=torch.float64)
    grouped = rewards.view(-1, 4)
    trl = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    groups = [f"g{i // 4}" for i in range(60)]
    assert grpo_advantages(rewards.tolist(), groups) == pytest.approx(trl.tolist(), abs=1e-9)


def test_verifiable_pairs_random_correct_vs_incorrect_and_skips():
    r = [1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0]
    g = ["a"] * 4 + ["b"] * 2 + ["c"] * 2 + ["d"] * 3
    pairs, skipped = online_pairs(r, g, True, random.Random(3))
    assert skipped == 2  # b all right, c all wrong
    rng = random.Random(3)  # the same draws by hand: group a then d, chosen before rejected
    expect = [(rng.choice([0, 2]), rng.choice([1, 3])), (rng.choice([8]), rng.choice([9, 10]))]
    assert pairs == expect
    for c, j in pairs:
        assert r[c] >= 0.5 > r[j] and g[c] == g[j]
    seen = {online_pairs(r, g, True, random.Random(s))[0][0] for s in range(40)}
    assert seen == {(0, 1), (0, 3), (2, 1), (2, 3)}  # every correct/incorrect combination is drawn


def test_best_worst_pairs():
    r = [0.2, 0.9, 0.9, 0.1, 0.4, 0.4]
    g = ["a"] * 4 + ["b"] * 2
    pairs, skipped = online_pairs(r, g, False, random.Random(0))
    assert pairs == [(1, 3)] and skipped == 1  # ties: the first best; group b has no gap


def test_dpo_loss_by_hand():
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.1)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))))


def test_grpo_loss_value_and_gradient_on_policy():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    loss = grpo_loss(logps, None, None, adv, mask, 0.0)
    assert float(loss.detach()) == pytest.approx((-2.0 + 1.0) / 2)  # the ratio is 1 on policy
    loss.backward()
    expect = torch.tensor([[-2 / 2 / 2, -2 / 2 / 2, 0.0], [1 / 3 / 2] * 3])  # -A_i / |y_i| / B
    assert torch.allclose(logps.grad, expect)
    ref = torch.tensor([[-1.5, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    with_kl = grpo_loss(logps.detach(), None, ref, adv, mask, 0.5)
    k3 = math.exp(-0.5) + 0.5 - 1
    assert float(with_kl) == pytest.approx((-2.0 + 0.5 * k3 / 2 + 1.0) / 2)


def test_grpo_loss_ratio_and_clipping_by_hand():
    """Old log-probs from the policy that sampled: rho = exp(logp - old); a token whose rho left [0.8, 1.2] in the
    direction of its advantage is clipped (its loss is constant, its gradient 0); otherwise d/dlogp = -rho A."""
    logps = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -0.5, 0.5]])  # rho = 1, e^0.5 (above 1.2), e^-0.5 (below 0.8)
    mask = torch.ones(1, 3)
    for a in (1.0, -1.0):
        logps.grad = None
        loss = grpo_loss(logps, old, None, torch.tensor([a]), mask, 0.0, epsilon=0.2)
        rho = [1.0, math.exp(0.5), math.exp(-0.5)]
        clipped = [1.0, 1.2, 0.8]
        expect = sum(-min(r * a, c * a) for r, c in zip(rho, clipped, strict=True)) / 3
        assert float(loss.detach()) == pytest.approx(expect)
        loss.backward()
        # A > 0: the token with rho > 1.2 is clipped; A < 0: the token with rho < 0.8 is
        grad = [-1.0 * a / 3, 0.0 if a > 0 else -rho[1] * a / 3, -rho[2] * a / 3 if a > 0 else 0.0]
        assert logps.grad[0].tolist() == pytest.approx(grad)


def test_kl_and_entropy():
    a = torch.tensor([-1.0, -2.0])
    assert torch.all(per_token_kl(a, a) == 0)
    assert torch.all(per_token_kl(a, a - 0.3) > 0) and torch.all(per_token_kl(a, a + 0.3) > 0)
    logits = torch.zeros(1, 2, 8)
    logits[0, 1, 0] = 100.0  # position 1 is certain
    assert float(masked_entropy(logits, torch.tensor([[1, 0]]))) == pytest.approx(math.log(8))
    assert float(masked_entropy(logits, torch.tensor([[0, 1]]))) == pytest.approx(0.0, abs=1e-6)


def test_scaled_grpo_advantages_are_swift_weights_times_the_bessel_factor():
    from rwft.objectives.weights import swift_weights

    rng = random.Random(0)
    rewards = [rng.choice([0.0, 0.5, 0.9, 1.0]) for _ in range(60)]
    groups = [f"g{i // 4}" for i in range(60)]
    swift = swift_weights(rewards, groups) * math.sqrt(3 / 4)
    assert grpo_advantages(rewards, groups) == pytest.approx(swift.tolist(), rel=5e-3)  # the 1e-4 in the std


def test_span_advantages_and_grpo_loss_by_hand_on_two_episodes():
    """A_it = A_i - 0.1 p_it: episode 0 (A = 1) has a major error on its second token, episode 1 (A = -1) a critical
    one on its first; episode 0 has 3 tokens, episode 1 two (the third is padding, with a penalty that must not
    count). On policy the loss is -mean_i sum_t A_it / |y_i| and d/dlogp_it = -A_it / |y_i| / B."""
    adv = torch.tensor([1.0, -1.0])
    penalty = torch.tensor([[0.0, 5.0, 0.0], [10.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    per_token = span_advantages(adv, penalty, 0.1)
    assert torch.allclose(per_token, torch.tensor([[1.0, 0.5, 1.0], [-2.0, -1.0, -1.1]]))
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.9]], requires_grad=True)
    loss = grpo_loss(logps, None, None, per_token, mask, 0.0)
    assert float(loss.detach()) == pytest.approx((-(1.0 + 0.5 + 1.0) / 3 + (2.0 + 1.0) / 2) / 2)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([[-1 / 6, -0.5 / 6, -1 / 6], [2 / 4, 1 / 4, 0.0]]))
    # lambda 0, or no spans: the sequence-level loss exactly
    for a in (span_advantages(adv, penalty, 0.0), span_advantages(adv, torch.zeros(2, 3), 0.1)):
        assert float(grpo_loss(logps.detach(), None, None, a, mask, 0.0)) == pytest.approx(
            float(grpo_loss(logps.detach(), None, None, adv, mask, 0.0)))
    # weights [B, T] (Swift / Refit) take the same subtraction token by token
    weights = span_advantages(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]]), 0.1)
    assert torch.allclose(weights, torch.tensor([[0.5, 0.4]]))


def test_grpo_loss_with_spans_is_invariant_to_how_the_batch_is_split():
    """The learner's split (train.online.Learner.loss): each part's loss times its share of the episodes, summed over
    the parts, is the whole batch's loss and gradient, with per-token advantages, old log-probs and KL."""
    g = torch.Generator().manual_seed(0)
    b, t = 6, 5
    logps = (-torch.rand(b, t, generator=g) * 3).requires_grad_()
    old = logps.detach() + 0.3 * (torch.rand(b, t, generator=g) - 0.5)
    ref = logps.detach() - 0.2 * torch.rand(b, t, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.2).long()
    mask[:, 0] = 1
    penalty = torch.tensor([0.0, 1.0, 5.0, 10.0])[torch.randint(0, 4, (b, t), generator=g)]
    adv = span_advantages(torch.tensor(grpo_advantages([1, 0, 0.5, 1, 1, 0], list("aaabbb"))), penalty, 0.1)
    whole = grpo_loss(logps, old, ref, adv, mask, 0.05)
    (whole_grad,) = torch.autograd.grad(whole, logps)
    for parts in ([[0, 1, 2], [3, 4, 5]], [[0], [1, 2, 3, 4], [5]]):
        total = sum(grpo_loss(logps[p], old[p], ref[p], adv[p], mask[p], 0.05) * len(p) / b for p in parts)
        (grad,) = torch.autograd.grad(total, logps)
        assert float(total.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
        assert torch.allclose(grad, whole_grad, atol=1e-7)
    # dapo: each part's token sum over the whole batch's token count, summed over the parts
    whole = grpo_loss(logps, old, ref, adv, mask, 0.05, loss_type="dapo")
    (whole_grad,) = torch.autograd.grad(whole, logps)
    n = float(mask.sum())
    for parts in ([[0, 1, 2], [3, 4, 5]], [[0], [1, 2, 3, 4], [5]]):
        total = sum(grpo_loss(logps[p], old[p], ref[p], adv[p], mask[p], 0.05, loss_type="dapo", tokens=n)
                    for p in parts)
        (grad,) = torch.autograd.grad(total, logps)
        assert float(total.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
        assert torch.allclose(grad, whole_grad, atol=1e-7)


def test_dapo_weighs_every_token_alike_and_grpo_each_episode():
    """A token both episodes share, A = +1 on the long one (4 tokens) and -1 on the short one (2): dapo's gradient
    on it sums to 0, grpo's is -(1/4 - 1/2) / 2 > 0, a push down (the length bias)."""
    logps = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    (g_dapo,) = torch.autograd.grad(grpo_loss(logps, None, None, adv, mask, 0.0, loss_type="dapo"), logps)
    assert g_dapo[0, 0] + g_dapo[1, 0] == pytest.approx(0.0)
    assert g_dapo[0].tolist() == pytest.approx([-1 / 6] * 4)
    (g_grpo,) = torch.autograd.grad(grpo_loss(logps, None, None, adv, mask, 0.0), logps)
    assert float(g_grpo[0, 0] + g_grpo[1, 0]) == pytest.approx(-(1 / 4 - 1 / 2) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, None, None, adv, mask, 0.0, loss_type="bnpo")
