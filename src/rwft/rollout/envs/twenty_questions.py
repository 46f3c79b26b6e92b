"""``twenty-questions``: the LMRL-Gym-style game (BRIEF paper 2) with a programmatic oracle.

The oracle holds a hidden object from an attribute table. Each agent turn is one of:

- a guess: "Is it a dog?", "My guess is dog", or just "dog" (exactly one object named after a guess
  phrase, or the whole turn) -> "Yes! You guessed it." ends the game, otherwise "No.";
- a yes/no question about exactly one attribute (keywords below) -> "Yes." or "No.";
- anything else (empty, another language, two attributes at once, very long text that names many)
  -> the fixed reply ``UNCLEAR``; it still costs the turn.

Reward -1 per agent turn (also written on each agent message as a per-turn reward), horizon 20: a win
at turn k scores -k, no win scores -20. ``reward=unit`` rescales it to [0, 1] for the objectives that need
rewards there (Refit, Q-SFT): 1 + (the turns reward) / horizon = 1 - k / horizon for a win at turn k, 0
without a win, with no per-message rewards (an affine map, so Swift's and filtered BC's weights are
unchanged, and ``prefix_score`` maps the same way). ``prefix_score`` rates a game in progress by the candidates left
(for ``rwft label --per-turn``; see there).

The scripted agent tracks the candidates consistent with the replies. A good turn (probability
``skill``) asks the question that splits them most evenly, or guesses them in turn once ``GUESS_AT``
or fewer are left; a poor turn asks a random question, says something unclear or guesses at random.

Logs for stitching (``--env-args player=...``, ``PLAYERS``): ``ask-well`` asks the halving questions and then
guesses blindly (random objects, whatever the answers said); ``guess-well`` asks random questions and then
guesses the candidates in turn; ``ask-or-guess-well`` plays one of the two per game (its first turn draws
which). Neither wins quickly, but their halves combined are skill 1's play: the best logged game of a hidden
object lies well below what a policy that takes ask-well's questions and guess-well's guesses scores
(``twenty_questions_stitching`` measures both). A scripted game's outcome names its ``player``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, stable_int

UNCLEAR = (
    "I can only answer a yes/no question about one property (such as 'Is it an animal?') "
    "or a guess such as 'Is it a dog?'."
)
START = (
    "Let's play twenty questions. I am thinking of an object. Ask yes/no questions about it, one property "
    "at a time, or guess it with 'Is it a ...?'. You have {horizon} turns."
)
WIN = "Yes! You guessed it."
GUESS_AT = 3
"""The scripted agent's good play guesses the remaining candidates in turn once this few are left."""

# attribute -> (question keywords, the question the scripted agent asks)
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "living": (r"alive|living|organism", "Is it alive?"),
    "animal": (r"animals?", "Is it an animal?"),
    "mammal": (r"mammals?", "Is it a mammal?"),
    "bird": (r"birds?", "Is it a bird?"),
    "plant": (r"plants?", "Is it a plant?"),
    "flies": (r"fly|flies|flying", "Can it fly?"),
    "water": (r"water|swim|swims|sea|ocean", "Does it live in or go on water?"),
    "legs": (r"legs?", "Does it have legs?"),
    "food": (r"food|eat|eaten|edible", "Can you eat it?"),
    "made": (r"man-made|manmade|made by (?:people|humans)|artificial|manufactured", "Is it man-made?"),
    "electric": (r"electronic|electric|electricity|battery|plug", "Does it use electricity?"),
    "big": (r"big|bigger|large|larger|breadbox", "Is it bigger than a breadbox?"),
    "wheels": (r"wheels?", "Does it have wheels?"),
    "metal": (r"metal|metallic", "Is it made of metal?"),
    "indoors": (r"indoors|inside|house|home", "Is it usually found indoors?"),
    "vehicle": (r"vehicles?|transport", "Is it a vehicle?"),
    "tool": (r"tools?", "Is it a tool?"),
    "furniture": (r"furniture", "Is it furniture?"),
    "wear": (r"wear|worn|clothing|clothes", "Do people wear it?"),
    "pet": (r"pets?", "Is it a pet?"),
    "fruit": (r"fruits?", "Is it a fruit?"),
    "sound": (r"music|musical|sound", "Does it make music?"),
    "bark": (r"barks?|barking", "Does it bark?"),
    "sit": (r"sit|sits|seat", "Do people sit on it?"),
    "yellow": (r"yellow", "Is it yellow?"),
}
_ATTR_RE = {a: re.compile(rf"\b(?:{kw})\b") for a, (kw, _) in ATTRIBUTES.items()}

