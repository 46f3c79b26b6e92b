"""Judges: turn a finished conversation into scores per dimension and one reward.

- ``env``: the environment's own reward (exact match for mcqa and clarify, -turns for twenty-questions),
  as computed when the episode was collected (``metadata.env_reward``).
- ``exact``: exact match of the final answer with ``metadata.gold``: an option letter (the last
  "answer is X" of the last agent turn) or, for free-text golds (a string or list of strings), a
  normalized gold answer contained in the last agent turn. 1 or 0.
- ``rubric``: an LLM judge (a local HF model or an OpenAI-compatible endpoint) grades the paper's six
  dimensions 0-10; each is rescaled to [0, 1]; ``rubric`` alone means ``rubric.overall`` (the paper's
  reward), ``rubric.accuracy`` etc. pick another dimension.
- A weighted combination: ``exact:0.5,rubric:0.5`` gives ``0.5 * exact + 0.5 * overall`` (weights as
  given, not renormalized).

Failure policy: a rubric reply that does not hold all six scores in 0-10 is asked again (new seed,
temperature 0.7) up to ``retries`` times; if it still fails, the result has ``reward=None`` and
``failure`` says why. The collector and ``rwft label`` then write ``"reward": null`` with
``metadata.judge_failure`` set: the episode is kept and flagged, never silently scored 0; rerunning
``rwft label`` on the file retries exactly those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import normalize, stable_int

DIMENSIONS = ("Overall", "Accuracy", "Reasoning", "Comprehensiveness", "Pedagogical value", "Confidence calibration")
KEYS = tuple(d.lower().replace(" ", "_") for d in DIMENSIONS)

RUBRIC_PROMPT = """You are grading how well an AI assistant helped in the conversation below.
{reference}Rate the assistant's turns on each criterion from 0 (worst) to 10 (best):
- Overall: the overall quality of the assistant's help.
- Accuracy: whether its statements and final answer are correct.
- Reasoning: whether its reasoning is sound and easy to follow.
- Comprehensiveness: whether it covers everything the user asked.
- Pedagogical value: whether a learner would understand the topic better afterwards.
- Confidence calibration: whether its stated confidence matches how likely it is to be right.

Conversation:
{transcript}

Reply with exactly these six lines and nothing else, each with a whole number from 0 to 10:
Overall: N
Accuracy: N
Reasoning: N
Comprehensiveness: N
Pedagogical value: N
Confidence calibration: N"""


@dataclass
class JudgeResult:
    reward: float | None
    scores: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


@dataclass
class JudgeItem:
    """What a judge sees: the messages and the record's metadata (gold answer, env reward, ...)."""

    messages: list[dict[str, Any]]
    metadata: dict[str, Any]
    key: str = ""


# ---------------------------------------------------------------------------- parsing


def parse_rubric(text: str) -> dict[str, float]:
    """The six scores in [0, 1] from a judge reply; raises ValueError naming what is missing or bad.

    Accepts ``Name: 7`` lines (also ``7/10``, markdown bold, any case) or a JSON object with the
    names as keys (spaces or underscores)."""
    raw: dict[str, float] = {}
    obj = _json_object(text)
    if obj is not None:
        for key, value in obj.items():
            k = str(key).strip().lower().replace(" ", "_")
            if k in KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                raw[k] = float(value)
    clean = (text or "").replace("*", "")
    for dim, key in zip(DIMENSIONS, KEYS, strict=True):
        if key in raw:
            continue
        name = re.escape(dim).replace(r"\ ", r"[\s_]+")
        m = re.search(rf"{name}\s*[:=\-]\s*(\d+(?:\.\d+)?)(?:\s*/\s*10)?", clean, re.IGNORECASE)
        if m:
            raw[key] = float(m.group(1))
    missing = [d for d, k in zip(DIMENSIONS, KEYS, strict=True) if k not in raw]
    if missing:
        raise ValueError(f"no score for {', '.join(missing)}")
    bad = [f"{k}={v:g}" for k, v in raw.items() if not 0 <= v <= 10]
    if bad:
        raise ValueError(f"scores outside 0-10: {', '.join(bad)}")
    return {k: raw[k] / 10.0 for k in KEYS}


