"""``mcqa``: the paper's multiple-choice tutoring protocol (BRIEF paper 1) with a scripted teacher.

Reasoning mode (3 agent turns): the teacher asks the agent to (1) solve the question, (2) explain why
the other options are wrong, (3) give the final answer as "The answer is X". With ``thinking=true``
the first request asks for the reasoning inside ``<thinking>`` tags. Clarifying mode (2 agent turns):
the agent asks one question about one option; the teacher says whether that option fits; the agent
then reasons and answers.

Tasks: the shipped OpenBookQA and ARC-Challenge splits, or ``arithmetic``, a procedural generator
of expressions with distractors whose ``difficulty`` (1-5) sets operand size and operator count.

The reward is exact match of the final answer (1 or 0). The final answer is the last "answer is X"
in the last agent turn (case-insensitive, markdown stripped), or a lone option letter as the whole
turn; anything else (empty, another language, no answer, an unknown letter) is no answer: reward 0,
``final_answer`` null.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, pick, stable_int

DATA = Path(__file__).resolve().parents[2] / "assets"
SOURCES = ("openbookqa", "arc-challenge", "arithmetic")

SOLVE = "Solve this problem. Explain your reasoning step by step."
THINK = "Solve this problem. Put your step-by-step reasoning inside <thinking></thinking> tags."
EXPLAIN = "Now explain why each of the other options is wrong."
FINAL = "What is your final answer? Reply in the form 'The answer is X', where X is the option letter."
ASK = (
    "Before you answer, ask me one question about one of the options (about 50-60 words), "
    "naming the option by its letter."
)
AFTER_ASK = "Now reason step by step and give your final answer in the form 'The answer is X'."
UNCLEAR_OPTION = "I could not tell which single option your question is about, so I cannot answer it."

_ANSWER = re.compile(r"answer\s+is\s*[:\-]?\s*[(\"'\u201c\u2018]?\s*([A-Za-z])\b\)?", re.IGNORECASE)
_LONE = re.compile(r"^\(?([A-Za-z])\)?[.!]?$")
_OPTION_REF = re.compile(r"\b(?:option|choice)\s*\(?([A-Z])\b\)?|\(([A-Z])\)", re.IGNORECASE)


def extract_choice(text: str, labels: list[str]) -> str | None:
    """The option letter the text commits to as its final answer, or None (see the module docstring)."""
    clean = (text or "").replace("*", "").replace("`", "")
    found = _ANSWER.findall(clean)
    letter = found[-1].upper() if found else None
    if letter is None:
        m = _LONE.match(clean.strip())
        letter = m.group(1).upper() if m else None
    return letter if letter in labels else None


@lru_cache(maxsize=8)
def load_mc(source: str, split: str) -> tuple[dict[str, Any], ...]:
    path = DATA / source / f"{split}.jsonl"
    if not path.exists():
        raise RwftError(f"--env-args split={split}: {source} has no {split} split ({path} missing)")
    with path.open(encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def arithmetic_item(rng: random.Random, difficulty: int, index: int) -> dict[str, Any]:
    """One arithmetic question with 4 choices: the value, a wrong-precedence value and near misses."""
    n_ops = 1 + difficulty // 2
    hi = 10**difficulty - 1 if difficulty < 3 else 10 ** (difficulty - 1) - 1
    ops = ["+", "-"] + (["*"] if difficulty >= 2 else [])
    nums = [rng.randint(1, max(9, hi)) for _ in range(n_ops + 1)]
    chosen = [rng.choice(ops) for _ in range(n_ops)]
    expr = str(nums[0]) + "".join(f" {o} {n}" for o, n in zip(chosen, nums[1:], strict=True))
    value = eval(expr)  # noqa: S307 - digits and + - * only, built above
    left = nums[0]
    for o, n in zip(chosen, nums[1:], strict=True):  # left to right, ignoring precedence
        left = left + n if o == "+" else left - n if o == "-" else left * n
    wrong = [left, value + rng.choice([1, -1]) * rng.randint(1, 10), value + 10, value - 10, -value]
    wrong += [value + k for k in range(1, 4)]  # near misses: enough distinct ones whatever the above collide on
    distractors: list[int] = []
    for w in wrong:
        if w != value and w not in distractors:
            distractors.append(w)
    options = [value] + distractors[:3]
    rng.shuffle(options)
    labels = "ABCD"
    return {
        "id": f"arith-d{difficulty}-{index}",
        "question": f"What is {expr}?",
        "choices": [{"label": lab, "text": str(v)} for lab, v in zip(labels, options, strict=True)],
        "answer": labels[options.index(value)],
        "source": "arithmetic",
    }


class MCQAEnv(Environment):
    name = "mcqa"

    @dataclass
    class Options:
        source: str = "openbookqa"
        """openbookqa, arc-challenge (shipped real data) or arithmetic (procedural)"""
        split: str = "train"
        """train or test (real data only)"""
        mode: str = "reasoning"
        """reasoning (3 teacher turns) or clarifying (ask about one option, then answer)"""
        thinking: bool = False
        """ask for the reasoning inside <thinking> tags"""
        difficulty: int = 2
        """arithmetic only: 1 (one-digit sums) to 5 (several operators, larger numbers)"""

        def check(self) -> None:
            if self.source not in SOURCES:
                raise RwftError(f"--env-args source={self.source}: expected one of {', '.join(SOURCES)}")
            if self.mode not in ("reasoning", "clarifying"):
                raise RwftError(f"--env-args mode={self.mode}: expected reasoning or clarifying")
            if not 1 <= self.difficulty <= 5:
                raise RwftError(f"--env-args difficulty={self.difficulty}: expected 1 to 5")

    def tasks(self, n: int, seed: int) -> list[Task]:
        o = self.options
        if o.source == "arithmetic":
            items = [
                arithmetic_item(random.Random(stable_int("arith", seed, o.difficulty, i)), o.difficulty, i)
                for i in range(n)
            ]
            items = [dict(it, id=f"{it['id']}-s{seed}") for it in items]
        else:
            items = pick(list(load_mc(o.source, o.split)), n, seed, f"{o.source} {o.split}")
        return [Task(f"{o.source}/{it['id']}", it) for it in items]

    def start(self, task: Task) -> Episode:
        q = task.data
        options = "\n".join(f"{c['label']}. {c['text']}" for c in q["choices"])
        if self.options.mode == "clarifying":
            ask = ASK
        else:
            ask = THINK if self.options.thinking else SOLVE
        first = f"Question: {q['question']}\nOptions:\n{options}\n\n{ask}"
        return Episode(task, [{"role": "user", "content": first}])

    def _labels(self, ep: Episode) -> list[str]:
        return [c["label"] for c in ep.task.data["choices"]]

    def step(self, ep: Episode, action: str) -> None:
        text = self.add_agent_message(ep, action)
        if self.options.mode == "reasoning":
            replies = {1: EXPLAIN, 2: FINAL}
            if ep.agent_turns in replies:
                ep.messages.append({"role": "user", "content": replies[ep.agent_turns]})
            else:
                ep.done = True
            return
        if ep.agent_turns == 1:
            ep.messages.append({"role": "user", "content": self.teacher_answer(ep, text) + "\n\n" + AFTER_ASK})
        else:
            ep.done = True

    def teacher_answer(self, ep: Episode, question: str) -> str:
        """Say whether the one option the question names fits; a fixed reply when it names none or several."""
        labels = self._labels(ep)
        refs = {(a or b).upper() for a, b in _OPTION_REF.findall(question or "")} & set(labels)
        if len(refs) != 1:
            ep.state["clarify_option"] = None
            return UNCLEAR_OPTION
        (label,) = refs
        ep.state["clarify_option"] = label
        text = next(c["text"] for c in ep.task.data["choices"] if c["label"] == label)
        if label == ep.task.data["answer"]:
            return f"Good question. Option {label} ({text}) is consistent with everything the question says."
        return f"Good question. Option {label} ({text}) does not fit what the question asks."

    def outcome(self, ep: Episode) -> dict[str, Any]:
        labels = self._labels(ep)
        final = extract_choice(ep.last_agent_text(), labels) if ep.agent_turns else None
        gold = ep.task.data["answer"]
        agent = [m["content"] for m in ep.messages if m["role"] == "assistant"]
        out: dict[str, Any] = {
            "reward": 1.0 if final == gold else 0.0,
            "gold": gold,
            "final_answer": final,
            "correct": final == gold,
            "turns": ep.agent_turns,
            "used_thinking": any("<thinking>" in a and "</thinking>" in a for a in agent),
            "source": ep.task.data.get("source", self.options.source),
            "question_id": ep.task.data["id"],
            "mode": self.options.mode,
        }
        if self.options.mode == "clarifying":
            out["clarify_option"] = ep.state.get("clarify_option")
        return out

    # ------------------------------------------------------------------ scripted agent
    def scripted_action(self, ep: Episode, rng: random.Random, skill: float) -> str:
        q = ep.task.data
        labels = self._labels(ep)
        text_of = {c["label"]: c["text"] for c in q["choices"]}
        s = ep.state.setdefault("_scripted", {})
        if "choice" not in s:
            s["choice"] = q["answer"] if rng.random() < skill else rng.choice(labels)
            s["verbose"] = rng.random() < 0.3 + 0.7 * skill
        choice = s["choice"]
        turn = ep.agent_turns + 1
        if self.options.mode == "clarifying":
            if turn == 1:
                target = choice if rng.random() < 0.5 + 0.5 * skill else rng.choice(labels)
                s["asked"] = target
                return (
                    f"Before I commit, I would like to check one option. Is option {target}, "
                    f"'{text_of[target]}', consistent with what the question describes, or does it "
                    f"contradict something in it? Knowing this would help me decide whether to keep "
                    f"option {target} or to look more carefully at the remaining choices instead."
                )
            teacher = ep.messages[-1]["content"]
            if "does not fit" in teacher and s.get("asked") == choice:
                others = [x for x in labels if x != choice]
                choice = q["answer"] if rng.random() < skill else rng.choice(others)
            elif "consistent with" in teacher:
                choice = s["asked"]
            return self._final(rng, skill, choice, text_of, reasoning=True)
        if turn == 1:
            body = (
                f"The question asks: {q['question']} Looking at the options, {choice} ({text_of[choice]}) "
                f"matches it best, because it is the only one that answers what is asked."
                if s["verbose"]
                else f"I think it is {choice}."
            )
            if self.options.thinking and rng.random() < 0.2 + 0.8 * skill:
                return f"<thinking>{body}</thinking> So my answer is {choice}."
            return body
        if turn == 2:
            others = [x for x in labels if x != choice]
            if not s["verbose"]:
                return "The others are wrong."
            return " ".join(f"Option {x} ({text_of[x]}) is wrong: it does not answer the question." for x in others)
        return self._final(rng, skill, choice, text_of, reasoning=False)

    def _final(self, rng: random.Random, skill: float, choice: str, text_of: dict, reasoning: bool) -> str:
        if rng.random() > 0.6 + 0.4 * skill:  # sloppy format: no recognisable final answer
            return rng.choice([f"Probably {text_of[choice]}.", "I am not sure.", f"Maybe {choice} or so."])
        lead = f"Option {choice} ({text_of[choice]}) fits the question best. " if reasoning else ""
        return f"{lead}The answer is {choice}."