# object -> attributes that are true
OBJECTS: dict[str, set[str]] = {
    "dog": {"living", "animal", "mammal", "legs", "pet", "indoors", "bark"},
    "cat": {"living", "animal", "mammal", "legs", "pet", "indoors"},
    "horse": {"living", "animal", "mammal", "legs", "big", "vehicle"},
    "cow": {"living", "animal", "mammal", "legs", "big", "food"},
    "eagle": {"living", "animal", "bird", "flies", "legs"},
    "penguin": {"living", "animal", "bird", "legs", "water"},
    "shark": {"living", "animal", "water", "big"},
    "goldfish": {"living", "animal", "water", "pet", "indoors"},
    "frog": {"living", "animal", "legs", "water"},
    "snake": {"living", "animal"},
    "bee": {"living", "animal", "flies", "legs"},
    "oak": {"living", "plant", "big"},
    "rose": {"living", "plant"},
    "cactus": {"living", "plant", "indoors"},
    "apple": {"living", "plant", "food", "fruit"},
    "banana": {"living", "plant", "food", "fruit", "yellow"},
    "carrot": {"living", "plant", "food"},
    "bread": {"food", "made", "indoors"},
    "car": {"made", "big", "wheels", "metal", "vehicle", "electric"},
    "bicycle": {"made", "big", "wheels", "metal", "vehicle"},
    "airplane": {"made", "big", "wheels", "metal", "vehicle", "flies", "electric"},
    "boat": {"made", "big", "vehicle", "water"},
    "laptop": {"made", "electric", "indoors", "metal"},
    "phone": {"made", "electric", "metal"},
    "television": {"made", "electric", "indoors", "big", "sound"},
    "chair": {"made", "indoors", "furniture", "legs", "big", "sit"},
    "table": {"made", "indoors", "furniture", "legs", "big"},
    "hammer": {"made", "tool", "metal"},
    "spoon": {"made", "tool", "metal", "indoors"},
    "shirt": {"made", "wear"},
    "book": {"made", "indoors"},
    "guitar": {"made", "sound", "indoors", "big"},
}
_OBJ_RE = {o: re.compile(rf"\b{o}(?:e?s)?\b") for o in OBJECTS}
_GUESS = re.compile(r"^\s*(?:is it|it is|it's|is this|my guess is|i guess|guess:?|final guess:?)\s+(?:an?|the)?\s*")


def article(obj: str) -> str:
    return f"an {obj}" if obj[0] in "aeiou" else f"a {obj}"


def parse_turn(text: str) -> tuple[str, str | None]:
    """``("guess", object)``, ``("ask", attribute)`` or ``("unclear", None)`` for one agent turn."""
    t = (text or "").lower().strip()
    named = [o for o, rx in _OBJ_RE.items() if rx.search(t)]
    rest = re.sub(r"[^\w\s]", " ", _GUESS.sub("", t, count=1)).strip()
    rest = re.sub(r"^(?:an?|the)\s+", "", rest)
    if len(named) == 1 and _OBJ_RE[named[0]].fullmatch(rest):
        return "guess", named[0]
    attrs = [a for a, rx in _ATTR_RE.items() if rx.search(t)]
    if len(attrs) == 1 and not named:
        return "ask", attrs[0]
    return "unclear", None


def remaining_candidates(messages: list[dict[str, Any]], gold: str, agent_role: str = "assistant") -> list[str]:
    """The objects consistent with the oracle's answers to the agent's turns (``agent_role`` messages) in
    ``messages`` when the hidden object is ``gold`` (the replies are recomputed, not read); empty once ``gold``
    has been guessed."""
    cands = sorted(OBJECTS)
    for m in messages:
        if m["role"] != agent_role:
            continue
        kind, arg = parse_turn(m["content"])
        if kind == "guess":
            if arg == gold:
                return []
            cands = [o for o in cands if o != arg]
        elif kind == "ask":
            cands = [o for o in cands if (arg in OBJECTS[o]) == (arg in OBJECTS[gold])]
    return cands


