"""The objective's weight of every agent turn of a dataset: the registry's weight function applied to columns.

The math is the objective's (``objectives.weights``, found through ``objectives.registry``); this module only
reads the ``reward``, ``context_id``, ``turn_rewards`` and ``turn_mask`` columns, so the conversations are never
held in memory, checks the rewards against the objective's range (naming the record), and spreads a
conversation's weight over its agent turns. ``turn_weights`` does the same for a list of ``Conversation``.
``normalize_lengths`` then scales each turn's weight by its trajectory's or its own token count (the
``--length-normalization`` of ``rwft train``), so the normalization travels with the tokens like the weight.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from rwft.data.conversation import Conversation
from rwft.errors import RwftError
from rwft.objectives.registry import OBJECTIVES, Objective

LengthNormalization = Literal["auto", "sum", "trajectory", "turn"]
LENGTH_NORMALIZATIONS: tuple[str, ...] = get_args(LengthNormalization)


def weighted_objective(name: str) -> Objective:
    """The registry entry of an objective that has token weights (RwftError otherwise)."""
    entry = OBJECTIVES.get(name)
    if entry is None or entry.weights is None:
        known = [o.name for o in OBJECTIVES.values() if o.weights is not None]
        raise RwftError(f"unknown objective {name!r}; expected one of {', '.join(known)}")
    return entry


def apply_weights(entry: Objective, rewards: np.ndarray, groups: np.ndarray, offsets: np.ndarray,
                  turn_rewards: np.ndarray, options: dict, ids=None) -> np.ndarray:
    """Flat per-turn weights (row i's turns at ``offsets[i]:offsets[i + 1]``) by the entry's function, after
    the rewards are checked against its range (``ids(i)``: how to name row i in an error)."""
    kw = {k: options[k] for k in entry.options if k in options}
    try:
        if entry.turn_level:
            return entry.weights(turn_rewards, offsets=offsets, **kw)
        bad = np.nonzero((rewards < entry.reward_range[0]) | (rewards > entry.reward_range[1]))[0]
        if len(bad):
            i = int(bad[0])
            where = f"{ids(i)}: " if ids else ""
            raise RwftError(f"{where}reward {rewards[i]:g}: {entry.name} needs rewards {entry.range_text()} "
                            f"({len(bad)} outside); rescale the rewards or choose another --objective")
        return np.repeat(entry.weights(rewards, groups, **kw), np.diff(offsets))
    except ValueError as e:  # the weight function's own checks (top_k < 1, ...)
        raise RwftError(str(e)) from None


def turn_weights(convs: list[Conversation], objective: str, agent_role: str = "assistant", top_k: int = 1,
                 threshold: float | None = None, gamma: float = 1.0) -> list[list[float]]:
    """One weight per agent turn of each conversation (``weight: 0`` messages weigh 0); for small lists."""
    entry = weighted_objective(objective)
    turns = [c.agent_turns(agent_role) for c in convs]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in turns])]).astype(np.int64)
    turn_rewards = np.array([r for c in convs for r in c.turn_rewards(agent_role)], dtype=np.float64)
    rewards = np.array([np.nan if c.reward is None else c.reward for c in convs], dtype=np.float64)
    mask = np.array([float(c.messages[i].get("weight", 1) != 0) for c, t in zip(convs, turns, strict=True)
                     for i in t])
    groups = np.array([c.context_id for c in convs])
    values = apply_weights(entry, rewards, groups, offsets, turn_rewards, dict(top_k=top_k, threshold=threshold,
                           gamma=gamma), ids=lambda i: f"conversation {i + 1} (id {convs[i].id!r})") * mask
    return [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(convs))]


def list_column(column) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat float64 values) of an Arrow list column (ChunkedArray or Array)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return offsets - offsets[0], values


def group_codes(context_ids) -> np.ndarray:
    """Context codes 0.. in order of first appearance."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = context_ids.combine_chunks() if isinstance(context_ids, pa.ChunkedArray) else pa.array(context_ids)
    return pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def arrow_table(ds):
    """The Arrow table of a ``datasets.Dataset`` with its row selection applied."""
    return ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table


def column_turn_weights(ds, objective: str, top_k: int = 1, threshold: float | None = None, gamma: float = 1.0,
                        source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The weight of every agent turn of every row of a ``read_dataset`` dataset, from its columns only:
    ``(offsets, values)``, row i's turns at ``values[offsets[i]:offsets[i + 1]]``. An agent message with
    ``weight: 0`` weighs 0. ``source`` (the file) names a refused record."""
    entry = weighted_objective(objective)
    table = arrow_table(ds)
    offsets, mask = list_column(table.column("turn_mask"))
    _, turn_rewards = list_column(table.column("turn_rewards"))
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)

    def ids(i: int) -> str:
        return f"{source + ': ' if source else ''}conversation {i + 1} (id {table.column('id')[i].as_py()!r})"

    values = apply_weights(entry, rewards, group_codes(table.column("context_id")), offsets, turn_rewards,
                           dict(top_k=top_k, threshold=threshold, gamma=gamma), ids)
    return offsets, values * mask


def resolve_normalization(mode: str, values: np.ndarray, turn_tokens: np.ndarray) -> str:
    """The length normalization that ``mode`` means for turn weights w_t of n_t tokens each. ``auto``: ``sum``
    unless the token weights sum to less than 0, sum_t w_t n_t < 0 (the negative weights sit on the longer
    trajectories: Swift where failures run long), then ``trajectory``, under which Swift's token weights sum to
    0 in each context. Weights >= 0 always give ``sum``."""
    if mode not in LENGTH_NORMALIZATIONS:
        raise RwftError(f"--length-normalization {mode!r}: expected one of {', '.join(LENGTH_NORMALIZATIONS)}")
    if mode == "auto":
        net = float(np.dot(np.asarray(values, dtype=np.float64), np.asarray(turn_tokens, dtype=np.float64)))
        return "trajectory" if net < 0 else "sum"
    return mode


def normalize_lengths(values: np.ndarray, offsets: np.ndarray, turn_tokens: np.ndarray, mode: str) -> np.ndarray:
    """Turn weights w_t (row i's turns at ``offsets[i]:offsets[i + 1]``, n_t tokens each) scaled for ``mode``:

    - ``sum``: w_t. A trajectory contributes w x its summed log-likelihood (the paper's E[r log pi(tau)]).
    - ``trajectory``: w_t x L_bar / L_i, with L_i the agent tokens of row i that carry a weight (n_t of its
      turns with w_t != 0) and L_bar the mean of L_i over the rows with L_i > 0: each trajectory's tokens
      weigh w x L_bar in all, whatever its length (its mean log-likelihood times w x L_bar).
    - ``turn``: w_t x n_bar / n_t, with n_bar the mean n_t over the turns with w_t != 0 and n_t > 0: each
      turn's tokens weigh w_t x n_bar in all, whatever its length.

    L_bar and n_bar keep the total weight of a weight-1 dataset (SFT) that of ``sum``, so learning rates carry
    over. Turns without tokens (cut by truncation) keep w_t; they have nothing to weigh."""
    values = np.asarray(values, dtype=np.float64)
    n = np.asarray(turn_tokens, dtype=np.float64)
    live = (values != 0) & (n > 0)
    if mode == "sum" or not live.any():
        return values.copy()
    if mode == "turn":
        return np.where(live, values * n[live].mean() / np.where(live, n, 1.0), values)
    if mode != "trajectory":
        raise RwftError(f"--length-normalization {mode!r}: expected one of {', '.join(LENGTH_NORMALIZATIONS)}")
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    per_row = np.bincount(rows, weights=n * live, minlength=len(lengths))
    mean = per_row[per_row > 0].mean()
    return np.where(live, values * mean / np.where(live, per_row[rows], 1.0), values)
