"""``rwft export``: Refit for SFT-only fine-tuning services, by randomized rounding.

Each conversation is written floor(s * r) or ceil(s * r) times, the ceiling with probability
s * r - floor(s * r), so its expected count is s * r and plain SFT on the file follows Refit's
gradient in expectation (BRIEF, paper 1). The output keeps only what SFT services read: ``messages``
(and ``id``), one JSON object per line.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from rwft.data.io import load_conversations, write_jsonl_atomic
from rwft.errors import RwftError


@dataclass
class ExportConfig:
    """Options of ``rwft export``."""

    data: str
    """Logged conversations with rewards (.jsonl, .parquet or a datasets directory)."""
    out: str
    """Where to write the plain SFT dataset (.jsonl)."""
    rounding: bool = True
    """Duplicate each conversation by randomized rounding of scale * reward (the only mode so far)."""
    scale: float = 1.0
    """Multiply rewards by this before rounding (expected copies = scale * reward)."""
    seed: int = 0
    """Seed of the rounding."""
    agent_role: str = "assistant"
    """The role whose messages are the policy's actions."""


def rounded_copies(rewards: Sequence[float], scale: float, rng: random.Random) -> list[int]:
    """n_i = floor(s r_i) + Bernoulli(s r_i - floor(s r_i)), so that E[n_i] = s r_i."""
    out = []
    for r in rewards:
        x = scale * r
        if x < 0:
            raise RwftError(f"export --rounding needs rewards >= 0 after scaling, got {x}")
        base = math.floor(x)
        out.append(base + (rng.random() < x - base))
    return out


def run_export(config: ExportConfig) -> int:
    if not config.rounding:
        raise RwftError("export: only --rounding is implemented")
    convs = load_conversations(config.data, config.agent_role)
    copies = rounded_copies([float(c.reward) for c in convs], config.scale, random.Random(config.seed))  # type: ignore[arg-type]
    records = [
        {"id": f"{c.id}#{k}", "messages": [{"role": m["role"], "content": m["content"]} for m in c.messages]}
        for c, n in zip(convs, copies, strict=True)
        for k in range(n)
    ]
    write_jsonl_atomic(config.out, records)
    print(f"rwft export: {len(records)} lines from {len(convs)} conversations -> {config.out}")
    return len(records)
