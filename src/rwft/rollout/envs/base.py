"""The environment interface: tasks (contexts), a scripted user or teacher, a stopping rule, an outcome.

An environment is a small object with five methods; the collector drives many episodes of it in
lockstep. Episodes hold plain data (the messages so far plus the hidden task), so the scripted
policy of an environment, its judges and the writer all see the same thing.

- ``tasks(n, seed)``: ``n`` contexts, chosen deterministically from ``seed``.
- ``start(task)``: a new :class:`Episode` whose messages end with the user's / teacher's first turn.
- ``step(episode, action)``: append the agent's text, then the user's reply or end the episode.
- ``outcome(episode)``: the environment's own reward and the facts needed for eval (the gold answer,
  the final answer found, whether it was correct, the turns used); written into ``metadata``.
- ``scripted_action(episode, rng, skill)``: a rule-based agent turn of quality ``skill`` in [0, 1]
  (1 plays well, 0 plays badly); it may read the hidden task. For tests and bootstrapping pi_0.
- ``prefix_score(messages, metadata)`` (optional): the expected reward of a conversation cut after an
  agent turn, for turn-level credit (``rwft label --per-turn``); None (the default) when unknown.

Any agent text has a defined result: texts are cut to ``MAX_ACTION_CHARS`` (flagged in the outcome),
and text the environment cannot read (empty, another language, no final answer) gets a fixed reply
or counts as no answer; nothing raises.

Adaptive length (BRIEF paper 1): an environment whose agent decides when to stop discounts its
reward by ``gamma ** (agent turns - 1)``, so a correct answer reached sooner pays more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from rwft.errors import RwftError

MAX_ACTION_CHARS = 4000


@dataclass
class Task:
    """One context: a stable id, what the agent is shown, and what is hidden from it (gold answers)."""

    context_id: str
    data: dict[str, Any]


@dataclass
class Episode:
    """The state of one conversation in progress."""

    task: Task
    messages: list[dict[str, Any]]
    done: bool = False
    agent_turns: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    truncated_actions: int = 0
    tools: list[dict[str, Any]] | None = None
    """JSON schemas of the tools the agent may call (rendered to the policy, written as the record's ``tools``)"""

    def last_agent_text(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "assistant":
                return m["content"]
        return ""


class Environment(ABC):
    """Base class; subclasses set ``name`` and ``Options`` (a dataclass of their ``--env-args``)."""

    name: str = ""

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def tasks(self, n: int, seed: int) -> list[Task]: ...

    @abstractmethod
    def start(self, task: Task) -> Episode: ...

    @abstractmethod
    def step(self, episode: Episode, action: str) -> None: ...

    @abstractmethod
    def outcome(self, episode: Episode) -> dict[str, Any]:
        """At least ``reward`` (float) and ``turns`` (agent turns used)."""

    @abstractmethod
    def scripted_action(self, episode: Episode, rng: random.Random, skill: float) -> str: ...

    def prefix_score(self, messages: list[dict[str, Any]], metadata: dict[str, Any]) -> float | None:
        """The environment's estimate of the reward of a conversation cut after an agent turn, on the scale
        of ``outcome``'s reward, or None when the environment cannot tell (the default).

        ``messages`` end with the agent's turn; ``metadata`` is the logged record's (what ``outcome`` wrote,
        such as ``gold``). ``rwft label --per-turn --judge env`` redistributes the reward with it
        (``rwft.objectives.credit``). An environment that knows progress overrides this."""
        return None

    def add_agent_message(self, episode: Episode, action: str) -> str:
        """Append the agent's (possibly cut) text and count the turn; returns the text kept."""
        if not isinstance(action, str):
            action = "" if action is None else str(action)
        if len(action) > MAX_ACTION_CHARS:
            action = action[:MAX_ACTION_CHARS]
            episode.truncated_actions += 1
        episode.messages.append({"role": "assistant", "content": action})
        episode.agent_turns += 1
        return action


def stable_int(*parts: Any) -> int:
    """A 63-bit integer from the parts, the same in every process (unlike ``hash``)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def pick(items: list[Any], n: int, seed: int, what: str) -> list[Any]:
    """``n`` items in a seeded random order (without replacement)."""
    if n > len(items):
        raise RwftError(f"--contexts {n}: {what} has only {len(items)} tasks")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:n]]


_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower case, punctuation and articles removed, spaces squeezed (SQuAD-style answer matching)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return _WS.sub(" ", text).strip()


# ---------------------------------------------------------------- registry and --env-args parsing

_REGISTRY: dict[str, str] = {
    "mcqa": "rwft.rollout.envs.mcqa:MCQAEnv",
    "clarify": "rwft.rollout.envs.clarify:ClarifyEnv",
    "twenty-questions": "rwft.rollout.envs.twenty_questions:TwentyQuestionsEnv",
    "tod": "rwft.rollout.envs.tod:TodEnv",
}


def register(name: str, target: str) -> None:
    """Register an environment class by ``module:Class`` path (imported on first use)."""
    _REGISTRY[name] = target


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def env_class(name: str) -> type[Environment]:
    import importlib

    if name not in _REGISTRY:
        raise RwftError(f"--env {name!r}: unknown environment; known: {', '.join(env_names())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_options(cls: type[Environment], args: list[str] | dict[str, Any] | None) -> Any:
    """Build ``cls.Options`` from ``key=value`` strings (or a dict), converting to each field's type."""
    opts_cls = cls.Options
    fields = {f.name: f for f in dataclasses.fields(opts_cls)}
    values: dict[str, Any] = {}
    items = args.items() if isinstance(args, dict) else [_split_kv(a) for a in (args or [])]
    for key, raw in items:
        key = key.replace("-", "_")
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise RwftError(f"--env-args {key}: unknown option of env {cls.name!r}; known: {known}")
        default = fields[key].default
        try:
            values[key] = _convert(raw, default)
        except ValueError:
            raise RwftError(f"--env-args {key}={raw}: expected a {type(default).__name__}") from None
    options = opts_cls(**values)
    check = getattr(options, "check", None)
    if check:
        check()
    return options


def _split_kv(arg: str) -> tuple[str, str]:
    if "=" not in arg:
        raise RwftError(f"--env-args {arg!r}: expected key=value")
    k, v = arg.split("=", 1)
    return k.strip(), v.strip()


def _convert(raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def make_env(name: str, args: list[str] | dict[str, Any] | None = None) -> Environment:
    """An environment by registered name with its options from ``--env-args``."""
    cls = env_class(name)
    return cls(parse_options(cls, args))


def options_dict(env: Environment) -> dict[str, Any]:
    return dataclasses.asdict(env.options)