class TwentyQuestionsEnv(Environment):
    name = "twenty-questions"

    @dataclass
    class Options:
        horizon: int = 20
        """agent turns before the game is lost"""
        player: str = "skill"
        """the scripted agent (--policy scripted:SKILL): skill (each turn good with probability SKILL);
        ask-well (the halving questions, then blind guesses), guess-well (random questions, then the candidates
        in turn) or ask-or-guess-well (one of the two drawn per game): logs for stitching (PLAYERS; the three
        ignore SKILL). skill at 1 plays ask-well's questions with guess-well's guesses: the stitched optimum"""
        reward: str = "turns"
        """turns: -1 per agent turn (a win at turn k scores -k, no win -horizon); unit: 1 - k / horizon for a
        win at turn k, 0 without one (the same map onto [0, 1], with no per-message rewards)"""

        def check(self) -> None:
            if self.horizon < 1:
                raise RwftError(f"--env-args horizon={self.horizon}: expected >= 1")
            if self.player not in ("skill", *PLAYERS):
                raise RwftError(f"--env-args player={self.player}: expected skill, {', '.join(PLAYERS)}")
            if self.reward not in ("turns", "unit"):
                raise RwftError(f"--env-args reward={self.reward}: expected turns or unit")

    def scaled(self, turns_reward: float) -> float:
        """A reward on the turns scale (-turns) mapped to the configured one."""
        return 1.0 + turns_reward / self.options.horizon if self.options.reward == "unit" else turns_reward

    def tasks(self, n: int, seed: int) -> list[Task]:
        names = sorted(OBJECTS)
        out = []
        for i in range(n):
            obj = names[stable_int("20q", seed, i) % len(names)]
            out.append(Task(f"20q/s{seed}-{i}-{obj}", {"object": obj}))
        return out

    def start(self, task: Task) -> Episode:
        return Episode(task, [{"role": "user", "content": START.format(horizon=self.options.horizon)}])

    def step(self, ep: Episode, action: str) -> None:
        text = self.add_agent_message(ep, action)
        kind, arg = parse_turn(text)
        obj = ep.task.data["object"]
        if kind == "guess":
            ep.state.setdefault("guesses", []).append(arg)
            if arg == obj:
                ep.state["won"] = True
                ep.done = True
                ep.messages.append({"role": "user", "content": WIN})
                return
            reply = "No."
        elif kind == "ask":
            reply = "Yes." if arg in OBJECTS[obj] else "No."
        else:
            ep.state["unclear"] = ep.state.get("unclear", 0) + 1
            reply = UNCLEAR
        if ep.agent_turns >= self.options.horizon:
            ep.done = True
        ep.messages.append({"role": "user", "content": reply})

    def outcome(self, ep: Episode) -> dict[str, Any]:
        unit = self.options.reward == "unit"
        return {
            "reward": self.scaled(-float(ep.agent_turns)),
            **({} if unit else {"message_rewards": [-1.0] * ep.agent_turns}),
            "won": bool(ep.state.get("won")),
            "correct": bool(ep.state.get("won")),
            "gold": ep.task.data["object"],
            "turns": ep.agent_turns,
            "guesses": len(ep.state.get("guesses", [])),
            "unclear_turns": ep.state.get("unclear", 0),
            **({"player": ep.state["_scripted"]["player"]} if "_scripted" in ep.state else {}),
        }

    def prefix_score(self, messages: list[dict[str, Any]], metadata: dict[str, Any]) -> float | None:
        """The reward an ideal player would still get from this prefix: -(t + log2(n_t) + 1), at least
        -horizon, where t is the agent turns so far and n_t the objects still consistent with the oracle's
        replies (``remaining_candidates``); -t once the object was guessed. The agent's role is that of the
        prefix's last message (a prefix ends with the agent's turn: ``rwft label --agent-role``'s).

        Singling out one of n objects takes log2(n) yes/no answers, then one guess; so the final reward
        -turns is matched exactly at a win, and the redistributed credit of a turn is -1 plus the bits it
        gained: 0 for a question that halves the candidates (or a last right guess), -1 for a turn that
        eliminates nothing, more than 0 for a lucky early guess. With ``reward=unit`` the score is mapped as
        the reward is (``scaled``)."""
        gold = metadata.get("gold")
        if gold not in OBJECTS:
            return None
        role = messages[-1]["role"] if messages else "assistant"
        turns = sum(m["role"] == role for m in messages)
        n = len(remaining_candidates(messages, gold, role))
        if n == 0:
            return self.scaled(-float(turns))
        return self.scaled(max(-float(self.options.horizon), -(turns + math.log2(n) + 1.0)))

    def scripted_action(self, ep: Episode, rng: random.Random, skill: float) -> str:
        s = tracked(ep)
        player = self.options.player
        if player == "ask-or-guess-well" and "player" not in s:
            s["player"] = rng.choice(("ask-well", "guess-well"))
        elif player != "ask-or-guess-well":
            s["player"] = player
        if s["player"] == "skill":
            return skill_turn(s, rng, skill)
        return named_turn(s, rng, s["player"])


