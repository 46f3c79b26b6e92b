"""Span judges: error spans ``{start, end, severity}`` on each agent message (``rwft label --spans``).

A span judge returns, per conversation, one list of spans per agent message (character offsets into the
message's span text, ``data.conversation.span_text``: its content, then its calls as ``<tool_call>`` text),
or a failure. ``data.encode`` turns the spans into token penalties.

- ``tod``: rules over an episode of ``--env tod`` (its ``metadata.goal`` and ``metadata.db``), replaying
  the conversation to know what the user had said and what the tools had returned at each agent turn:

  - critical: a call to an unknown tool (its name); an argument the tool does not take or of the wrong type,
    arguments that are not a JSON object (the whole call); a claim that the table is booked with no booking
    made (the word ``booked``);
  - major: a ``book`` of a place that does not meet the goal (its name), of a party size other than the
    goal's (its value), or with a party size the user had not given (the value, or the tool's name ``book``
    when it was left to the default: the choice to book before asking); a search value that contradicts the
    goal (the value); an offer in the text of a place that does not meet the goal (the name, or ``[name]``
    when the last search's first place does not meet it);
  - minor: a constraint value in the text that contradicts the goal (``cheap`` when the goal is expensive).

  A span covers the fewest characters that carry the error: the tokens an erroneous call shares with right
  calls (``<tool_call>``, ``{"name": ``, the argument keys) keep the episode's weight, so the penalty lands on
  the decision that differs, not on the format every right call also needs.

- ``rubric``: an LLM judge (``--judge-model``, local or http(s)://) gets the transcript with the agent turns
  numbered and must reply with exactly ``{"errors": [{"turn": N, "quote": "...", "severity": "minor" |
  "major" | "critical"}]}`` (``[]`` when there is none); a quote is an exact substring of turn N's text, and
  its first occurrence after the turn's earlier spans becomes the span. A reply that is not that JSON, or a
  turn, quote or severity that does not fit, is asked again (new seed, temperature 0.7) up to
  ``--judge-retries`` times, then counted as a failure (no spans written, ``metadata.span_failure``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from rwft.data.chat_template import tool_calls_text
from rwft.data.conversation import SEVERITIES, span_text
from rwft.errors import RwftError
from rwft.rollout.envs.base import stable_int
from rwft.rollout.envs.tod_domain import ANY, CONSTRAINTS, PLACE, SCHEMAS, check_arguments, find, meets, stated_slots
from rwft.rollout.judges import JudgeItem, transcript

SPAN_JUDGES = ("tod", "rubric")
Span = dict[str, Any]

SPAN_PROMPT = """You are checking the assistant's turns in the conversation below for errors: wrong facts,
wrong values, actions the user did not ask for, broken tool calls.
{reference}Conversation (the assistant's turns are numbered):
{transcript}

Reply with one JSON object and nothing else:
{{"errors": [{{"turn": N, "quote": "the exact wrong words of assistant turn N", "severity": "S"}}]}}
with S one of minor, major, critical. Use "errors": [] when there is no error. Quote as few words as show the error."""


@dataclass
class SpanResult:
    """One list of spans per agent message, or None and why."""

    spans: list[list[Span]] | None
    failure: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


def with_spans(messages: list[dict[str, Any]], metadata: dict[str, Any], result: SpanResult, spec: str,
               agent_role: str = "assistant") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Copies of a record's messages and metadata labelled by a span judge: each agent message gets the
    ``spans`` the judge returned for it (old ones removed, none written where it found none), the metadata
    ``span_judge`` (the judge's spec) and ``span_failure`` (why a reply could not be parsed, else None)."""
    messages = [{k: v for k, v in m.items() if k != "spans"} for m in messages]
    agents = [m for m in messages if m["role"] == agent_role]
    for m, spans in zip(agents, result.spans or [[]] * len(agents), strict=True):
        if spans:
            m["spans"] = spans
    return messages, dict(metadata, span_judge=spec, span_failure=result.failure)


# ---------------------------------------------------------------------------- tod rules


def _value_span(block_start: int, block: str, key: str, value: Any) -> tuple[int, int]:
    """The characters of ``"key": value`` 's value in a call block (the whole block if not found)."""
    needle = json.dumps(key, ensure_ascii=False) + ": "
    at = block.find(needle + json.dumps(value, ensure_ascii=False))
    if at < 0:
        return block_start, block_start + len(block)
    at += len(needle)
    return block_start + at, block_start + at + len(json.dumps(value, ensure_ascii=False))


def _arguments(call: dict[str, Any]) -> Any:
    args = call["function"]["arguments"]
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return None
    return args


class TodRules:
    """The ``tod`` rule judge (module docstring)."""

    def spans(self, item: JudgeItem, agent_role: str = "assistant") -> list[list[Span]]:
        goal, db = item.metadata.get("goal"), item.metadata.get("db")
        if not isinstance(goal, dict) or not isinstance(db, dict) or "places" not in db:
            raise RwftError(f"{item.key}: span judge 'tod' needs metadata.goal and metadata.db, as rwft collect "
                            "--env tod writes them")
        said: dict[str, Any] = {}
        first, booked, out = None, False, []
        results = {m.get("tool_call_id"): m["content"] for m in item.messages if m["role"] == "tool"}
        for m in item.messages:
            if m["role"] == "user":
                said.update(stated_slots(m["content"]))
            if m["role"] != agent_role:
                continue
            spans = self._text(m.get("content") or "", goal, db, first, booked)
            calls = m.get("tool_calls") or []
            if calls:
                spans += self._calls(m, calls, goal, db, said)
                for call in calls:
                    result = _json(results.get(call.get("id")))
                    name = call["function"]["name"]
                    if name == "search" and isinstance(result, list):
                        first = result[0] if result else None
                    if name == "book" and isinstance(result, dict) and "booked" in result:
                        booked = True
            out.append(_disjoint(spans))
        return out

    def _text(self, text: str, goal, db, first, booked) -> list[Span]:
        spans = []
        low = text.lower()
        claim = re.search(r"\bbooked\b", low)
        if claim and not booked:
            spans.append(_span(claim.start(), claim.end(), "critical"))
        for w in re.finditer(r"\[name\]|\w+", low):
            place = find(db, first if w.group() == PLACE else w.group())
            if place is not None and not meets(place, goal):
                spans.append(_span(w.start(), w.end(), "major"))
            for slot, values in CONSTRAINTS.items():
                if w.group() in values and goal[slot] not in (ANY, w.group()):
                    spans.append(_span(w.start(), w.end(), "minor"))
        return spans

    def _calls(self, m: dict[str, Any], calls: list[dict], goal, db, said) -> list[Span]:
        content = m.get("content") or ""
        at = len(content) + 1 if content else 0
        spans = []
        for call in calls:
            block = tool_calls_text([call])
            name, args = call["function"]["name"], _arguments(call)
            if name not in SCHEMAS:
                spans.append(_span(*_value_span(at, block, "name", name), "critical"))
            elif not isinstance(args, dict) or check_arguments(SCHEMAS[name], args):
                spans.append(_span(at, at + len(block), "critical"))
            elif name == "search":
                for slot, value in args.items():
                    if goal.get(slot, ANY) not in (ANY, value):
                        spans.append(_span(*_value_span(at, block, slot, value), "major"))
            elif name == "book":
                place = find(db, args.get("name"))
                if "name" in args and (place is None or not meets(place, goal)):
                    spans.append(_span(*_value_span(at, block, "name", args["name"]), "major"))
                if "people" not in said or ("people" in args and args["people"] != goal["people"]):
                    where = _value_span(at, block, "people", args["people"]) if "people" in args else \
                        _value_span(at, block, "name", name)
                    spans.append(_span(*where, "major"))
            at += len(block) + 1
        return spans


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _span(start: int, end: int, severity: str) -> Span:
    return {"start": start, "end": end, "severity": severity}


def _disjoint(spans: list[Span]) -> list[Span]:
    """Sorted, overlaps resolved: of two overlapping spans the more severe (then the earlier) is kept."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    kept: list[Span] = []
    for s in sorted(spans, key=lambda s: (-rank[s["severity"]], s["start"])):
        if all(s["end"] <= k["start"] or s["start"] >= k["end"] for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s["start"])


# ---------------------------------------------------------------------------- the rubric span judge


def parse_span_reply(reply: str, texts: list[str]) -> list[list[Span]]:
    """The spans of a reply in the fixed JSON form (module docstring) over the agent turns' ``texts``;
    ValueError naming what does not fit."""
    start, end = (reply or "").find("{"), (reply or "").rfind("}")
    try:
        obj = json.loads(reply[start: end + 1]) if 0 <= start < end else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("errors"), list):
        raise ValueError('not a JSON object {"errors": [...]}')
    out: list[list[Span]] = [[] for _ in texts]
    for e in obj["errors"]:
        if not isinstance(e, dict):
            raise ValueError(f"an error that is not an object: {e!r}")
        turn, quote, severity = e.get("turn"), e.get("quote"), e.get("severity")
        if isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= len(texts):
            raise ValueError(f"turn {turn!r} is not an assistant turn 1 to {len(texts)}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        if not isinstance(quote, str) or not quote:
            raise ValueError(f"quote {quote!r} is not a non-empty string")
        spans = out[turn - 1]
        at = texts[turn - 1].find(quote, max((s["end"] for s in spans), default=0))
        if at < 0:
            raise ValueError(f"quote {quote[:40]!r} is not in assistant turn {turn} (after its earlier errors)")
        spans.append(_span(at, at + len(quote), severity))
    return out


class RubricSpans:
    """The LLM span judge over a ``generate(conversations, temperatures, seeds)`` backend."""

    def __init__(self, generate, retries: int = 2, seed: int = 0):
        self.generate, self.retries, self.seed = generate, retries, seed

    def prompt(self, item: JudgeItem, agent_role: str) -> list[dict[str, str]]:
        gold = item.metadata.get("gold")
        reference = f"The reference answer is: {gold}.\n" if gold is not None else ""
        shown, k = [], 0
        for m in item.messages:
            if m["role"] == "system":
                continue
            if m["role"] == agent_role:
                k += 1
                m = {**m, "role": f"assistant turn {k}", "content": span_text(m)}
            shown.append(m)
        return [{"role": "user", "content": SPAN_PROMPT.format(reference=reference, transcript=transcript(shown))}]

    def judge(self, items: list[JudgeItem], agent_role: str = "assistant") -> list[SpanResult]:
        texts = [[span_text(m) for m in it.messages if m["role"] == agent_role] for it in items]
        prompts = [self.prompt(it, agent_role) for it in items]
        results = [SpanResult(None, "not judged")] * len(items)
        todo = list(range(len(items)))
        for attempt in range(self.retries + 1):
            if not todo:
                break
            seeds = [stable_int("span-judge", self.seed, items[i].key, attempt) for i in todo]
            replies = self.generate([prompts[i] for i in todo], [0.0 if attempt == 0 else 0.7] * len(todo), seeds)
            left = []
            for i, reply in zip(todo, replies, strict=True):
                try:
                    results[i] = SpanResult(parse_span_reply(reply, texts[i]))
                except ValueError as e:
                    snippet = (reply or "")[:80].replace("\n", " ")
                    results[i] = SpanResult(None, f"unparseable span reply after {attempt + 1} tries ({e}): "
                                                  f"{snippet!r}")
                    left.append(i)
            todo = left
        return results


class SpanJudge:
    """``tod`` or ``rubric`` behind one ``judge(items)``."""

    def __init__(self, spec: str, rubric: RubricSpans | None = None, agent_role: str = "assistant"):
        self.spec, self.rubric, self.agent_role = spec, rubric, agent_role

    def judge(self, items: list[JudgeItem]) -> list[SpanResult]:
        if self.rubric is not None:
            return self.rubric.judge(items, self.agent_role)
        return [SpanResult(TodRules().spans(it, self.agent_role)) for it in items]


def check_span_judge(spec: str, judge_model: str) -> None:
    """RwftError for a span judge other than ``tod`` / ``rubric`` or a rubric without --judge-model."""
    if spec not in SPAN_JUDGES:
        raise RwftError(f"--spans --judge {spec}: expected a span judge, one of {', '.join(SPAN_JUDGES)}")
    if spec == "rubric" and not judge_model:
        raise RwftError("--spans --judge rubric: the rubric span judge needs --judge-model (a model or http(s):// URL)")


def make_span_judge(spec: str, judge_model: str = "", api_model: str = "", api_key_env: str = "OPENAI_API_KEY",
                    retries: int = 2, seed: int = 0, max_new_tokens: int = 256, agent_role: str = "assistant",
                    backend: Any = None) -> SpanJudge:
    """A span judge from ``--judge``; ``backend`` (an object with ``generate``) overrides ``judge_model``."""
    if backend is None:
        check_span_judge(spec, judge_model)
    if spec != "rubric":
        return SpanJudge(spec, None, agent_role)
    if backend is None:
        from rwft.rollout.policies import make_policy

        backend = make_policy(judge_model, None, max_new_tokens, api_model, api_key_env)
    return SpanJudge(spec, RubricSpans(backend.generate, retries, seed), agent_role)
