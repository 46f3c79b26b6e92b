"""Per-trajectory (or per-turn) weights of the weighted objectives: numpy functions over rewards and groups.

Every weighted objective is one negative log-likelihood over the agent's tokens
(``objectives.losses.weighted_nll``); they differ only in the weight each agent token carries. These are the
functions training runs (``data.weighting`` applies them to a dataset's Arrow columns) and the ones the tests
check by hand. ``groups`` may be context ids of any kind (strings or integer codes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIGMA_EPS = 1e-6


def _codes(groups: Sequence | np.ndarray) -> np.ndarray:
    """Integer codes 0.. of the groups (any hashable ids, or integer codes already)."""
    return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)


def sft_weights(rewards: Sequence[float], groups: Sequence | None = None) -> np.ndarray:
    """Behaviour cloning: w_i = 1."""
    return np.ones(len(rewards))


def refit_weights(rewards: Sequence[float], groups: Sequence | None = None) -> np.ndarray:
    """Refit: w_i = r_i, so the loss is -E[r * log pi(tau)], a lower bound on the value (BRIEF, paper 1).

    The bound needs r >= 0: a negative reward would push a trajectory's likelihood down without limit."""
    r = np.asarray(rewards, dtype=np.float64)
    bad = r[r < 0]
    if len(bad):
        raise ValueError(f"refit needs rewards >= 0 (found {len(bad)} negative, e.g. {bad[0]:g}); "
                         "rescale the rewards or use --objective swift")
    return r.copy()


def swift_weights(rewards: Sequence[float], groups: Sequence) -> np.ndarray:
    """Swift: w_i = (r_i - mu(x_i)) / sigma(x_i), mean and population std over the samples of context x_i.

    A context with a single sample, or whose rewards are all equal (sigma < 1e-6), gets weight 0 for every
    sample: there is no contrast to learn from. Within any other context the weights have mean 0 and mean
    square 1."""
    r = np.asarray(rewards, dtype=np.float64)
    g = _codes(groups)
    ng = int(g.max()) + 1 if len(g) else 0
    cnt = np.bincount(g, minlength=ng).astype(np.float64)
    mu = np.bincount(g, weights=r, minlength=ng) / np.maximum(cnt, 1)
    d = r - mu[g]
    sigma = np.sqrt(np.bincount(g, weights=d * d, minlength=ng) / np.maximum(cnt, 1))
    ok = (cnt >= 2) & (sigma >= SIGMA_EPS)
    return np.where(ok[g], d / np.where(ok, sigma, 1.0)[g], 0.0)


def filtered_weights(rewards: Sequence[float], groups: Sequence, top_k: int = 1,
                     threshold: float | None = None) -> np.ndarray:
    """STaR-GATE / filtered SFT: w_i = 1 if r_i >= threshold (when given), else 1 if i is among the top_k
    rewards of its context, else 0. Ties are broken by order in the data (the earlier sample wins)."""
    r = np.asarray(rewards, dtype=np.float64)
    if threshold is not None:
        return (r >= threshold).astype(np.float64)
    if top_k < 1:
        raise ValueError(f"filtered: top_k must be >= 1, got {top_k}")
    g = _codes(groups)
    n = len(r)
    order = np.lexsort((np.arange(n), -r, g))
    starts = np.concatenate([[0], np.cumsum(np.bincount(g))[:-1]]).astype(np.int64) if n else np.zeros(0, int)
    rank = np.arange(n) - starts[g[order]]
    w = np.zeros(n)
    w[order[rank < top_k]] = 1.0
    return w


def reward_to_go(turn_rewards: Sequence[float], gamma: float, offsets: Sequence[int] | None = None) -> np.ndarray:
    """Per-turn credit: G_t = sum_{k >= t} gamma^(k - t) * r_k over the agent turns of each conversation.

    ``turn_rewards`` is flat, conversation i's turns at ``offsets[i]:offsets[i + 1]`` (default: one
    conversation)."""
    r = np.asarray(turn_rewards, dtype=np.float64)
    total = len(r)
    offsets = np.asarray([0, total] if offsets is None else offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    from_end = np.repeat(offsets[1:], lengths) - 1 - np.arange(total)  # 0 for each row's last turn
    order = np.argsort(from_end, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(from_end, minlength=1))]) if total else np.zeros(1, int)
    out = np.zeros(total)
    for k in range(len(bounds) - 1):  # all rows' k-th turn from the end at once
        idx = order[bounds[k]:bounds[k + 1]]
        out[idx] = r[idx] + (gamma * out[idx + 1] if k > 0 else 0.0)
    return out
