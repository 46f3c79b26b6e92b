"""Weights from rewards for a whole dataset: one weight per agent turn of each conversation, by the objective.

The context-level statistics (Swift's means and stds, filtered top-k) come from the ``reward`` and
``context_id`` columns alone, vectorized with numpy, so the conversations are never held in memory; the
list versions (``turn_weights``) call the pure functions of ``rwft.objectives.weights`` and are the
reference the column versions are tested against.
"""

from __future__ import annotations

import numpy as np

from rwft.data.conversation import Conversation
from rwft.errors import RwftError
from rwft.objectives.weights import (
    SIGMA_EPS,
    filtered_weights,
    refit_weights,
    reward_to_go,
    sft_weights,
    swift_weights,
)

OBJECTIVES = ("sft", "filtered", "refit", "swift", "per-turn")


def turn_weights(
    convs: list[Conversation],
    objective: str,
    agent_role: str = "assistant",
    top_k: int = 1,
    threshold: float | None = None,
    gamma: float = 1.0,
) -> list[list[float]]:
    """One weight per agent turn of each conversation, by the pure functions of ``rwft.objectives.weights``
    (the reference the columnar ``column_turn_weights`` is tested against; fine for small lists)."""
    try:
        out = _turn_weights(convs, objective, agent_role, top_k, threshold, gamma)
    except ValueError as e:  # the objectives' own checks (negative refit rewards, ...)
        raise RwftError(str(e)) from None
    for c, w in zip(convs, out, strict=True):
        for k, i in enumerate(c.agent_turns(agent_role)):
            if c.messages[i].get("weight", 1) == 0:
                w[k] = 0.0
    return out


def _turn_weights(convs, objective, agent_role, top_k, threshold, gamma) -> list[list[float]]:
    if objective == "per-turn":
        return [reward_to_go(c.turn_rewards(agent_role), gamma) for c in convs]
    rewards = [float(c.reward) for c in convs]  # type: ignore[arg-type]
    groups = [c.context_id for c in convs]
    if objective == "sft":
        w = sft_weights(rewards)
    elif objective == "filtered":
        w = filtered_weights(rewards, groups, top_k=top_k, threshold=threshold)
    elif objective == "refit":
        w = refit_weights(rewards)
    elif objective == "swift":
        w = swift_weights(rewards, groups)
    else:
        raise RwftError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    return [[wi] * len(c.agent_turns(agent_role)) for c, wi in zip(convs, w, strict=True)]


def _list_parts(column) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat float64 values) of a list column (ChunkedArray or Array)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return offsets - offsets[0], values


def _group_codes(context_ids) -> np.ndarray:
    """Context codes 0.. in order of first appearance."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = context_ids.combine_chunks() if isinstance(context_ids, pa.ChunkedArray) else pa.array(context_ids)
    return pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def swift_columns(rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``swift_weights`` vectorized: (r - context mean) / context population std; 0 for a single-sample or
    all-equal context."""
    ng = int(groups.max()) + 1 if len(groups) else 0
    cnt = np.bincount(groups, minlength=ng).astype(np.float64)
    mu = np.bincount(groups, weights=rewards, minlength=ng) / np.maximum(cnt, 1)
    d = rewards - mu[groups]
    sigma = np.sqrt(np.bincount(groups, weights=d * d, minlength=ng) / np.maximum(cnt, 1))
    ok = (cnt >= 2) & (sigma >= SIGMA_EPS)
    return np.where(ok[groups], d / np.where(ok, sigma, 1.0)[groups], 0.0)


def filtered_columns(rewards: np.ndarray, groups: np.ndarray, top_k: int = 1, threshold: float | None = None
                     ) -> np.ndarray:
    """``filtered_weights`` vectorized: 1 for r >= threshold, else for the top_k of each context (ties: the
    earlier sample wins)."""
    if threshold is not None:
        return (rewards >= threshold).astype(np.float64)
    if top_k < 1:
        filtered_weights([], [], top_k=top_k)  # raises the pure function's ValueError
    n = len(rewards)
    order = np.lexsort((np.arange(n), -rewards, groups))
    ng = int(groups.max()) + 1 if n else 0
    starts = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=ng))[:-1]]).astype(np.int64)
    rank = np.arange(n) - starts[groups[order]]
    w = np.zeros(n)
    w[order[rank < top_k]] = 1.0
    return w


