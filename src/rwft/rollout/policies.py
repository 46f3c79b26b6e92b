"""Policies that write the agent's turns, and ``make_policy``, which builds one from its command-line name.

Every policy answers a batch at once: ``act(episodes, temperatures, seeds)`` returns one text per
episode. ``seeds[i]`` is derived by the collector from (seed, context, sample, turn), and each policy
uses it so that an episode's text does not depend on which other episodes share its batch:

- ``HFPolicy`` (``rollout.hf_policy``): a Hugging Face causal LM, batched, continuing from the KV cache.
- ``QSFTPolicy`` (``rollout.qsft_policy``): an ``HFPolicy`` acting with a Q-SFT run's policy extraction.
- ``OpenAIPolicy`` (``rollout.http_policy``): an OpenAI-compatible chat-completions endpoint.
- ``ScriptedPolicy``: the environment's rule-based agent with a skill in [0, 1], or ``mixed`` (a
  skill drawn per episode), seeded by ``random.Random(seed)``.

``make_policy(spec)``: ``scripted``, ``scripted:0.4``, ``scripted:mixed``, ``http(s)://host/v1``
(needs ``api_model``), a Q-SFT run directory (it holds ``qsft.json``) for ``QSFTPolicy``, or a preset
name / model directory / hub id for ``HFPolicy``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, stable_int
from rwft.rollout.hf_policy import HFPolicy
from rwft.rollout.http_policy import OpenAIPolicy


class Policy(Protocol):
    name: str

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]: ...


class ScriptedPolicy:
    """The environment's scripted agent; ``skill`` None means a skill drawn uniformly per episode."""

    def __init__(self, env: Environment, skill: float | None = 1.0):
        if skill is not None and not 0.0 <= skill <= 1.0:
            raise RwftError(f"--policy scripted:{skill}: the skill must lie in [0, 1]")
        self.env = env
        self.skill = skill
        self.name = "scripted:mixed" if skill is None else f"scripted:{skill:g}"

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        out = []
        for ep, seed in zip(episodes, seeds, strict=True):
            if "_skill" not in ep.state:
                # an independent stream: the turn's own rng must not repeat the skill draw
                mixed = random.Random(stable_int("skill", seed)).random()
                ep.state["_skill"] = mixed if self.skill is None else self.skill
            out.append(self.env.scripted_action(ep, random.Random(seed), ep.state["_skill"]))
        return out


def make_policy(spec: str, env: Environment | None = None, max_new_tokens: int = 64, api_model: str = "",
                api_key_env: str = "OPENAI_API_KEY", qsft_beta: float = 0.0) -> Any:
    """A policy from its command-line name (see the module docstring); ``qsft_beta`` > 0 overrides a Q-SFT
    run's acting beta."""
    if spec == "scripted" or spec.startswith("scripted:"):
        if env is None:
            raise RwftError(f"--policy {spec}: a scripted policy needs an environment")
        arg = spec.partition(":")[2] or "1"
        if arg == "mixed":
            return ScriptedPolicy(env, None)
        try:
            return ScriptedPolicy(env, float(arg))
        except ValueError:
            raise RwftError(f"--policy {spec}: expected scripted, scripted:SKILL (0-1) or scripted:mixed") from None
    if spec.startswith(("http://", "https://")):
        return OpenAIPolicy(spec, api_model, api_key_env, max_new_tokens)
    if (Path(spec).expanduser() / "qsft.json").is_file():
        from rwft.rollout.qsft_policy import QSFTPolicy  # torch and transformers load here, not on import

        return QSFTPolicy(str(Path(spec).expanduser()), max_new_tokens, qsft_beta)
    return HFPolicy(spec, max_new_tokens)


def turn_seed(seed: int, context_id: str, sample: int, turn: int, what: str = "policy") -> int:
    """The seed of one generation: a function of (seed, context, sample, turn) only."""
    return stable_int(what, seed, context_id, sample, turn)
