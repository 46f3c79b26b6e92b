"""``clarify``: an ambiguous request whose user holds a hidden intent (adaptive length).

The user asks an ambiguous question; one of its interpretations is the user's intent (fixed per
context). The agent either asks a clarifying question (a turn whose text ends with "?") and the user
reveals the intended interpretation, or answers (any other turn, including an empty one), which ends
the episode. The answer is right when it contains a gold answer of the intended interpretation
(normalized) and no answer of another interpretation (so listing every candidate is a hedge and counts
wrong). Reward: ``correct * gamma ** (agent turns - 1)``; with ``gamma=0.9`` and k interpretations,
asking first earns 0.9 while a blind guess earns about 1/k, so asking the right question pays.
A question of fewer than three words gets a fixed "be more specific" reply. After ``max_turns``
agent turns without an answer the episode ends with reward 0.

Tasks: the AmbigNQ dev questions with 2+ interpretations (real, shipped; ``open_book`` lists each
interpretation with its answer in the system message, for models that lack the knowledge), or ``procedural``:
namesakes (``difficulty`` = 2..5 people sharing a name, with facts given in the system message) and a
fraction ``unambiguous`` of one-person tasks where asking only costs the discount, or ``requests``:
short errands that name their candidates ("Buy me a pet: cat or bird or frog.", ``difficulty`` of
them) of which the user means one; a clarifying question gets "I mean: cat". The answer is right when
it names the intended candidate and no other ("Done: cat."), or, once the intent is known (stated by
the user, or a single candidate), when it is a plain "Done." that names none. Guessing pays about 1/k;
asking, then confirming, pays 0.9: a strategy that even the tiny preset learns in a few minutes of CPU,
while carrying the word over (a copy) it does not (no progress in 400 steps of a copy-only drill).
This is the default task of ``rwft compare``'s demo.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, normalize, pick, stable_int
from rwft.rollout.envs.mcqa import DATA

SYSTEM = (
    "You are a helpful assistant. If a request is ambiguous, you may first ask one clarifying question "
    "(ending with '?'). Otherwise answer briefly."
)
VAGUE = "Could you be more specific about what you want to know?"
FIRST = ["Alex", "Sam", "Jordan", "Robin", "Casey", "Taylor", "Morgan", "Jamie", "Avery", "Quinn"]
LAST = ["Lind", "Okafor", "Marsh", "Ito", "Brandt", "Silva", "Novak", "Reyes", "Kaur", "Dubois"]
JOBS = ["painter", "chemist", "pilot", "baker", "judge", "sailor", "drummer", "surgeon", "farmer", "poet"]
CITIES = ["Oslo", "Lima", "Accra", "Hanoi", "Quito", "Perth", "Porto", "Riga", "Cairo", "Dakar"]
# requests: (request, candidates); the candidates are common words (one token each for the tiny preset's
# tokenizer) and the answer is "Done: X.", so carrying the stated one over is a fixed-offset copy, easy to learn
ERRANDS = [
    ("Buy me a pet:", ["cat", "dog", "fish", "bird", "horse", "frog"]),
    ("Plan a trip to the", ["lake", "river", "ocean", "forest", "desert", "farm", "park"]),
    ("Bring me", ["water", "milk", "apple", "corn", "meat", "eggs"]),
    ("Build me a box of", ["sand", "rock", "iron", "glass", "wood", "paper"]),
]
ASK_WHICH = "Which one do you mean?"


@lru_cache(maxsize=2)
def load_ambignq() -> tuple[dict[str, Any], ...]:
    path = DATA / "ambignq" / "dev.jsonl"
    return tuple(json.loads(line) for line in path.open(encoding="utf-8") if line.strip())


def namesake_item(rng: random.Random, k: int, index: int) -> dict[str, Any]:
    """k people sharing one name (different jobs, birth years, cities) and a question about one fact."""
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    jobs = rng.sample(JOBS, k)
    people = [{"job": j, "year": rng.randint(1900, 2005), "city": rng.choice(CITIES)} for j in jobs]
    attr = rng.choice(["year", "city"])
    facts = " ".join(f"{name} the {p['job']} was born in {p['year']} and lives in {p['city']}." for p in people)
    ask = f"When was {name} born?" if attr == "year" else f"Where does {name} live?"
    template = "When was {} the {} born?" if attr == "year" else "Where does {} the {} live?"
    interps = [{"question": template.format(name, p["job"]), "answers": [str(p[attr])]} for p in people]
    return {"id": f"namesake-{index}", "question": ask, "interpretations": interps, "facts": facts}


def request_item(rng: random.Random, k: int, index: int) -> dict[str, Any]:
    """An errand naming k candidates (k = 1: unambiguous); the answer names the intended one, no system turn."""
    request, pool = rng.choice(ERRANDS)
    names = rng.sample(pool, k)
    question = f"{request} {' or '.join(names)}." if k > 1 else f"{request} {names[0]}."
    interps = [{"question": n, "answers": [n]} for n in names]
    return {"id": f"request-{index}", "question": question, "interpretations": interps, "ask": ASK_WHICH,
            "reply": "Done: {}.", "system": None}


class ClarifyEnv(Environment):
    name = "clarify"

    @dataclass
    class Options:
        source: str = "ambignq"
        """ambignq (real AmbigNQ dev questions), procedural (namesakes, facts in the system message) or requests
        (errands naming their candidates; the stated intent is copied into the answer)"""
        gamma: float = 0.9
        """reward discount per extra agent turn (adaptive length)"""
        max_turns: int = 3
        """agent turns before the episode ends unanswered"""
        difficulty: int = 2
        """procedural / requests: people sharing a name, or candidates of a request (2-5)"""
        unambiguous: float = 0.2
        """procedural / requests: fraction of tasks with a single person / candidate (asking only costs the
        discount)"""
        open_book: bool = False
        """ambignq: list every interpretation with its answer in the system message, so the task is to find
        out which one the user means, not to recall the answer (for models without the world knowledge)"""

        def check(self) -> None:
            if self.source not in ("ambignq", "procedural", "requests"):
                raise RwftError(f"--env-args source={self.source}: expected ambignq, procedural or requests")
            if not 0 < self.gamma <= 1:
                raise RwftError(f"--env-args gamma={self.gamma}: expected 0 < gamma <= 1")
            if self.max_turns < 1:
                raise RwftError(f"--env-args max_turns={self.max_turns}: expected >= 1")
            if not 2 <= self.difficulty <= 5:
                raise RwftError(f"--env-args difficulty={self.difficulty}: expected 2 to 5")
            if not 0 <= self.unambiguous <= 1:
                raise RwftError(f"--env-args unambiguous={self.unambiguous}: expected 0 to 1")

    def tasks(self, n: int, seed: int) -> list[Task]:
        o = self.options
        if o.source == "ambignq":
            items = [dict(it) for it in pick(list(load_ambignq()), n, seed, "AmbigNQ dev")]
        else:
            items = []
            kind, make = ("namesake", namesake_item) if o.source == "procedural" else ("request", request_item)
            for i in range(n):
                rng = random.Random(stable_int(kind, seed, o.difficulty, i))
                k = 1 if rng.random() < o.unambiguous else o.difficulty
                items.append(dict(make(rng, k, i), id=f"{kind}-d{o.difficulty}-s{seed}-{i}"))
        for it in items:
            it["intent"] = stable_int("intent", seed, it["id"]) % len(it["interpretations"])
            if o.source == "ambignq" and o.open_book:
                it["facts"] = " ".join(f"{i['question'].rstrip('?')}? {i['answers'][0]}."
                                       for i in it["interpretations"])
        return [Task(f"{o.source}/{it['id']}", it) for it in items]

    def start(self, task: Task) -> Episode:
        system = task.data.get("system", SYSTEM)
        if task.data.get("facts"):
            system += f"\nFacts: {task.data['facts']}"
        first = [{"role": "system", "content": system}] if system is not None else []
        first.append({"role": "user", "content": task.data["question"]})
        return Episode(task, first)

    def step(self, ep: Episode, action: str) -> None:
        text = self.add_agent_message(ep, action).strip()
        if not text.endswith("?"):
            ep.state["answer"] = text
            ep.done = True
            return
        ep.state["questions"] = ep.state.get("questions", 0) + 1
        if ep.agent_turns >= self.options.max_turns:
            ep.done = True
            return
        if len(text.split()) < 3:
            reply = VAGUE
        else:
            reply = "I mean: " + ep.task.data["interpretations"][ep.task.data["intent"]]["question"]
            ep.state["revealed"] = True
        ep.messages.append({"role": "user", "content": reply})

    def outcome(self, ep: Episode) -> dict[str, Any]:
        d = ep.task.data
        gold = d["interpretations"][d["intent"]]["answers"]
        answer = ep.state.get("answer")
        text = normalize(answer or "")
        hits = [any(normalize(a) and normalize(a) in text for a in it["answers"]) for it in d["interpretations"]]
        gold_set = {normalize(a) for a in gold}
        others = [
            h for i, (h, it) in enumerate(zip(hits, d["interpretations"], strict=True))
            if i != d["intent"] and not {normalize(a) for a in it["answers"]} <= gold_set
        ]
        hedged = hits[d["intent"]] and any(others)
        # requests: once the intent is known (stated by the user, or a single candidate), a plain "Done."
        # that names no candidate carries it out; naming a candidate must name the intended one
        known = ep.state.get("revealed") or len(d["interpretations"]) == 1
        confirmed = bool(d.get("ask")) and known and not any(hits) and "done" in text.split()
        correct = answer is not None and ((hits[d["intent"]] and not hedged) or confirmed)
        discount = self.options.gamma ** max(0, ep.agent_turns - 1)
        return {
            "reward": discount if correct else 0.0,
            "correct": bool(correct),
            "gold": gold,
            "intent": d["interpretations"][d["intent"]]["question"],
            "interpretations": len(d["interpretations"]),
            "asked": ep.state.get("questions", 0),
            "answered": answer is not None,
            "hedged": bool(hedged),
            "turns": ep.agent_turns,
            "discount": discount,
            "question_id": d["id"],
        }

    def scripted_action(self, ep: Episode, rng: random.Random, skill: float) -> str:
        d = ep.task.data
        interps = d["interpretations"]
        revealed = any(m["role"] == "user" and m["content"].startswith("I mean:") for m in ep.messages)
        if not revealed and ep.agent_turns + 1 < self.options.max_turns:
            ambiguous = len(interps) > 1
            if rng.random() < (skill if ambiguous else 1 - skill):
                if rng.random() < 0.15 * (1 - skill):
                    return "Which one?"  # too vague: gets the fixed reply
                if d.get("ask"):
                    return d["ask"]
                options = " or ".join(it["question"].rstrip("?") for it in interps[:4])
                return f"Do you mean: {options}?"
        if d.get("ask"):  # requests: confirm or name one; nothing hints at the intent before asking
            if rng.random() < 0.1 * (1 - skill):
                return "I don't know."
            if (revealed or len(interps) == 1) and rng.random() < 0.8:
                return "Done."
            target = d["intent"] if revealed or len(interps) == 1 else rng.randrange(len(interps))
            return d["reply"].format(interps[target]["answers"][0])
        if revealed or rng.random() < 0.3 * skill:
            target = d["intent"] if rng.random() < 0.5 + 0.5 * skill else rng.randrange(len(interps))
        else:
            target = rng.randrange(len(interps))  # a blind guess
        if rng.random() < 0.1 * (1 - skill):
            return "I don't know."
        return d.get("reply", "The answer is {}.").format(interps[target]["answers"][0])
