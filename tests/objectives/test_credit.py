"""Reward redistribution over agent turns against hand-computed credits."""

from __future__ import annotations

import math

import pytest

from rwft.objectives.credit import redistribute
from rwft.objectives.weights import reward_to_go


def test_credits_by_hand_including_negative():
    # R(<=1) = 0.2, R(<=2) = 0.7, R(<=3) = 0.4, R = 0.9
    assert redistribute([0.2, 0.7, 0.4], 0.9) == pytest.approx([0.2, 0.5, -0.3, 0.5])
    assert redistribute([], 0.6) == [0.6]  # one agent turn: all its own
    assert redistribute([1.0], 0.0) == pytest.approx([1.0, -1.0])  # a right answer retracted


@pytest.mark.parametrize("scores,final", [([0.1, 0.35, 0.9, 0.2, 0.6], 0.55), ([-3.0, -7.5, -9.25], -12.0),
                                          ([20.0, -0.125, 3.3], 1e-3), ([0.0] * 7, 0.0)])
def test_credits_sum_exactly_to_the_final_reward(scores, final):
    credit = redistribute(scores, final)
    assert len(credit) == len(scores) + 1
    assert math.fsum(credit) == pytest.approx(final, abs=1e-12)
    # the running sums give back the prefix scores
    assert [math.fsum(credit[: t + 1]) for t in range(len(scores))] == pytest.approx(scores)


def test_reward_to_go_of_the_credits_is_reward_minus_previous_prefix():
    scores, final = [0.3, 0.1, 0.8], 0.5
    g = reward_to_go(redistribute(scores, final), 1.0)
    assert g == pytest.approx([final - 0.0, final - 0.3, final - 0.1, final - 0.8])


def test_non_finite_scores_are_refused():
    with pytest.raises(ValueError, match="finite"):
        redistribute([0.1, math.nan], 1.0)
    with pytest.raises(ValueError, match="finite"):
        redistribute([0.1], math.inf)