def reward_to_go_columns(offsets: np.ndarray, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """``reward_to_go`` of every row at once: ``rewards`` flat, row i at ``offsets[i]:offsets[i + 1]``."""
    total = len(rewards)
    lengths = np.diff(offsets)
    from_end = np.repeat(offsets[1:], lengths) - 1 - np.arange(total)  # 0 for each row's last turn
    order = np.argsort(from_end, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(from_end, minlength=1))]) if total else np.zeros(1, int)
    out = np.zeros(total)
    for k in range(len(bounds) - 1):
        idx = order[bounds[k]:bounds[k + 1]]
        nxt = out[idx + 1] if k > 0 else 0.0
        out[idx] = rewards[idx] + gamma * nxt
    return out


def column_turn_weights(
    ds,
    objective: str,
    top_k: int = 1,
    threshold: float | None = None,
    gamma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The weight of every agent turn of every row of a ``read_dataset`` dataset, from its columns only:
    ``(offsets, values)``, row i's turns at ``values[offsets[i]:offsets[i + 1]]``. An agent message with
    ``weight: 0`` weighs 0."""
    table = ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table
    offsets, mask = _list_parts(table.column("turn_mask"))
    lengths = np.diff(offsets)
    if objective == "per-turn":
        _, turn_rewards = _list_parts(table.column("turn_rewards"))
        values = reward_to_go_columns(offsets, turn_rewards, gamma)
    else:
        if objective not in OBJECTIVES:
            raise RwftError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
        if objective == "sft":
            w = np.ones(len(rewards))
        elif objective == "refit":
            bad = rewards[rewards < 0]
            if len(bad):
                try:
                    refit_weights(bad.tolist())
                except ValueError as e:
                    raise RwftError(str(e)) from None
            w = rewards
        else:
            groups = _group_codes(table.column("context_id"))
            try:
                w = swift_columns(rewards, groups) if objective == "swift" else filtered_columns(
                    rewards, groups, top_k, threshold)
            except ValueError as e:
                raise RwftError(str(e)) from None
        values = np.repeat(w, lengths)
    return offsets, values * mask


def qsft_turn_rewards(ds, path, rescale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Q-SFT's reward of every agent turn of every row of a ``read_dataset`` dataset: ``(offsets, values)``.

    The turn rewards are ``Conversation.turn_rewards`` (message-level rewards where the data has them, else
    the conversation's reward on its last agent turn). Q-SFT needs returns in [0, 1]: without ``rescale``
    every conversation's return (the sum of its turn rewards) must lie in [0, 1] and every turn reward in
    [-1, 1] (redistributed turn rewards may be negative; the Bellman targets are clamped to [0, 1]), else
    RwftError naming the file, the record and the value. With ``rescale`` the returns are mapped affinely
    onto [0, 1] (lowest return in the data -> 0, highest -> 1): every turn reward is divided by
    (hi - lo) and -lo / (hi - lo) is added on each conversation's last agent turn, so a state's reward-to-go
    stays the suffix of that return (twenty-questions' -1 per turn becomes -1/19 per turn and +20/19 at the end).
    """
    table = ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table
    offsets, values = _list_parts(table.column("turn_rewards"))
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    returns = np.bincount(rows, weights=values, minlength=len(lengths))
    has = lengths > 0

    def where(i: int) -> str:
        return f"{path}: conversation {i + 1} (id {table.column('id')[i].as_py()!r})"

    if not rescale:
        bad = np.nonzero(has & ((returns < 0) | (returns > 1)))[0]
        if len(bad):
            i = int(bad[0])
            raise RwftError(f"{where(i)}: reward {returns[i]:g} outside [0, 1]; Q-SFT needs rewards in [0, 1] "
                            "(scale them, or pass --rescale-rewards to map the data's returns onto [0, 1])")
        bad = np.nonzero((values < -1) | (values > 1))[0]
        if len(bad):
            i = int(rows[bad[0]])
            raise RwftError(f"{where(i)}: turn reward {values[bad[0]]:g} outside [-1, 1]; Q-SFT needs rewards in "
                            "[0, 1] (scale them, or pass --rescale-rewards)")
        return offsets, values
    lo, hi = (float(returns[has].min()), float(returns[has].max())) if has.any() else (0.0, 0.0)
    if hi - lo < 1e-12:
        raise RwftError(f"{path}: --rescale-rewards: every conversation has the same return ({lo:g}); "
                        "there is nothing to learn from")
    values = values / (hi - lo)
    values[offsets[1:][has] - 1] += -lo / (hi - lo)
    return offsets, values
