"""Every objective rwft knows, one entry each: the one list that the CLI, the data layer, the trainers,
``rwft iterate`` and ``rwft compare`` read.

Adding a weighted objective is a weight function (``objectives/weights.py``, numpy over one reward per
conversation and its context id) and one entry here; ``rwft train --objective NAME``, ``rwft compare``'s
method list and, with ``online=True``, ``rwft iterate`` take it from then on. An objective with a loss of its
own names its trainer (``train.TRAINERS`` maps the name to the trainer's recipe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rwft.objectives.weights import filtered_weights, refit_weights, reward_to_go, sft_weights, swift_weights

Trainer = Literal["weighted", "distill", "qsft", "dpo", "online"]


@dataclass(frozen=True)
class Objective:
    """One objective: what it computes, which trainer runs it, which rewards it accepts."""

    name: str
    help: str
    trainer: Trainer = "weighted"
    """weighted: ``weighted_nll`` with ``weights``; distill / qsft / dpo: a trainer of its own (``rwft dpo`` for
    dpo); online: only ``rwft iterate`` runs it."""
    weights: Callable[..., np.ndarray] | None = None
    """Per conversation ``weights(rewards, groups, **options)``; with ``turn_level``, per agent turn
    ``weights(turn_rewards, offsets=..., **options)`` over the flat turn rewards."""
    turn_level: bool = False
    options: tuple[str, ...] = ()
    """The config fields (of ``rwft train``) the weight function takes as keyword arguments."""
    reward_range: tuple[float, float] = (-math.inf, math.inf)
    """Conversation rewards (Q-SFT: returns) it accepts; others are refused before anything is written."""
    offline: bool = True
    """Trained from logs by ``rwft train`` / ``rwft dpo`` and a method of ``rwft compare``."""
    online: bool = False
    """An objective of ``rwft iterate``."""
    method: str = ""
    """Its row name in ``rwft compare`` (default: the name)."""
    turn_credit: bool = False
    """``rwft compare`` trains it on the logs with turn rewards by redistribution (``rwft label --per-turn``)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Config values the objective fixes in its trainer's config (``rwft dpo``'s level)."""

    @property
    def row(self) -> str:
        return self.method or self.name

    def accepts(self, reward: float) -> bool:
        lo, hi = self.reward_range
        return lo <= reward <= hi

    def range_text(self) -> str:
        lo, hi = self.reward_range
        return f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"


OBJECTIVES: dict[str, Objective] = {o.name: o for o in [
    Objective("sft", "behaviour cloning: weight 1", weights=sft_weights),
    Objective("filtered", "STaR-GATE: 1 for the top-k of each context (--top-k) or r >= --threshold, else 0",
              weights=filtered_weights, options=("top_k", "threshold"), method="star-gate"),
    Objective("refit", "Refit: weight r", weights=refit_weights, reward_range=(0.0, math.inf), online=True),
    Objective("swift", "Swift: (r - context mean) / context std", weights=swift_weights, online=True),
    Objective("per-turn", "the agent turn's discounted reward-to-go (--gamma) of message-level rewards",
              weights=reward_to_go, turn_level=True, options=("gamma",), turn_credit=True),
    Objective("star-gate-d", "STaR-GATE plus distillation toward pi_0 (--distill-weight, --distill-temperature)",
              trainer="distill", weights=filtered_weights, options=("top_k", "threshold")),
    Objective("qsft", "Q-SFT: Q-learning as weighted cross-entropy (behaviour policy, Polyak target)",
              trainer="qsft", reward_range=(0.0, 1.0)),
    Objective("dpo", "DPO on the final answer (rwft dpo --level final; online: a pair per prompt)",
              trainer="dpo", online=True, settings={"level": "final"}),
    Objective("stepdpo", "StepDPO: DPO per agent turn (rwft dpo --level step)", trainer="dpo",
              settings={"level": "step"}),
    Objective("grpo", "GRPO: group-relative advantages, clipped ratio and KL to the reference",
              trainer="online", offline=False, online=True),
]}


def names(trainers: tuple[str, ...] | None = None, online: bool | None = None, offline: bool | None = None
          ) -> tuple[str, ...]:
    """The objectives' names, optionally only those with one of ``trainers`` / that run online / offline."""
    return tuple(o.name for o in OBJECTIVES.values()
                 if (trainers is None or o.trainer in trainers)
                 and (online is None or o.online == online) and (offline is None or o.offline == offline))


def get(name: str, **only: Any) -> Objective:
    """The entry of ``name``; ``only`` as for ``names`` (a ValueError lists the accepted names)."""
    allowed = names(**only)
    if name not in allowed:
        raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(allowed)}")
    return OBJECTIVES[name]


def describe(chosen: tuple[str, ...]) -> str:
    """One line per objective for a help text: ``name: help``."""
    return "; ".join(f"{n}: {OBJECTIVES[n].help}" for n in chosen)
