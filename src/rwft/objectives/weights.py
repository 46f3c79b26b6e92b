"""Per-trajectory (or per-turn) weights of each objective: pure functions over rewards and groups.

Every offline objective in rwft is one weighted negative log-likelihood over the agent's tokens
(see ``loss.weighted_nll``); they differ only in the weight each agent token carries:

=========  ==========================================================================
sft        1
filtered   1 for the top-k of each context (or r >= threshold), else 0  (STaR-GATE)
refit      r
swift      (r - mean of the context) / std of the context
per-turn   the agent turn's discounted reward-to-go
=========  ==========================================================================
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

SIGMA_EPS = 1e-6


def sft_weights(rewards: Sequence[float]) -> list[float]:
    """Behaviour cloning: w_i = 1."""
    return [1.0] * len(rewards)


def refit_weights(rewards: Sequence[float]) -> list[float]:
    """Refit: w_i = r_i, so the loss is -E[r * log pi(tau)], a lower bound on the value (BRIEF, paper 1).

    The bound needs r >= 0: a negative reward would push a trajectory's likelihood down without limit.
    """
    bad = [r for r in rewards if r < 0]
    if bad:
        raise ValueError(
            f"refit needs rewards >= 0 (found {len(bad)} negative, e.g. {bad[0]}); "
            "rescale the rewards or use --objective swift"
        )
    return [float(r) for r in rewards]


def group_indices(groups: Sequence[str]) -> dict[str, list[int]]:
    """Indices of the samples of each context, in order of first appearance."""
    out: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        out[g].append(i)
    return dict(out)


def swift_weights(rewards: Sequence[float], groups: Sequence[str]) -> list[float]:
    """Swift: w_i = (r_i - mu(x_i)) / sigma(x_i), mean and population std over the samples of context x_i.

    Edge cases (documented rule): a context with a single sample, or whose rewards are all equal
    (sigma < 1e-6), gets weight 0 for every sample: there is no contrast to learn from, and any other
    choice would invent one. Within any other context the weights have mean 0 and mean square 1.
    """
    w = [0.0] * len(rewards)
    for idx in group_indices(groups).values():
        if len(idx) < 2:
            continue
        rs = [rewards[i] for i in idx]
        mu = sum(rs) / len(rs)
        sigma = math.sqrt(sum((r - mu) ** 2 for r in rs) / len(rs))
        if sigma < SIGMA_EPS:
            continue
        for i in idx:
            w[i] = (rewards[i] - mu) / sigma
    return w


def filtered_weights(
    rewards: Sequence[float], groups: Sequence[str], top_k: int = 1, threshold: float | None = None
) -> list[float]:
    """STaR-GATE / filtered SFT: w_i = 1 if r_i >= threshold (when given), else 1 if i is among the top_k
    rewards of its context, else 0. Ties are broken by order in the data (the earlier sample wins)."""
    if threshold is not None:
        return [1.0 if r >= threshold else 0.0 for r in rewards]
    if top_k < 1:
        raise ValueError(f"filtered: top_k must be >= 1, got {top_k}")
    w = [0.0] * len(rewards)
    for idx in group_indices(groups).values():
        for i in sorted(idx, key=lambda i: -rewards[i])[:top_k]:
            w[i] = 1.0
    return w


def reward_to_go(turn_rewards: Sequence[float], gamma: float) -> list[float]:
    """Per-turn credit: G_t = sum_{k >= t} gamma^(k - t) * r_k over the agent turns of one conversation."""
    out = [0.0] * len(turn_rewards)
    g = 0.0
    for t in range(len(turn_rewards) - 1, -1, -1):
        g = turn_rewards[t] + gamma * g
        out[t] = g
    return out
