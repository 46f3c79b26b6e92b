"""Preference pairs for DPO and StepDPO, built from the logged samples of each context.

Which two trajectories of a context form a pair (``pairing``):

- ``best-worst``: the highest- against the lowest-reward sample (ties broken by ``id``); the context is
  skipped when their gap is not above ``min_gap`` (all samples equal: no preference to learn).
- ``correct-incorrect``: a random sample with reward >= ``threshold`` against a random one below it (as in
  semi-online DPO on verifiable rewards); contexts whose samples are all right or all wrong are skipped.

What is compared (``level``), in TRL's conversational preference format
(``prompt``/``chosen``/``rejected`` message lists):

- ``final`` (DPO on the final answer): prompt = the better trajectory up to its last agent turn; chosen =
  that last agent turn; rejected = the worse trajectory's last agent turn.
- ``step`` (StepDPO, turn-level, after ACT): one pair per agent turn index t present in both trajectories.
  prompt = the better trajectory up to its t-th agent turn (x, a+_1, y+_1, ..., y+_{t-1}); chosen = a+_t;
  rejected = a-_t. At the first turn where the trajectories differ the two histories are the same state
  whenever the user / teacher is deterministic (the scripted teachers are), so that pair is exact; at later
  turns the worse trajectory's action is placed in the better trajectory's state, the usual turn-level
  approximation, which keeps every turn's pair in the state the better policy reaches. Turns whose two
  texts are equal carry no preference (the DPO gradient of an identical pair is zero) and are skipped.

Every skip is counted in ``PairStats`` so a user sees how much of the data DPO could use.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rwft.data.conversation import Conversation


@dataclass
class PairStats:
    """How many contexts gave pairs, and why the others did not."""

    contexts: int = 0
    contexts_used: int = 0
    pairs: int = 0
    skipped_single_sample: int = 0
    skipped_no_gap: int = 0
    skipped_all_same_side: int = 0
    skipped_identical_turns: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def group_by_context(conversations: Sequence[Conversation]) -> dict[str, list[Conversation]]:
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for c in conversations:
        groups[c.context_id].append(c)
    return dict(groups)


def choose_pair(
    samples: Sequence[Conversation],
    pairing: str = "best-worst",
    min_gap: float = 0.0,
    threshold: float = 0.5,
    seed: int = 0,
) -> tuple[Conversation, Conversation] | str:
    """The (better, worse) trajectories of one context, or the reason there is none
    (``single_sample``, ``no_gap``, ``all_same_side``)."""
    if len(samples) < 2:
        return "single_sample"
    if pairing == "best-worst":
        ranked = sorted(samples, key=lambda c: (-float(c.reward), c.id))
        best, worst = ranked[0], ranked[-1]
        return (best, worst) if float(best.reward) - float(worst.reward) > min_gap else "no_gap"
    if pairing == "correct-incorrect":
        good = sorted((c for c in samples if float(c.reward) >= threshold), key=lambda c: c.id)
        bad = sorted((c for c in samples if float(c.reward) < threshold), key=lambda c: c.id)
        if not good or not bad:
            return "all_same_side"
        key = hashlib.sha1(f"{seed}/{samples[0].context_id}".encode()).hexdigest()
        rng = random.Random(int(key[:12], 16))
        return rng.choice(good), rng.choice(bad)
    raise ValueError(f"unknown pairing {pairing!r}; expected 'best-worst' or 'correct-incorrect'")


def _agent_index(conv: Conversation, agent_role: str) -> list[int]:
    return [i for i, m in enumerate(conv.messages) if m["role"] == agent_role]


def _clean(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Only role and content: per-message rewards and other keys are not part of the text."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def turn_pair(better: Conversation, worse: Conversation, t: int, agent_role: str = "assistant") -> dict | None:
    """The pair at agent turn index ``t`` (negative counts from the end), or None when both texts are equal."""
    bi, wi = _agent_index(better, agent_role), _agent_index(worse, agent_role)
    b, w = better.messages[bi[t]], worse.messages[wi[t]]
    if b["content"] == w["content"]:
        return None
    return {
        "prompt": _clean(better.messages[: bi[t]]),
        "chosen": _clean([b]),
        "rejected": _clean([w]),
        "context_id": better.context_id,
        "turn": bi.index(bi[t]),
        "chosen_id": better.id,
        "rejected_id": worse.id,
        "reward_chosen": float(better.reward),
        "reward_rejected": float(worse.reward),
    }


def build_pairs(
    conversations: Sequence[Conversation],
    level: str = "final",
    pairing: str = "best-worst",
    min_gap: float = 0.0,
    threshold: float = 0.5,
    seed: int = 0,
    agent_role: str = "assistant",
) -> tuple[list[dict[str, Any]], PairStats]:
    """Pairs of every context (``level`` ``final`` or ``step``), and the counts of what was skipped."""
    if level not in ("final", "step"):
        raise ValueError(f"unknown level {level!r}; expected 'final' or 'step'")
    stats = PairStats()
    out: list[dict[str, Any]] = []
    for samples in group_by_context(conversations).values():
        stats.contexts += 1
        chosen = choose_pair(samples, pairing, min_gap, threshold, seed)
        if isinstance(chosen, str):
            setattr(stats, f"skipped_{chosen}", getattr(stats, f"skipped_{chosen}") + 1)
            continue
        better, worse = chosen
        if level == "final":
            turns = [-1]
        else:
            turns = list(range(min(len(_agent_index(better, agent_role)), len(_agent_index(worse, agent_role)))))
        made = [p for p in (turn_pair(better, worse, t, agent_role) for t in turns) if p is not None]
        stats.skipped_identical_turns += len(turns) - len(made)
        if made:
            stats.contexts_used += 1
        out.extend(made)
    stats.pairs = len(out)
    return out, stats
