"""``rwft validate``: check a dataset and summarize what training would see."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rwft.data.conversation import SEVERITIES, Conversation
from rwft.data.dataset import EncodeStats, encode_dataset, read_dataset
from rwft.data.weighting import column_turn_weights, list_column, weighted_objective

STRONG = 0.5  # |correlation| of reward with a length from which validate warns


@dataclass
class ValidateConfig:
    """Options of ``rwft validate``."""

    data: str
    """Logged conversations: a .jsonl or .parquet file, or a datasets directory."""
    model: str = "tiny"
    """Whose tokenizer and chat template measure lengths (a preset, directory or hub id)."""
    max_length: int = 1024
    """The training max length in tokens, to count conversations that would be truncated."""
    agent_role: str = "assistant"
    """The role whose messages are the policy's actions."""
    trust_remote_code: bool = False
    """Allow the tokenizer's own Python code to run."""
    num_proc: int | None = None
    """Tokenizer processes (default: min(cores, 4) for large data, 1 for small)."""
    objective: str = ""
    """The objective you mean to train (rwft train --objective), for the warning on reward falling with length;
    empty: warn for the objectives whose weights can be negative (swift, per-turn)."""

    def __post_init__(self) -> None:
        if self.objective:
            weighted_objective(self.objective)


def summarize(convs: list[Conversation], agent_role: str = "assistant") -> dict[str, Any]:
    """Counts and the reward distribution of a list of conversations (no tokenizer needed)."""
    rewards = np.array([np.nan if c.reward is None else float(c.reward) for c in convs], dtype=np.float64)
    groups = [c.context_id for c in convs]
    return _summary(rewards, groups, np.array([len(c.agent_turns(agent_role)) for c in convs]),
                    np.array([any("reward" in m for m in c.messages) for c in convs], dtype=bool))


def summarize_dataset(ds) -> dict[str, Any]:
    """``summarize`` from the columns of a ``read_dataset`` dataset (vectorized; no conversation objects)."""
    table = ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    turns = pc.list_value_length(table.column("turn_mask")).to_numpy(zero_copy_only=False)
    flags = table.column("has_turn_rewards").to_numpy(zero_copy_only=False)
    return _summary(rewards, table.column("context_id"), turns, flags)


