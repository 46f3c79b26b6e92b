"""One logged conversation, and the checks that turn a raw record into one.

The record format is TRL's conversational format plus rewards::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "...",
                  "reward": 0.5}, ...],          # per-message reward optional (turn-level)
     "reward": 0.8,                             # the conversation's reward
     "context_id": "task-17",                   # optional: groups the samples of one task
     "id": "task-17/2",                         # optional
     "metadata": {...}}                         # optional, free, kept through every stage

TRL's prompt/completion form (``prompt`` and ``completion`` message lists) is accepted too and
joined into ``messages``. Every problem is reported with the place (``file:line``) and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rwft.errors import RwftError

STANDARD_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Conversation:
    """A conversation with its reward; ``messages`` keep any extra keys (such as a per-turn ``reward``)."""

    messages: list[dict[str, Any]]
    reward: float | None
    context_id: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def agent_turns(self, agent_role: str = "assistant") -> list[int]:
        """Indices of the agent's messages."""
        return [i for i, m in enumerate(self.messages) if m["role"] == agent_role]

    def turn_rewards(self, agent_role: str = "assistant") -> list[float]:
        """One reward per agent turn: each message reward is credited to the latest agent turn at or before
        it (an observation's reward belongs to the action that caused it). A conversation whose messages
        carry no reward gets its conversation reward on its last agent turn."""
        turns = self.agent_turns(agent_role)
        if not any("reward" in m for m in self.messages):
            return [0.0] * (len(turns) - 1) + [float(self.reward or 0.0)]
        out = [0.0] * len(turns)
        k = -1
        for m in self.messages:
            if m["role"] == agent_role:
                k += 1
            if "reward" in m and k >= 0:
                out[k] += float(m["reward"])
        return out

    def to_record(self) -> dict[str, Any]:
        """The record as written to JSONL (the same format it was read from)."""
        rec: dict[str, Any] = {"id": self.id, "context_id": self.context_id, "messages": self.messages}
        if self.reward is not None:
            rec["reward"] = self.reward
        rec["metadata"] = self.metadata
        return rec


def default_context_id(messages: list[dict[str, Any]], agent_role: str = "assistant") -> str:
    """A hash of the messages before the first agent turn: samples of the same task share it."""
    prefix = []
    for m in messages:
        if m["role"] == agent_role:
            break
        prefix.append([m["role"], m["content"]])
    return hashlib.sha1(json.dumps(prefix, ensure_ascii=False).encode()).hexdigest()[:16]


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RwftError(f"{where}: field '{name}': expected a finite number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise RwftError(f"{where}: field '{name}': expected a finite number, got {value}")
    return float(value)


def parse_conversation(
    obj: Any,
    where: str,
    index: int,
    agent_role: str = "assistant",
    require_reward: bool = True,
) -> Conversation:
    """Check one raw record and build a Conversation; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(obj, dict):
        raise RwftError(f"{where}: expected a JSON object (one conversation per line), got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
    elif "prompt" in obj and "completion" in obj:
        messages = obj["prompt"] + obj["completion"] if isinstance(obj["prompt"], list) else None
    else:
        raise RwftError(f"{where}: field 'messages': missing (expected a list of {{role, content}})")
    if not isinstance(messages, list) or not messages:
        raise RwftError(f"{where}: field 'messages': expected a non-empty list of {{role, content}} objects")
    roles = set(STANDARD_ROLES) | {agent_role}
    clean = []
    for i, m in enumerate(messages):
        name = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RwftError(f"{where}: field '{name}': expected an object with role and content")
        if "role" not in m or not isinstance(m["role"], str):
            raise RwftError(f"{where}: field '{name}.role': missing or not a string")
        if m["role"] not in roles:
            raise RwftError(
                f"{where}: field '{name}.role': unknown role {m['role']!r}; expected one of {sorted(roles)}"
            )
        if not isinstance(m.get("content"), str):
            got = "missing" if "content" not in m else json.dumps(m["content"])
            raise RwftError(f"{where}: field '{name}.content': expected a string, got {got}")
        msg = dict(m)
        if "reward" in m:
            if m["reward"] is None:
                del msg["reward"]
            else:
                msg["reward"] = _number(m["reward"], where, f"{name}.reward")
        clean.append(msg)
    if not any(m["role"] == agent_role for m in clean):
        raise RwftError(f"{where}: field 'messages': no agent turn (no message with role {agent_role!r})")
    reward = obj.get("reward")
    if reward is None:
        if require_reward:
            got = "missing" if "reward" not in obj else "null"
            raise RwftError(f"{where}: field 'reward': expected a finite number, got {got}")
    else:
        reward = _number(reward, where, "reward")
    context_id = obj.get("context_id")
    context_id = default_context_id(clean, agent_role) if context_id is None else str(context_id)
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RwftError(f"{where}: field 'metadata': expected an object, got {type(metadata).__name__}")
    cid = obj.get("id")
    return Conversation(clean, reward, context_id, str(index) if cid is None else str(cid), metadata)
