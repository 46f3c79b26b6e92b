"""Each objective's weights against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rwft.objectives.weights import filtered_weights, refit_weights, reward_to_go, sft_weights, swift_weights


def test_sft_and_refit():
    assert sft_weights([0.2, 0.0, 3.0]).tolist() == [1.0, 1.0, 1.0]
    assert refit_weights([0.2, 0.0, 3.0]).tolist() == [0.2, 0.0, 3.0]


def test_refit_refuses_negative_rewards():
    with pytest.raises(ValueError, match="rewards >= 0"):
        refit_weights([0.5, -1.0])


def test_swift_by_hand():
    # context a: rewards 1, 2, 3 -> mean 2, population std sqrt(2/3)
    w = swift_weights([1.0, 2.0, 3.0, 0.0, 1.0], ["a", "a", "a", "b", "b"])
    s = math.sqrt(2 / 3)
    assert w[:3] == pytest.approx([-1 / s, 0.0, 1 / s])
    assert w[3:] == pytest.approx([-1.0, 1.0])  # mean 0.5, std 0.5


def test_swift_edge_cases_give_zero_weight():
    # single-sample context c, and context e whose rewards are all equal
    w = swift_weights([0.7, 0.4, 0.4, 0.4, 0.0, 1.0], ["c", "e", "e", "e", "f", "f"])
    assert w[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert w[4:] == pytest.approx([-1.0, 1.0])


def test_swift_groups_have_mean_zero_and_unit_mean_square():
    rewards = [0.1, 0.9, 0.3, 0.35, 0.8, 0.2, 0.25]
    groups = ["x", "x", "x", "y", "y", "y", "y"]
    w = swift_weights(rewards, groups)
    for g in "xy":
        ws = [wi for wi, gi in zip(w, groups, strict=True) if gi == g]
        assert sum(ws) == pytest.approx(0.0, abs=1e-12)
        assert sum(x * x for x in ws) / len(ws) == pytest.approx(1.0)


def test_filtered_top_k_per_context_and_threshold():
    rewards = [0.2, 0.9, 0.5, 0.4, 0.4, 0.1]
    groups = ["a", "a", "a", "b", "b", "b"]
    assert filtered_weights(rewards, groups, top_k=1).tolist() == [0, 1, 0, 1, 0, 0]  # tie in b: earlier wins
    assert filtered_weights(rewards, groups, top_k=2).tolist() == [0, 1, 1, 1, 1, 0]
    assert filtered_weights(rewards, groups, threshold=0.45).tolist() == [0, 1, 1, 0, 0, 0]


def test_reward_to_go_by_hand():
    # G_2 = 3; G_1 = 0 + 0.5 * 3 = 1.5; G_0 = 1 + 0.5 * 1.5 = 1.75
    assert reward_to_go([1.0, 0.0, 3.0], gamma=0.5) == pytest.approx([1.75, 1.5, 3.0])
    assert reward_to_go([1.0, 2.0], gamma=1.0) == pytest.approx([3.0, 2.0])
