"""Turn-level credit by reward redistribution (R3HF's rule, applied per agent turn instead of per token).

A judge that can score a prefix of a conversation gives R(<=t), the score of the conversation cut after
the agent's turn t. Agent turn t is credited with what its turn added:

    r_t = R(<=t) - R(<=t-1),   t = 1..T,   R(<=0) = 0,   R(<=T) = R (the conversation's reward)

so the sum telescopes: sum_t r_t = R(<=T) - R(<=0) = R exactly, whatever the prefix scores are. A turn
that made things worse gets a negative credit. With these turn rewards, the per-turn objective's
reward-to-go at gamma = 1 is G_t = R - R(<=t-1): the conversation's reward minus what the prefix before
turn t was already worth (an advantage-like quantity), and G_1 = R.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def redistribute(prefix_scores: Sequence[float], final_reward: float) -> list[float]:
    """Turn rewards r_t = R(<=t) - R(<=t-1) with R(<=0) = 0 and R(<=T) = ``final_reward``.

    ``prefix_scores`` are R(<=1), ..., R(<=T-1): the scores of the prefixes that end after each agent turn
    but the last (empty for a one-turn conversation); the last turn's prefix is the whole conversation,
    whose score is ``final_reward``. Returns T = len(prefix_scores) + 1 values that sum to ``final_reward``
    (exactly up to float rounding). Raises ValueError on a score that is not a finite number.
    """
    scores = [float(s) for s in prefix_scores] + [float(final_reward)]
    bad = [s for s in scores if not math.isfinite(s)]
    if bad:
        raise ValueError(f"redistribute: prefix scores and the final reward must be finite, got {bad[0]}")
    out, previous = [], 0.0
    for s in scores:
        out.append(s - previous)
        previous = s
    # rounding: make the sum exact by putting the float residue on the last turn
    out[-1] += float(final_reward) - math.fsum(out)
    return out
