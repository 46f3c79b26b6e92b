"""From logged conversations to weighted token sequences for training.

Weights are per token and travel with the tokens (``token_weights``), so no batching mode can lose
them or attach them to the wrong sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rwft.data.conversation import Conversation
from rwft.data.encode import encode_conversation
from rwft.errors import RwftError
from rwft.objectives.weights import filtered_weights, refit_weights, reward_to_go, sft_weights, swift_weights

OBJECTIVES = ("sft", "filtered", "refit", "swift", "per-turn")


def turn_weights(
    convs: list[Conversation],
    objective: str,
    agent_role: str = "assistant",
    top_k: int = 1,
    threshold: float | None = None,
    gamma: float = 1.0,
) -> list[list[float]]:
    """One weight per agent turn of each conversation, by the objective (see ``rwft.objectives.weights``)."""
    try:
        return _turn_weights(convs, objective, agent_role, top_k, threshold, gamma)
    except ValueError as e:  # the objectives' own checks (negative refit rewards, ...)
        raise RwftError(str(e)) from None


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


@dataclass
class EncodeStats:
    """What happened to the conversations on their way to training sequences."""

    conversations: int = 0
    kept: int = 0
    zero_weight: int = 0  # every agent token weighs 0 (filtered out, or no contrast for swift)
    truncated: int = 0  # oldest exchanges dropped to fit max_length
    too_long: int = 0  # the task plus the last agent turn alone exceed max_length
    agent_tokens: int = 0
    tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)


def build_sequences(
    tokenizer, convs: list[Conversation], weights: list[list[float]], max_length: int, agent_role: str
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Tokenize every conversation with its token weights; drop those with no weight or that cannot fit."""
    stats = EncodeStats(conversations=len(convs))
    rows = []
    for conv, w in zip(convs, weights, strict=True):
        if all(x == 0 for x in w):
            stats.zero_weight += 1
            continue
        enc = encode_conversation(tokenizer, conv, w, max_length, agent_role)
        if enc is None:
            stats.too_long += 1
            stats.dropped_ids.append(conv.id)
            continue
        stats.truncated += enc.truncated
        stats.kept += 1
        stats.agent_tokens += sum(enc.agent_mask)
        stats.tokens += len(enc.input_ids)
        labels = [t if m else -100 for t, m in zip(enc.input_ids, enc.agent_mask, strict=True)]
        rows.append({"input_ids": enc.input_ids, "labels": labels, "token_weights": enc.token_weights})
    return rows, stats