def _json_object(text: str) -> dict[str, Any] | None:
    start, end = (text or "").find("{"), (text or "").rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def transcript(messages: list[dict[str, Any]], max_chars: int = 2000) -> str:
    lines = []
    for m in messages:
        content = m["content"] if len(m["content"]) <= max_chars else m["content"][:max_chars] + " [...]"
        lines.append(f"[{m['role']}] {content}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- judges


def exact_match(item: JudgeItem) -> float:
    """1.0 if the last agent turn's final answer matches ``metadata.gold`` (see the module docstring)."""
    from rwft.rollout.envs.mcqa import extract_choice

    gold = item.metadata.get("gold")
    if gold is None:
        raise RwftError(f"{item.key}: judge 'exact' needs metadata.gold (the reference answer)")
    last = next((m["content"] for m in reversed(item.messages) if m["role"] == "assistant"), "")
    if isinstance(gold, str) and len(gold) == 1 and gold.isalpha():
        return 1.0 if extract_choice(last, [chr(c) for c in range(65, 91)]) == gold.upper() else 0.0
    golds = [gold] if isinstance(gold, str) else list(gold)
    text = normalize(last)
    return 1.0 if any(normalize(str(g)) and normalize(str(g)) in text for g in golds) else 0.0


class RubricJudge:
    """The LLM rubric judge over any ``generate(conversations, temperatures, seeds)`` backend."""

    def __init__(self, generate: Callable[..., list[str]], name: str, retries: int = 2, seed: int = 0):
        self.generate = generate
        self.name = name
        self.retries = retries
        self.seed = seed

    def prompt(self, item: JudgeItem) -> list[dict[str, str]]:
        gold = item.metadata.get("gold")
        reference = f"The reference answer is: {gold}.\n" if gold is not None else ""
        agent_msgs = [m for m in item.messages if m["role"] != "system"]
        text = RUBRIC_PROMPT.format(reference=reference, transcript=transcript(agent_msgs))
        return [{"role": "user", "content": text}]

    def score(self, items: list[JudgeItem]) -> list[tuple[dict[str, float] | None, str | None]]:
        """Per item: the six scores, or None and the reason after ``1 + retries`` tries."""
        results: list[tuple[dict[str, float] | None, str | None]] = [(None, "not judged")] * len(items)
        todo = list(range(len(items)))
        prompts = [self.prompt(it) for it in items]
        for attempt in range(self.retries + 1):
            if not todo:
                break
            temps = [0.0 if attempt == 0 else 0.7] * len(todo)
            seeds = [stable_int("judge", self.seed, items[i].key, attempt) for i in todo]
            replies = self.generate([prompts[i] for i in todo], temps, seeds)
            left = []
            for i, reply in zip(todo, replies, strict=True):
                try:
                    results[i] = (parse_rubric(reply), None)
                except ValueError as e:
                    snippet = (reply or "")[:80].replace("\n", " ")
                    results[i] = (None, f"unparseable judge reply after {attempt + 1} tries ({e}): {snippet!r}")
                    left.append(i)
            todo = left
        return results


class Judge:
    """A weighted combination of components ``(kind, dimension, weight)``; see ``make_judge``."""

    def __init__(self, spec: str, components: list[tuple[str, str, float]], rubric: RubricJudge | None):
        self.spec = spec
        self.components = components
        self.rubric = rubric

    @property
    def uses_env(self) -> bool:
        return any(kind == "env" for kind, _, _ in self.components)

    def judge(self, items: list[JudgeItem]) -> list[JudgeResult]:
        rubric = self.rubric.score(items) if self.rubric else [(None, None)] * len(items)
        out = []
        for item, (rscores, rfail) in zip(items, rubric, strict=True):
            scores: dict[str, float] = {}
            if "env_reward" in item.metadata and item.metadata["env_reward"] is not None:
                scores["env"] = float(item.metadata["env_reward"])
            if rscores:
                scores.update(rscores)
            failure = rfail if self.rubric else None
            reward = 0.0
            for kind, dim, weight in self.components:
                if kind == "exact":
                    scores["exact"] = exact_match(item)
                    reward += weight * scores["exact"]
                elif kind == "env":
                    if "env" not in scores:
                        raise RwftError(f"{item.key}: judge 'env' needs metadata.env_reward (written by collect)")
                    reward += weight * scores["env"]
                elif rscores is not None:
                    reward += weight * rscores[dim]
            out.append(JudgeResult(None if failure else reward, scores, failure))
        return out


def parse_spec(spec: str) -> list[tuple[str, str, float]]:
    """``env``, ``exact``, ``rubric[.dimension]``, optionally ``:weight``, joined by commas."""
    comps = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition(":")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise RwftError(f"--judge {spec}: weight {w!r} of {name!r} is not a number") from None
        kind, _, dim = name.partition(".")
        if kind not in ("env", "exact", "rubric") or (dim and kind != "rubric"):
            raise RwftError(f"--judge {spec}: unknown judge {name!r}; expected env, exact, rubric or rubric.DIMENSION")
        dim = dim or "overall"
        if kind == "rubric" and dim not in KEYS:
            raise RwftError(f"--judge {spec}: unknown rubric dimension {dim!r}; expected one of {', '.join(KEYS)}")
        comps.append((kind, dim, weight))
    if not comps:
        raise RwftError("--judge: empty; expected env, exact, rubric or a combination such as exact:0.5,rubric:0.5")
    return comps


def check_judge_spec(spec: str, judge_model: str) -> list[tuple[str, str, float]]:
    """The components of ``spec`` (``parse_spec``); RwftError when one is a rubric and ``judge_model`` is empty."""
    comps = parse_spec(spec)
    if any(kind == "rubric" for kind, _, _ in comps) and not judge_model:
        raise RwftError(f"--judge {spec}: the rubric judge needs --judge-model (a model or http(s):// URL)")
    return comps


def make_judge(spec: str, judge_model: str = "", api_model: str = "", api_key_env: str = "OPENAI_API_KEY",
               retries: int = 2, seed: int = 0, max_new_tokens: int = 64, backend: Any = None) -> Judge:
    """A judge from its command-line spec; ``backend`` (an object with ``generate``) overrides ``judge_model``."""
    comps = parse_spec(spec) if backend is not None else check_judge_spec(spec, judge_model)
    rubric = None
    if any(kind == "rubric" for kind, _, _ in comps):
        if backend is None:
            from rwft.rollout.policies import make_policy

            backend = make_policy(judge_model, None, max_new_tokens, api_model, api_key_env)
        rubric = RubricJudge(backend.generate, getattr(backend, "name", "judge"), retries, seed)
    return Judge(spec, comps, rubric)


@dataclass(kw_only=True)
class JudgeOptions:
    """The judge options of ``rwft collect``, ``label`` and ``eval``: a mixin of their configs (keyword-only, so
    it goes before their required fields). A verb with another default overrides just that field."""

    judge: str = "env"
    """env, exact, rubric[.DIM] or a weighted combination such as exact:0.5,rubric:0.5"""
    judge_model: str = ""
    """model preset/directory or http(s):// URL of the rubric judge"""
    judge_retries: int = 2
    """extra tries for an unparseable judge reply before it is recorded as a failure"""
    api_model: str = ""
    """model name sent to http(s):// endpoints: the --judge-model's and, in collect and eval, the --policy's"""
    api_key_env: str = "OPENAI_API_KEY"
    """name of the environment variable holding the endpoint's API key (the key is never written)"""

    def check_judge(self) -> None:
        """RwftError for a bad --judge, a rubric judge without --judge-model or --judge-retries below 0; call it
        before anything is loaded or written."""
        if self.judge_retries < 0:
            raise RwftError(f"--judge-retries {self.judge_retries}: expected >= 0")
        check_judge_spec(self.judge, self.judge_model)

    def judge_options(self) -> dict[str, Any]:
        """These options as keyword arguments (to pass them on to another verb's config)."""
        return {f.name: getattr(self, f.name) for f in fields(JudgeOptions)}

    def judge_backend(self, max_new_tokens: int = 64) -> Any:
        """The rubric judge's model, loaded (None when --judge has no rubric): loaded once, it serves several
        ``build_judge`` calls."""
        if not any(kind == "rubric" for kind, _, _ in check_judge_spec(self.judge, self.judge_model)):
            return None
        from rwft.rollout.policies import make_policy

        return make_policy(self.judge_model, None, max_new_tokens, self.api_model, self.api_key_env)

    def build_judge(self, seed: int, max_new_tokens: int = 64, backend: Any = None) -> Judge:
        """The judge these options describe; its rubric model is ``backend`` if given, else loaded here."""
        return make_judge(self.judge, self.judge_model, self.api_model, self.api_key_env, self.judge_retries,
                          seed, max_new_tokens, backend)