PLAYERS = ("ask-well", "guess-well", "ask-or-guess-well")
"""Scripted players for stitching (``--env-args player=...``), each strong at one half of the game."""


def tracked(ep: Episode) -> dict[str, Any]:
    """The scripted agent's state, its candidates updated by the oracle's reply to its last turn."""
    s = ep.state.setdefault("_scripted", {"cands": sorted(OBJECTS), "asked": []})
    last = s.get("last")
    if last is not None and ep.messages[-1]["role"] == "user":
        reply = ep.messages[-1]["content"]
        kind, arg = last
        if kind == "ask" and reply in ("Yes.", "No."):
            keep = reply == "Yes."
            s["cands"] = [o for o in s["cands"] if (arg in OBJECTS[o]) == keep]
        elif kind == "guess" and reply == "No.":
            s["cands"] = [o for o in s["cands"] if o != arg]
    return s


def splits(cands: list[str], asked: list[str]) -> list[str]:
    """The attributes not asked yet whose answer would rule out some of ``cands`` but not all."""
    return [a for a in ATTRIBUTES if a not in asked and 0 < sum(a in OBJECTS[o] for o in cands) < len(cands)]


def halving(cands: list[str], useful: list[str]) -> str:
    """The attribute of ``useful`` that splits ``cands`` most evenly (the first such in table order)."""
    return min(useful, key=lambda a: abs(2 * sum(a in OBJECTS[o] for o in cands) - len(cands)))


def ask(s: dict[str, Any], attr: str) -> str:
    s["asked"].append(attr)
    s["last"] = ("ask", attr)
    return ATTRIBUTES[attr][1]


def guess(s: dict[str, Any], obj: str) -> str:
    s.setdefault("guessed", []).append(obj)
    s["last"] = ("guess", obj)
    return f"Is it {article(obj)}?"


def named_turn(s: dict[str, Any], rng: random.Random, player: str) -> str:
    """One turn of ``ask-well`` or ``guess-well``. Both ask until at most ``GUESS_AT`` candidates are left (or
    no question splits them) and then only guess. ask-well asks the question that splits the candidates most
    evenly (as skill 1 does), then guesses blindly: a random object it has not guessed yet, whatever the
    answers said. guess-well asks a random question it has not asked (often one that rules out nothing),
    then guesses the candidates in turn (as skill 1 does)."""
    cands = s["cands"] or sorted(OBJECTS)
    useful = splits(cands, s["asked"])
    if not s.get("guessing") and len(cands) > GUESS_AT and useful:
        if player == "ask-well":
            return ask(s, halving(cands, useful))
        return ask(s, rng.choice([a for a in ATTRIBUTES if a not in s["asked"]]))
    s["guessing"] = True
    if player == "ask-well":
        return guess(s, rng.choice([o for o in sorted(OBJECTS) if o not in s.get("guessed", [])] or cands))
    return guess(s, cands[0])


def skill_turn(s: dict[str, Any], rng: random.Random, skill: float) -> str:
    """One turn of the skill player: good (probability ``skill``) asks the question that splits the candidates
    most evenly or guesses them in turn once ``GUESS_AT`` or fewer are left; poor asks a random question, says
    something unclear or guesses at random."""
    cands = s["cands"] or sorted(OBJECTS)
    r = rng.random()
    good = r <= skill
    # Good play guesses once few candidates are left: guessing k candidates in turn costs (k + 1) / 2
    # turns on average, asking first costs more for k <= 3 (k = 3: 2 turns against 7/3). It also keeps
    # good games short, so a small model imitates them more easily (rwft bootstrap).
    if len(cands) == 1 or (good and len(cands) <= GUESS_AT) or (not good and rng.random() < 0.25):
        return guess(s, cands[0] if len(cands) == 1 or good else rng.choice(cands))
    if not good and rng.random() < 0.2:
        s["last"] = None
        return rng.choice(["Hmm, tell me more about it.", "Is it big and alive?", ""])
    unasked = [a for a in ATTRIBUTES if a not in s["asked"]]
    useful = splits(cands, s["asked"])
    if not useful:
        return guess(s, cands[0])
    return ask(s, halving(cands, useful) if good else rng.choice(unasked))
