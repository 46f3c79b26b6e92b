"""``rwft validate``: check a dataset and summarize what training would see."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rwft.data.conversation import Conversation
from rwft.data.dataset import EncodeStats, encode_dataset, read_dataset


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
    cols = enc.with_format("arrow").select_columns(["length", "agent_tokens", "truncated", "too_long"])[:]
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
        f"  reward                   mean {r['mean']:.4g}, std {r['std']:.4g}, min {r['min']:.4g}, "
        f"q1 {r['q1']:.4g}, median {r['median']:.4g}, q3 {r['q3']:.4g}, max {r['max']:.4g}, "
        f"negative {r['negative']}",
        *histogram(ds.with_format("arrow")[:].column("reward").to_numpy(zero_copy_only=False)),
    ]
    print("\n".join(lines))
    return summary
