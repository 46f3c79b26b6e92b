"""Shared fixtures: a per-session preset cache and small datasets cut from the packaged sample."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rwft" / "assets" / "sample_conversations.jsonl"

# Presets are built once per machine; CI and developers share ~/.cache/rwft unless RWFT_CACHE is set.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sample_records(n: int | None = None) -> list[dict]:
    records = [json.loads(line) for line in SAMPLE.open()]
    return records if n is None else records[:n]


def scripted_mean_reward(env, tasks, skill: float, stride: int) -> float:
    """Mean reward of the env's scripted agent at ``skill``; turn t of task k is seeded by stride * k + t."""
    import random

    total = 0.0
    for k, t in enumerate(tasks):
        ep = env.start(t)
        while not ep.done:
            env.step(ep, env.scripted_action(ep, random.Random(stride * k + ep.agent_turns), skill))
        total += env.outcome(ep)["reward"]
    return total / len(tasks)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def sample_path() -> Path:
    return SAMPLE
