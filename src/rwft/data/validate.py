"""``rwft validate``: check a dataset and summarize what training would see."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rwft.data.conversation import Conversation
from rwft.data.dataset import build_sequences
from rwft.data.io import load_conversations
from rwft.objectives.weights import group_indices


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


def summarize(convs: list[Conversation], agent_role: str = "assistant") -> dict[str, Any]:
    """Counts and the reward distribution of a list of conversations (no tokenizer needed)."""
    rewards = [float(c.reward) for c in convs if c.reward is not None]
    groups = group_indices([c.context_id for c in convs])
    sizes = [len(v) for v in groups.values()]
    equal = sum(1 for idx in groups.values() if len(idx) > 1 and len({convs[i].reward for i in idx}) == 1)
    quantiles = statistics.quantiles(rewards, n=4, method="inclusive") if len(rewards) > 1 else rewards * 3
    return {
        "conversations": len(convs),
        "contexts": len(groups),
        "samples_per_context": {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)},
        "agent_turns": sum(len(c.agent_turns(agent_role)) for c in convs),
        "turn_level_rewards": sum(1 for c in convs if any("reward" in m for m in c.messages)),
        "reward": {
            "min": min(rewards), "q1": quantiles[0], "median": quantiles[1], "q3": quantiles[2],
            "max": max(rewards), "mean": statistics.fmean(rewards),
            "std": statistics.pstdev(rewards), "negative": sum(r < 0 for r in rewards),
        },
        "single_sample_contexts": sum(1 for s in sizes if s == 1),
        "all_equal_reward_contexts": equal,
    }


def histogram(values: list[float], bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram, one line per bin."""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / span * bins), bins - 1)] += 1
    top = max(counts)
    return [
        f"  [{lo + k * span / bins:8.3f}, {lo + (k + 1) * span / bins:8.3f}) {counts[k]:6d} "
        + "#" * round(width * counts[k] / top)
        for k in range(bins)
    ]


def run_validate(config: ValidateConfig) -> dict[str, Any]:
    from rwft.presets import load_tokenizer

    convs = load_conversations(config.data, config.agent_role)
    summary = summarize(convs, config.agent_role)
    tok = load_tokenizer(config.model, config.trust_remote_code)
    ones = [[1.0] * len(c.agent_turns(config.agent_role)) for c in convs]
    _, stats = build_sequences(tok, convs, ones, config.max_length, config.agent_role)
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
        *histogram([float(c.reward) for c in convs]),  # type: ignore[arg-type]
    ]
    print("\n".join(lines))
    return summary
