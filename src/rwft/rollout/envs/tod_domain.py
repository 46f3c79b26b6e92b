"""The procedural booking domain of ``tod``: its database, tools, goals and scripted user.

A task is a small restaurant database (``places`` rows of name, area, food and price drawn from closed
vocabularies), a user goal and the slots the user states in the opening turn. The goal holds the three
constraint slots (area, food, price; each a value or ``any``, the user does not care) and ``people``,
the party size of the booking the user wants; the goal's constraints are those of one row, so a place
that meets them always exists.

**Dialogue state and delexicalized acts.** The environment tracks what the user has said (``said``: the
slot values of its messages, ``stated_slots``) and the agent's last search results. As in delexicalized
task-oriented dialogue (MultiWOZ's ``[restaurant_name]``), the agent may leave values to them: a tool
argument it leaves out takes the user's value (a place: the first place of its last search; a party size
never said: ``DEFAULT_PEOPLE``), and ``[name]`` in its text is that first place. So a policy can act at
the level of dialogue acts (ask for a slot, search, offer, book, confirm) without copying words; a value
it writes itself is used as written.

Tools (JSON schemas in ``TOOLS``), run against the episode's own copy of the database:

- ``search(area?, food?, price?)``: the names of the places that match every slot (``any`` or a slot
  neither given nor said matches all), as a JSON list, in database order;
- ``lookup(name?)``: the place's row;
- ``book(name?, people?)``: adds ``{"name", "people"}`` to the copy's ``bookings`` (one booking per
  episode; a second one is refused) and returns ``{"booked", "people"}``.

A call whose tool is unknown or whose arguments break the tool's schema (a key it does not take, a value
of the wrong type) is *invalid*: its result is ``{"error": ...}``. A valid call can still fail (no place
of that name or no search yet, a party size outside 1 to 8, already booked): also an ``{"error": ...}``
result, but not an invalid call. A search value outside the domain's vocabulary is valid and matches
nothing.

The scripted user reads the agent's message to it (a turn without tool calls), first rule that applies:

1. a booking exists: "Thank you, bye." and the episode ends;
2. the text names exactly one place of the database (by name, or ``[name]``): an offer. It is accepted
   ("Yes, book it.") when the place meets every constraint of the goal, else rejected with the first slot
   it gets wrong ("No, I want fish food."); naming several places gets "One place, please.";
3. the text mentions slots (area / where, food / eat, price / cheap / expensive, people / many): the goal's
   values of those slots, in the order area, food, price, people ("I want north area and any food.");
4. anything else: "I do not know."
"""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any

ANY = "any"
AREAS = ("north", "south", "east", "west")
FOODS = ("fish", "meat", "rice", "soup")
PRICES = ("cheap", "expensive")
CONSTRAINTS: dict[str, tuple[str, ...]] = {"area": AREAS, "food": FOODS, "price": PRICES}
SLOTS = ("area", "food", "price", "people")
"""The goal's slots, in the order the user states them."""
NAMES = ("star", "moon", "sun", "rock", "wind", "fire", "snow", "rain", "iron", "sky")
"""Place names: one token each for the tiny preset's tokenizer, with or without a leading space."""
MAX_PEOPLE = 8
DEFAULT_PEOPLE = 2
"""The party size of a booking whose size the agent leaves out before the user has said one."""
PLACE = "[name]"
"""In the agent's text: the first place of its last search."""

ACCEPT = "Yes, book it."
BYE = "Thank you, bye."
UNKNOWN = "I do not know."
ONE_PLACE = "One place, please."


def _tool(name: str, properties: dict[str, str]) -> dict[str, Any]:
    props = {k: {"type": t} for k, t in properties.items()}
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": props}}}


TOOLS: list[dict[str, Any]] = [
    _tool("search", {"area": "string", "food": "string", "price": "string"}),
    _tool("lookup", {"name": "string"}),
    _tool("book", {"name": "string", "people": "integer"}),
]
"""The tools' JSON schemas, kept short: the tiny preset's tokenizer spends about 100 tokens on each."""
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

_ASKS = {
    "area": re.compile(r"\b(?:areas?|where|part)\b"),
    "food": re.compile(r"\b(?:foods?|eat|cuisine)\b"),
    "price": re.compile(r"\b(?:prices?|cheap|expensive|budget|cost)\b"),
    "people": re.compile(r"\b(?:people|persons|guests|many)\b"),
}
_STATED = re.compile(r"\b(\w+) (area|food|price|people)\b")
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


# ---------------------------------------------------------------- tasks


def make_task(rng: random.Random, places: int, any_rate: float, told_rate: float) -> dict[str, Any]:
    """A database of ``places`` rows, a goal met by one of them, and the slots the opening states."""
    rows = [{"name": n, "area": rng.choice(AREAS), "food": rng.choice(FOODS), "price": rng.choice(PRICES)}
            for n in rng.sample(NAMES, places)]
    target = rng.choice(rows)
    goal: dict[str, Any] = {s: ANY if rng.random() < any_rate else target[s] for s in CONSTRAINTS}
    goal["people"] = rng.randint(1, 6)
    told = [s for s in SLOTS if rng.random() < told_rate]
    return {"db": {"places": rows, "bookings": []}, "goal": goal, "told": told}


def meets(place: dict[str, Any], goal: dict[str, Any]) -> bool:
    """Whether a place meets every constraint of the goal (``any`` is met by every value)."""
    return all(goal[s] in (ANY, place[s]) for s in CONSTRAINTS)


