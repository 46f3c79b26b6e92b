"""One logged conversation, and the checks that turn a raw record into one.

The record format is TRL's conversational format plus rewards::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "...",
                  "reward": 0.5}, ...],          # per-message reward optional (turn-level)
     "reward": 0.8,                             # the conversation's reward
     "context_id": "task-17",                   # optional: groups the samples of one task
     "id": "task-17/2",                         # optional
     "tools": [{"type": "function", "function": {...}}],   # optional: JSON schemas of the agent's tools
     "metadata": {...}}                         # optional, free, kept through every stage

Messages may carry, as in OpenAI's chat and fine-tuning formats:

- ``tool_calls`` on an agent message: a list of ``{"type": "function", "id"?: str, "function": {"name":
  str, "arguments": str | object}}`` (the flat ``{"name", "arguments"}`` form is accepted and stored in
  this shape); the content may then be null, missing or "" (stored as "").
- ``tool`` messages: the result of a call (content a string; ``tool_call_id`` and ``name`` optional).
  They are observations, never trained.
- ``spans`` on an agent message: error spans ``[{"start": int, "end": int, "severity": "minor" | "major" |
  "critical"}]``, character offsets ``[start, end)`` into the message's *span text* (``span_text``: the
  content, then, when it calls tools, a newline if there is content and the calls in the Hermes/Qwen
  ``<tool_call>`` text form of ``data.chat_template.tool_calls_text``), with 0 <= start < end <= its length,
  sorted or not but never overlapping. ``data.encode`` turns them into per-token penalties.
- ``weight`` on an agent message: 0 leaves that turn out of training (it still counts in the turn
  numbering), 1 or absent trains it; any other value is an error. On other messages only 0 and 1 are
  accepted and they change nothing (other messages are never trained).

Other formats accepted and turned into ``messages``:

- TRL's prompt/completion: conversational (``prompt`` and ``completion`` message lists, joined) or
  standard (``prompt`` and ``completion`` strings: a user message and an agent message).
- ShareGPT: ``conversations``, a list of ``{"from": ..., "value": ...}``, with optional top-level
  ``system`` (a string, prepended as a system message) and ``tools`` (a list, or a JSON string of
  one, as LLaMA-Factory writes it). ``from`` maps: human/user -> user; gpt/assistant/model/chatgpt ->
  the agent role (assistant by default); system -> system; observation/tool/function_response/ipython
  -> tool; function_call -> an agent message whose ``value`` is a JSON tool call ``{"name",
  "arguments"}`` (or a list of them), stored as ``tool_calls`` with empty content. Other keys of a
  turn (``reward``, ``weight``) are kept.

Every problem is reported with the place (``file:line``) and the field, named as in the record
(``messages[3].content``, ``conversations[2].value``, ``completion``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError

STANDARD_ROLES = ("system", "developer", "user", "assistant", "tool")
SEVERITIES = ("minor", "major", "critical")
"""The severities of an error span (MQM's, as xCOMET marks them)."""


@dataclass
class Conversation:
    """A conversation with its reward; ``messages`` keep any extra keys (such as a per-turn ``reward``)."""

    messages: list[dict[str, Any]]
    reward: float | None
    context_id: str
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None  # JSON schemas of the tools the agent may call

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
        """The record as written to JSONL (rwft's ``messages`` format, whatever format it was read from)."""
        rec: dict[str, Any] = {"id": self.id, "context_id": self.context_id, "messages": self.messages}
        if self.reward is not None:
            rec["reward"] = self.reward
        if self.tools is not None:
            rec["tools"] = self.tools
        rec["metadata"] = self.metadata
        return rec


def default_context_id(messages: list[dict[str, Any]], agent_role: str = "assistant") -> str:
    """A hash of the messages before the first agent turn: samples of the same task share it."""
    prefix = []
    for m in messages:
        if m["role"] == agent_role:
            break
        prefix.append([m["role"], m.get("content") or ""])
    return hashlib.sha1(json.dumps(prefix, ensure_ascii=False).encode()).hexdigest()[:16]


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RwftError(f"{where}: field '{name}': expected a finite number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise RwftError(f"{where}: field '{name}': expected a finite number, got {value}")
    return float(value)



def span_text(message: dict[str, Any]) -> str:
    """The text a message's ``spans`` index: its content, then its tool calls as ``tool_calls_text`` writes them
    (after a newline when there is content), as the agent wrote them in rwft's environments."""
    content, calls = message.get("content") or "", message.get("tool_calls") or []
    if not calls:
        return content
    text = tool_calls_text(calls)
    return content + "\n" + text if content else text


def _spans(value: Any, text: str, where: str, name: str) -> list[dict[str, Any]]:
    """Check a message's error spans against its span text; returned sorted by start."""
    shape = '[{"start": 0, "end": 5, "severity": "major"}, ...]'
    if not isinstance(value, list):
        raise RwftError(f"{where}: field '{name}': expected a list of error spans {shape}, got {_show(value)}")
    out = []
    for s, span in enumerate(value):
        sn = f"{name}[{s}]"
        if not isinstance(span, dict):
            raise RwftError(f"{where}: field '{sn}': expected an object {{start, end, severity}}, got {_show(span)}")
        for key in ("start", "end"):
            v = span.get(key)
            if isinstance(v, bool) or not isinstance(v, int):
                got = "missing" if key not in span else _show(v)
                raise RwftError(f"{where}: field '{sn}.{key}': expected an integer character offset, got {got}")
        start, end, severity = span["start"], span["end"], span.get("severity")
        if not 0 <= start < end <= len(text):
            raise RwftError(f"{where}: field '{sn}': span [{start}, {end}) is empty or outside the message's text "
                            f"of {len(text)} characters (expected 0 <= start < end <= {len(text)})")
        if severity not in SEVERITIES:
            raise RwftError(f"{where}: field '{sn}.severity': expected one of {', '.join(SEVERITIES)}, "
                            f"got {'missing' if 'severity' not in span else _show(severity)}")
        out.append(({"start": start, "end": end, "severity": severity}, s))
    out.sort(key=lambda x: x[0]["start"])
    for (a, i), (b, j) in zip(out, out[1:], strict=False):
        if b["start"] < a["end"]:
            raise RwftError(f"{where}: field '{name}[{j}]': span [{b['start']}, {b['end']}) overlaps "
                            f"{name}[{i}] [{a['start']}, {a['end']})")
    return [span for span, _ in out]


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _tools(value: Any, where: str, name: str = "tools") -> list[dict[str, Any]] | None:
    """The conversation's tool schemas: a list of objects (or a JSON string of one, as LLaMA-Factory writes)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise RwftError(f"{where}: field '{name}': expected a list of tool schemas, got a string "
                            f"that is not JSON: {_show(value)}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RwftError(f"{where}: field '{name}': expected a list of tool schemas (JSON objects such as "
                        f'{{"type": "function", "function": {{"name": ..., "parameters": ...}}}}), got {_show(value)}')
    return value or None


def _tool_calls(calls: Any, where: str, name: str) -> list[dict[str, Any]]:
    """Check tool calls and store them in OpenAI's shape {"type": "function", "id"?, "function": {name, arguments}}."""
    shape = '{"type": "function", "function": {"name": ..., "arguments": ...}}'
    if not isinstance(calls, list):
        raise RwftError(f"{where}: field '{name}': expected a list of tool calls {shape}, got {_show(calls)}")
    out = []
    for c, call in enumerate(calls):
        cn = f"{name}[{c}]"
        if not isinstance(call, dict):
            raise RwftError(f"{where}: field '{cn}': expected a tool call {shape}, got {_show(call)}")
        if call.get("type", "function") != "function":
            raise RwftError(f"{where}: field '{cn}.type': only \"function\" tool calls are supported, "
                            f"got {_show(call.get('type'))}")
        if "function" in call:
            fn, fname = call["function"], f"{cn}.function"
            if not isinstance(fn, dict):
                raise RwftError(f"{where}: field '{fname}': expected an object {{name, arguments}}, got {_show(fn)}")
        elif "name" in call:  # the flat {"name", "arguments"} form
            fn, fname = call, cn
        else:
            raise RwftError(f"{where}: field '{cn}': expected a tool call {shape}, got {_show(call)}")
        fn_name = fn.get("name")
        if not isinstance(fn_name, str) or not fn_name:
            raise RwftError(f"{where}: field '{fname}.name': expected a non-empty string, got "
                            f"{'missing' if 'name' not in fn else _show(fn_name)}")
        args = fn.get("arguments")
        if not isinstance(args, (str, dict)):
            got = "missing" if "arguments" not in fn else _show(args)
            raise RwftError(f"{where}: field '{fname}.arguments': expected a JSON string or an object, got {got}")
        item: dict[str, Any] = {"type": "function", "function": {"name": fn_name, "arguments": args}}
        if call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise RwftError(f"{where}: field '{cn}.id': expected a string, got {_show(call['id'])}")
            item["id"] = call["id"]
        out.append(item)
    return out


AGENT = object()  # stands for the agent role in the ShareGPT mapping
SHAREGPT_ROLES: dict[str, Any] = {
    "human": "user", "user": "user",
    "gpt": AGENT, "assistant": AGENT, "model": AGENT, "chatgpt": AGENT,
    "system": "system",
    "observation": "tool", "tool": "tool", "function_response": "tool", "ipython": "tool",
    "function_call": AGENT,  # value: a JSON tool call, stored as tool_calls
}


def _namer(prefix: str, alias: dict[str, str] | None = None):
    """Names a message's fields as the record spells them: ``messages[3].content``, ``conversations[2].value``."""
    alias = alias or {}

    def name(fld: str = "") -> str:
        fld = alias.get(fld, fld)
        return prefix if not fld else f"{prefix}.{fld}" if prefix else fld

    return name


def _sharegpt(obj: dict, where: str, agent_role: str) -> list[tuple[Any, Any]]:
    turns = obj["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RwftError(f"{where}: field 'conversations': expected a non-empty list of {{from, value}} objects")
    out: list[tuple[Any, Any]] = []
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RwftError(f"{where}: field 'system': expected a string, got {_show(system)}")
        if system:
            out.append(({"role": "system", "content": system}, _namer("", {"content": "system", "role": "system"})))
    alias = {"role": "from", "content": "value"}
    for j, turn in enumerate(turns):
        name = f"conversations[{j}]"
        if not isinstance(turn, dict):
            raise RwftError(f"{where}: field '{name}': expected an object with from and value")
        frm = turn.get("from")
        if not isinstance(frm, str):
            raise RwftError(f"{where}: field '{name}.from': missing or not a string")
        role = SHAREGPT_ROLES.get(frm)
        if role is None:
            raise RwftError(f"{where}: field '{name}.from': unknown speaker {frm!r}; expected one of "
                            f"{sorted(SHAREGPT_ROLES)}")
        msg = {k: v for k, v in turn.items() if k not in ("from", "value")}
        msg["role"] = agent_role if role is AGENT else role
        value = turn.get("value")
        if frm == "function_call":
            calls = value
            if isinstance(value, str):
                try:
                    calls = json.loads(value)
                except ValueError:
                    calls = None
            if isinstance(calls, dict):
                calls = [calls]
            if not isinstance(calls, list):
                raise RwftError(f"{where}: field '{name}.value': expected a JSON tool call "
                                f'{{"name": ..., "arguments": ...}} (or a list of them), got {_show(value)}')
            msg.update(content="", tool_calls=calls)
            out.append((msg, _namer(name, {**alias, "tool_calls": "value"})))
        else:
            if "value" in turn:
                msg["content"] = value
            out.append((msg, _namer(name, alias)))
    return out


def _raw_messages(obj: dict, where: str, agent_role: str) -> list[tuple[Any, Any]]:
    """The record's messages, each with the namer of its fields, from any accepted format."""
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise RwftError(f"{where}: field 'messages': expected a non-empty list of {{role, content}} objects")
        return [(m, _namer(f"messages[{i}]")) for i, m in enumerate(messages)]
    if "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):  # TRL's standard (text) form
            return [({"role": "user", "content": prompt}, _namer("", {"content": "prompt", "role": "prompt"})),
                    ({"role": agent_role, "content": completion},
                     _namer("", {"content": "completion", "role": "completion"}))]
        if isinstance(prompt, list) and isinstance(completion, list):
            return [(m, _namer(f"prompt[{i}]")) for i, m in enumerate(prompt)] + [
                (m, _namer(f"completion[{i}]")) for i, m in enumerate(completion)]
        raise RwftError(f"{where}: field 'prompt': expected 'prompt' and 'completion' both strings or both "
                        f"lists of messages, got {type(prompt).__name__} and {type(completion).__name__}")
    if "conversations" in obj:
        return _sharegpt(obj, where, agent_role)
    raise RwftError(f"{where}: field 'messages': missing (expected a list of {{role, content}}, TRL's "
                    "prompt/completion, or ShareGPT's conversations)")


def _message(m: Any, name, where: str, agent_role: str, roles: set[str]) -> dict[str, Any]:
    """Check one message and return its clean copy."""
    if not isinstance(m, dict):
        raise RwftError(f"{where}: field '{name()}': expected an object with role and content")
    if "role" not in m or not isinstance(m["role"], str):
        raise RwftError(f"{where}: field '{name('role')}': missing or not a string")
    role = m["role"]
    if role not in roles:
        raise RwftError(f"{where}: field '{name('role')}': unknown role {role!r}; expected one of {sorted(roles)}")
    msg = dict(m)
    for key in ("reward", "weight", "tool_calls", "tool_call_id", "name", "spans"):  # null = absent (Arrow fills gaps)
        if key in msg and msg[key] is None:
            del msg[key]
    if "tool_calls" in msg:
        if role not in (agent_role, "assistant"):
            raise RwftError(f"{where}: field '{name('tool_calls')}': tool calls are only allowed on agent "
                            f"messages (role {agent_role!r}), not on a {role!r} message")
        calls = _tool_calls(msg["tool_calls"], where, name("tool_calls"))
        if calls:
            msg["tool_calls"] = calls
        else:
            del msg["tool_calls"]
    if "tool_calls" in msg and msg.get("content") is None:
        msg["content"] = ""  # a turn that only calls tools
    if not isinstance(msg.get("content"), str):
        got = "missing" if "content" not in m else _show(m["content"])
        raise RwftError(f"{where}: field '{name('content')}': expected a string, got {got}")
    for key in ("tool_call_id", "name"):
        if key in msg and not isinstance(msg[key], str):
            raise RwftError(f"{where}: field '{name(key)}': expected a string, got {_show(msg[key])}")
    if "reward" in msg:
        msg["reward"] = _number(msg["reward"], where, name("reward"))
    if "spans" in msg:
        if role != agent_role:
            raise RwftError(f"{where}: field '{name('spans')}': error spans are only allowed on agent messages "
                            f"(role {agent_role!r}), not on a {role!r} message")
        msg["spans"] = _spans(msg["spans"], span_text(msg), where, name("spans"))
        if not msg["spans"]:
            del msg["spans"]
    if "weight" in msg:
        w = msg["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w not in (0, 1):
            raise RwftError(f"{where}: field '{name('weight')}': expected 0 (leave this turn out of training) "
                            f"or 1 (train it), got {_show(w)}")
        msg["weight"] = int(w)
    return msg


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
    roles = set(STANDARD_ROLES) | {agent_role}
    clean = [_message(m, name, where, agent_role, roles) for m, name in _raw_messages(obj, where, agent_role)]
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
    tools = _tools(obj.get("tools"), where)
    cid = obj.get("id")
    return Conversation(clean, reward, context_id, str(index) if cid is None else str(cid), metadata, tools)