def _summary(rewards: np.ndarray, context_ids, turns: np.ndarray, turn_level: np.ndarray) -> dict[str, Any]:
    arr = context_ids.combine_chunks() if isinstance(context_ids, pa.ChunkedArray) else pa.array(context_ids)
    codes = pc.dictionary_encode(arr).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = np.bincount(codes)
    present = rewards[~np.isnan(rewards)]
    rmin = np.full(len(sizes), np.inf)
    rmax = np.full(len(sizes), -np.inf)
    np.minimum.at(rmin, codes, rewards)
    np.maximum.at(rmax, codes, rewards)
    equal = int(((sizes > 1) & (rmin == rmax)).sum())
    if len(present) > 1:  # statistics.quantiles(method="inclusive") is numpy's linear interpolation
        quantiles = np.percentile(present, [25, 50, 75]).tolist()
    else:
        quantiles = present.tolist() * 3
    return {
        "conversations": len(rewards),
        "contexts": len(sizes),
        "samples_per_context": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())},
        "agent_turns": int(turns.sum()),
        "turn_level_rewards": int(turn_level.sum()),
        "reward": {
            "min": float(present.min()), "q1": quantiles[0], "median": quantiles[1], "q3": quantiles[2],
            "max": float(present.max()), "mean": statistics.fmean(present.tolist()),
            "std": float(np.sqrt(np.mean((present - present.mean()) ** 2))), "negative": int((present < 0).sum()),
        },
        "single_sample_contexts": int((sizes == 1).sum()),
        "all_equal_reward_contexts": equal,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0.. of x, ties given their mean rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, tie, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(tie.reshape(-1), weights=ranks) / counts)[tie.reshape(-1)]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    den = float(np.sqrt((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum()) / den if den > 0 else 0.0


def length_correlations(rewards, lengths) -> dict[str, float]:
    """Pearson's r and Spearman's rho (Pearson's of the tie-averaged ranks) of reward with a length; 0 where
    either is constant."""
    r, n = np.asarray(rewards, dtype=np.float64), np.asarray(lengths, dtype=np.float64)
    return {"pearson": _pearson(r, n), "spearman": _pearson(_ranks(r), _ranks(n))}


def length_warning(correlations: dict[str, dict[str, float]], objective: str, negative_weights: bool) -> str:
    """The warning line when reward falls with length (some correlation <= -STRONG) and the objective has
    negative weights (assumed when no objective is given); empty otherwise."""
    lowest = min(((v, f"{kind.capitalize()} with {length.replace('_', ' ')}") for length, c in correlations.items()
                  for kind, v in c.items()), default=(0.0, ""))
    if lowest[0] > -STRONG or not negative_weights:
        return ""
    who = objective if objective else "objectives with negative weights (swift, per-turn credit)"
    return (f"warning: reward falls with length ({lowest[1]} {lowest[0]:+.2f}): for {who} the negative weights sit "
            "on the long conversations and push their many tokens down with no floor (Swift and per-turn "
            "collapsed this way on twenty-questions under every --length-normalization); prefer weights >= 0 "
            "(--objective refit or filtered) or qsft")


def error_span_counts(cols) -> tuple[dict[str, int], int]:
    """The error spans of each severity and the conversations with any (``error_spans`` column), and the
    tokens that carry a penalty (``token_penalty``), from ``encode_dataset``'s columns."""
    per_row = np.asarray(cols.column("error_spans").to_pylist(), dtype=np.int64).reshape(-1, len(SEVERITIES))
    counts = {s: int(per_row[:, i].sum()) for i, s in enumerate(SEVERITIES)}
    counts["conversations"] = int((per_row.sum(axis=1) > 0).sum())
    _, penalty = list_column(cols.column("token_penalty"))
    return counts, int((penalty > 0).sum())


def histogram(values, bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram, one line per bin."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    span = (hi - lo) or 1.0
    counts = np.bincount(np.minimum(((v - lo) / span * bins).astype(np.int64), bins - 1), minlength=bins).tolist()
    top = max(counts)
    return [
        f"  [{lo + k * span / bins:8.3f}, {lo + (k + 1) * span / bins:8.3f}) {counts[k]:6d} "
        + "#" * round(width * counts[k] / top)
        for k in range(bins)
    ]


def run_validate(config: ValidateConfig) -> dict[str, Any]:
    """Check every record (streaming, cached as Arrow), tokenize (cached: a later ``rwft train`` with the same
    model and max length reuses it) and print the summary."""
    from rwft.presets import load_tokenizer

    ds = read_dataset(config.data, config.agent_role, require_reward=True)
    summary = summarize_dataset(ds)
    tok = load_tokenizer(config.model, config.trust_remote_code)
    enc = encode_dataset(ds, tok, config.max_length, config.agent_role, config.num_proc)
    cols = enc.with_format("arrow").select_columns(["length", "agent_tokens", "truncated", "too_long",
                                                    "error_spans", "token_penalty"])[:]
    too_long = cols.column("too_long").to_numpy(zero_copy_only=False)
    fits = ~too_long
    stats = EncodeStats(
        conversations=len(ds), kept=int(fits.sum()), too_long=int(too_long.sum()),
        truncated=int((cols.column("truncated").to_numpy(zero_copy_only=False) & fits).sum()),
        tokens=int(cols.column("length").to_numpy()[fits].sum()),
        agent_tokens=int(cols.column("agent_tokens").to_numpy()[fits].sum()),
    )
    summary["truncated_at_max_length"] = stats.truncated
    summary["too_long_dropped"] = stats.too_long
    summary["tokens"] = stats.tokens
    summary["agent_tokens"] = stats.agent_tokens
    summary["error_spans"], summary["span_tokens"] = error_span_counts(cols)
    table = ds.with_format("arrow")[:]
    rewards = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    turns = pc.list_value_length(table.column("turn_mask")).to_numpy(zero_copy_only=False)
    agent = cols.column("agent_tokens").to_numpy()
    summary["length_correlation"] = corr = {
        "agent_tokens": length_correlations(rewards[fits], agent[fits]),
        "turns": length_correlations(rewards[fits], turns[fits]),
    }
    negative = not config.objective or bool((column_turn_weights(ds, config.objective)[1] < 0).any())
    warning = length_warning(corr, config.objective, negative)
    summary["warnings"] = [warning] if warning else []
    r = summary["reward"]
    spc = summary["samples_per_context"]
    lines = [
        f"{config.data}: OK",
        f"  conversations            {summary['conversations']}",
        f"  contexts                 {summary['contexts']} "
        f"(samples per context: min {spc['min']}, mean {spc['mean']:.2f}, max {spc['max']})",
        f"  agent turns              {summary['agent_turns']}",
        f"  with turn-level rewards  {summary['turn_level_rewards']}",
        f"  single-sample contexts   {summary['single_sample_contexts']}",
        f"  all-equal-reward contexts {summary['all_equal_reward_contexts']} (swift gives them weight 0)",
        f"  truncated at {config.max_length} tokens {stats.truncated} (oldest exchanges dropped), "
        f"{stats.too_long} too long even so (dropped)",
        f"  tokens                   {stats.tokens} ({stats.agent_tokens} agent) with {config.model}'s template",
        "  error spans              " + ", ".join(f"{summary['error_spans'][s]} {s}" for s in SEVERITIES)
        + f" in {summary['error_spans']['conversations']} conversations ({summary['span_tokens']} tokens)",
        f"  reward                   mean {r['mean']:.4g}, std {r['std']:.4g}, min {r['min']:.4g}, "
        f"q1 {r['q1']:.4g}, median {r['median']:.4g}, q3 {r['q3']:.4g}, max {r['max']:.4g}, "
        f"negative {r['negative']}",
        *histogram(rewards),
        f"  reward vs length         Spearman {corr['agent_tokens']['spearman']:+.2f}, Pearson "
        f"{corr['agent_tokens']['pearson']:+.2f} with agent tokens; Spearman {corr['turns']['spearman']:+.2f}, "
        f"Pearson {corr['turns']['pearson']:+.2f} with agent turns",
        *summary["warnings"],
    ]
    print("\n".join(lines))
    return summary