def find(db: dict[str, Any], name: Any) -> dict[str, Any] | None:
    return next((p for p in db["places"] if p["name"] == name), None)


def copy_db(db: dict[str, Any]) -> dict[str, Any]:
    """The episode's own copy (tools never touch the task's database)."""
    return copy.deepcopy(db)


# ---------------------------------------------------------------- tools


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]] | None]:
    """``(content, calls)`` of an agent's text: the text before the first ``<tool_call>`` (stripped) and each
    block's ``{"name", "arguments"}``; ``calls`` is None when a block is malformed (not closed, not a JSON
    object, no string ``name``, ``arguments`` not an object) and ``[]`` when there is no block. Text after
    the last block is dropped. A missing ``arguments`` is ``{}``."""
    opened = text.count("<tool_call>")
    if not opened:
        return text.strip(), []
    blocks = _CALL.findall(text)
    if len(blocks) != opened:
        return text.strip(), None
    calls = []
    for block in blocks:
        try:
            obj = json.loads(block)
        except ValueError:
            return text.strip(), None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return text.strip(), None
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            return text.strip(), None
        calls.append({"name": obj["name"], "arguments": args})
    return text[: text.index("<tool_call>")].strip(), calls


def check_arguments(schema: dict[str, Any], args: dict[str, Any]) -> str | None:
    """Why ``args`` break an object schema (no keys but its properties, values of the property's type,
    string or integer), or None when they fit."""
    props = schema["properties"]
    for key, value in args.items():
        if key not in props:
            return f"unknown argument {key!r}"
        if props[key]["type"] == "string" and not isinstance(value, str):
            return f"{key} must be a string"
        if props[key]["type"] == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key} must be an integer"
    return None


def resolve(name: str, args: dict[str, Any], said: dict[str, Any], first: str | None) -> dict[str, Any]:
    """The call's arguments with the ones left out filled in: a slot from what the user said, a place with
    ``first`` (the first place of the last search; left out when there is none), a party size from what
    the user said, else ``DEFAULT_PEOPLE``."""
    filled = dict(args)
    if name == "search":
        filled.update({s: said[s] for s in CONSTRAINTS if s in said and s not in args})
        return filled
    if "name" not in filled and first is not None:
        filled["name"] = first
    if name == "book" and "people" not in filled:
        filled["people"] = said.get("people", DEFAULT_PEOPLE)
    return filled


def run_tool(db: dict[str, Any], name: str, args: dict[str, Any]) -> tuple[dict[str, Any] | list[str], bool]:
    """Execute one call with its resolved arguments against ``db`` (changed in place by ``book``):
    ``(result, valid)``."""
    if name not in SCHEMAS:
        return {"error": f"unknown tool {name!r}"}, False
    problem = check_arguments(SCHEMAS[name], args)
    if problem:
        return {"error": problem}, False
    if name == "search":
        return [p["name"] for p in db["places"] if all(args.get(s, ANY) in (ANY, p[s]) for s in CONSTRAINTS)], True
    if "name" not in args:
        return {"error": "no place given and no search yet"}, True
    place = find(db, args["name"])
    if place is None:
        return {"error": f"no place named {args['name']!r}"}, True
    if name == "lookup":
        return dict(place), True
    if db["bookings"]:
        return {"error": "already booked"}, True
    if not 1 <= args["people"] <= MAX_PEOPLE:
        return {"error": f"people must be 1 to {MAX_PEOPLE}"}, True
    db["bookings"].append({"name": place["name"], "people": args["people"]})
    return {"booked": place["name"], "people": args["people"]}, True


# ---------------------------------------------------------------- the scripted user


def state(goal: dict[str, Any], slots: list[str]) -> str:
    """The user stating the goal's values of ``slots``: "I want north area and 4 people." """
    return "I want " + " and ".join(f"{goal[s]} {s}" for s in SLOTS if s in slots) + "."


def opening(goal: dict[str, Any], told: list[str]) -> str:
    return "Book a table." + (" " + state(goal, told) if told else "")


def stated_slots(text: str) -> dict[str, Any]:
    """The slot values a user message states ("north area", "any food", "4 people")."""
    out: dict[str, Any] = {}
    for value, slot in _STATED.findall(text):
        if slot == "people":
            if value.isdigit():
                out[slot] = int(value)
        elif value == ANY or value in CONSTRAINTS[slot]:
            out[slot] = value
    return out


def named_places(db: dict[str, Any], text: str, first: str | None) -> list[str]:
    """The database's places the text names, in order of first mention; ``[name]`` stands for ``first``."""
    names = {p["name"] for p in db["places"]}
    words = re.findall(r"\[name\]|\w+", text.lower())
    found = (first if w == PLACE else w for w in words)
    return list(dict.fromkeys(w for w in found if w in names))


def user_reply(goal: dict[str, Any], db: dict[str, Any], text: str, first: str | None) -> tuple[str, str | None, bool]:
    """The user's reply to the agent's message ``text`` (the module docstring's rules), ``first`` being the
    first place of the agent's last search: ``(reply, offered place or None, episode over)``."""
    if db["bookings"]:
        return BYE, None, True
    names = named_places(db, text, first)
    if len(names) > 1:
        return ONE_PLACE, None, False
    if names:
        place = find(db, names[0])
        wrong = [s for s in CONSTRAINTS if goal[s] not in (ANY, place[s])]
        return (ACCEPT if not wrong else "No, " + state(goal, wrong[:1])), names[0], False
    low = text.lower()
    asked = [s for s in SLOTS if _ASKS[s].search(low)]
    return (state(goal, asked) if asked else UNKNOWN), None, False
