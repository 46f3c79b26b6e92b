"""From conversations to weighted token sequences, and from sequences to padded batches.

Weights are per token and travel with the tokens (``token_weights``), so no batching mode can lose
them or attach them to the wrong sequence: a test shuffles, groups and pads and checks that each
agent token still carries its trajectory's weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rwft.chat_mask import encode_conversation
from rwft.conversation import Conversation
from rwft.errors import RwftError
from rwft.weights import filtered_weights, refit_weights, reward_to_go, sft_weights, swift_weights

OBJECTIVES = ("sft", "filtered", "refit", "swift", "per-turn")


def turn_weights(
    convs: list[Conversation],
    objective: str,
    agent_role: str = "assistant",
    top_k: int = 1,
    threshold: float | None = None,
    gamma: float = 1.0,
) -> list[list[float]]:
    """One weight per agent turn of each conversation, by the objective (see ``rwft.weights``)."""
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


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length in random order: shuffle, sort each mega-batch of ``mega`` batches by length,
    cut it into batches, shuffle the batches. The order depends only on (seed, epoch), so a resumed run
    sees the same batches. transformers' own grouping sorts mega-batches of at most 50 batches and at most
    a quarter of the data, which leaves a third to half of the slots padding on small datasets."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 64):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = lengths, batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size, bs = self.mega * self.batch_size, self.batch_size
        batches, rest = [], []
        for start in range(0, len(order), size):
            mega = sorted(order[start:start + size], key=lambda i: self.lengths[i], reverse=True)
            cut = len(mega) - len(mega) % bs
            batches += [mega[i:i + bs] for i in range(0, cut, bs)]
            rest += mega[cut:]
        rest.sort(key=lambda i: self.lengths[i], reverse=True)
        cut = len(rest) - len(rest) % bs
        batches += [rest[i:i + bs] for i in range(0, cut, bs)]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[k]
        yield from rest[cut:]  # the one partial batch goes last, so the loader's batches stay aligned


class WeightedCollator:
    """Right-pad a list of sequences: pad id for inputs, -100 for labels, 0 for weights."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value, dtype) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (n - len(r[key])) for r in rows], dtype=dtype)

        return {
            "input_ids": pad("input_ids", self.pad_token_id, torch.long),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows]),
            "labels": pad("labels", -100, torch.long),
            "token_weights": pad("token_weights", 0.0, torch.float32),
        }
