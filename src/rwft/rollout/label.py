"""``rwft label``: add or replace rewards on logged conversations with a judge (resumable).

Reads any file ``rwft validate`` reads (JSONL, Parquet, a ``datasets`` directory; rewards may be
missing), judges the conversations in batches and writes them, in input order, with ``reward``
replaced and ``metadata.judge``, ``metadata.scores`` and ``metadata.judge_failure`` set. A reply the
judge cannot parse after its retries gives ``"reward": null`` with the reason in
``metadata.judge_failure``; ``--only-missing`` on the labelled file then re-judges just those records.

Resumable like ``rwft collect``: whole fsynced lines, a sidecar ``OUT.args.json`` holding the
arguments and the input's SHA-256, and a rerun that continues after the last complete line.

``--per-turn``: turn-level rewards by redistribution (``rwft.objectives.credit``). The judge also scores
each prefix of the conversation that ends after an agent turn: ``rubric`` grades the transcript up to
there, ``exact`` the prefix's last answer, ``env`` asks the environment named in ``metadata.env``
(``Environment.prefix_score``; twenty-questions rates the candidates left). Agent turn t gets
``reward`` R(<=t) - R(<=t-1) on its message (every other message reward is removed), the record keeps
its conversation ``reward`` (their sum) and ``metadata.per_turn`` says how they were made, with the
prefix scores. A prefix the judge cannot score makes the record's reward null (``--only-missing``
retries it).

``--spans``: ``--judge`` names a span judge (``rollout.span_judges``: ``tod`` or ``rubric``) and each agent
message gets the ``spans`` it returns (replacing any it had); rewards are kept as they are;
``metadata.span_judge`` names the judge, ``metadata.span_failure`` holds why a rubric reply could not be
parsed (the record's messages then carry no spans; the summary counts these failures, and
``--only-missing`` re-judges only the records without ``span_judge`` or with a failure).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.data.conversation import Conversation
from rwft.data.io import JsonlAppender, load_conversations
from rwft.errors import RwftError
from rwft.objectives.credit import redistribute
from rwft.rollout.collect import OutputOptions, check_output, fingerprint, prepare_output
from rwft.rollout.judges import Judge, JudgeItem, JudgeOptions, JudgeResult


@dataclass
class LabelConfig(OutputOptions, JudgeOptions):
    """Options of ``rwft label`` (the output's: ``OutputOptions``; the judge's: ``JudgeOptions``)."""

    data: str
    """conversations to label (JSONL, Parquet or a datasets directory)"""
    judge: str = field(default="exact", kw_only=True)
    """env, exact, rubric[.DIM] or a weighted combination such as exact:0.5,rubric:0.5 (not env by default here:
    logs from elsewhere carry no environment reward)"""
    only_missing: bool = False
    """judge only conversations whose reward is missing or null; copy the others unchanged"""
    agent_role: str = "assistant"
    """role of the agent's messages"""
    batch_size: int = 16
    """conversations judged per call"""
    max_new_tokens: int = 64
    """tokens of the judge's reply"""
    seed: int = 0
    """seed of the judge's sampling on retries"""
    spans: bool = False
    """write error spans {start, end, severity} on the agent messages instead of rewards; --judge is then a span
    judge: tod (rules over an --env tod episode's goal and database) or rubric (--judge-model asked for JSON)"""
    per_turn: bool = False
    """also write turn-level rewards by redistribution: the judge scores the conversation cut after each agent
    turn, R(<=t), and agent turn t gets reward R(<=t) - R(<=t-1) (R(<=0) = 0), so they sum to the reward"""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode())
                h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def run_label(config: LabelConfig) -> dict[str, Any]:
    """Label ``config.data`` into ``config.out``; returns a summary (count, failures)."""
    from tqdm.auto import tqdm

    if config.batch_size < 1:
        raise RwftError(f"--batch-size {config.batch_size}: expected a positive integer")
    if config.spans:
        from rwft.rollout.span_judges import check_span_judge

        if config.per_turn:
            raise RwftError("--spans and --per-turn: choose one (spans keep the rewards as they are)")
        check_span_judge(config.judge, config.judge_model)
    else:
        config.check_judge()
    src = Path(config.data)
    if src.resolve() == Path(config.out).resolve():
        raise RwftError(f"--out {config.out}: must differ from --data")
    convs = load_conversations(src, config.agent_role, require_reward=False)
    args = dict(fingerprint(config), data_sha256=file_digest(src))
    for option in ("per_turn", "spans"):
        if not args[option]:
            del args[option]  # files labelled before the option existed resume as they were
    out = Path(config.out)
    done = check_output(out, args, config.overwrite, "label")
    summary: dict[str, Any] = {"out": str(out), "conversations": len(convs), "resumed_from": done, "failures": 0}
    if done >= len(convs):
        return summary
    judge = _span_judge(config) if config.spans else config.build_judge(config.seed, config.max_new_tokens)
    envs: dict[str, Any] = {}
    if config.per_turn and judge.uses_env:  # refuse logs the environment cannot score before writing
        for c in convs[done:]:
            turns = c.agent_turns(config.agent_role)
            if len(turns) > 1 and not (config.only_missing and c.reward is not None):
                _env_prefix_score(c, c.messages[: turns[0] + 1], f"{config.data} record {c.id}", envs)
    done = prepare_output(out, args, config.overwrite, "label")  # the judge loaded: now touch OUT
    summary["resumed_from"] = done
    bar = tqdm(total=len(convs), initial=done, desc="label", unit="conv", disable=not config.progress)
    bs = config.batch_size
    with JsonlAppender(out) as writer:
        for start in range((done // bs) * bs, len(convs), bs):
            batch = convs[start : start + bs]
            if config.spans:
                records = label_spans(judge, batch, config)
                summary["failures"] += sum(r["metadata"].get("span_failure") is not None for r in records)
                skip = max(0, done - start)
                writer.write(records[skip:])
                bar.update(len(records) - skip)
                continue
            todo = [c for c in batch if not (config.only_missing and c.reward is not None)]
            if config.per_turn:
                per_turn = judge_per_turn(judge, todo, config, envs)
                results = {id(c): res for c, (res, _) in zip(todo, per_turn, strict=True)}
                credits = {id(c): cr for c, (_, cr) in zip(todo, per_turn, strict=True)}
            else:
                items = [JudgeItem(c.messages, c.metadata, f"{config.data} record {c.id}") for c in todo]
                results = dict(zip((id(c) for c in todo), judge.judge(items), strict=True)) if todo else {}
                credits = {}
            records = []
            for c in batch:
                rec = c.to_record()
                res = results.get(id(c))
                if res is not None:
                    rec["reward"] = res.reward
                    rec["metadata"] = dict(c.metadata, judge=judge.spec, scores=res.scores,
                                           judge_failure=res.failure)
                    summary["failures"] += res.failure is not None
                    if credits.get(id(c)) is not None:
                        rec["messages"], rec["metadata"]["per_turn"] = credits[id(c)]
                records.append(rec)
            skip = max(0, done - start)
            writer.write(records[skip:])
            bar.update(len(records) - skip)
    bar.close()
    return summary


def _span_judge(config: LabelConfig):
    from rwft.rollout.span_judges import make_span_judge

    return make_span_judge(config.judge, config.judge_model, config.api_model, config.api_key_env,
                           config.judge_retries, config.seed, config.max_new_tokens, config.agent_role)


def label_spans(judge, batch: list[Conversation], config: LabelConfig) -> list[dict[str, Any]]:
    """The batch's records with the span judge's ``spans`` on their agent messages (see the module docstring)."""
    from rwft.rollout.span_judges import SpanResult, with_spans

    def done(c: Conversation) -> bool:
        return config.only_missing and "span_judge" in c.metadata and c.metadata.get("span_failure") is None

    todo = [c for c in batch if not done(c)]
    items = [JudgeItem(c.messages, c.metadata, f"{config.data} record {c.id}") for c in todo]
    results: dict[int, SpanResult] = dict(zip((id(c) for c in todo), judge.judge(items) if todo else [],
                                              strict=True))
    records = []
    for c in batch:
        rec = c.to_record()
        res = results.get(id(c))
        if res is not None:
            rec["messages"], rec["metadata"] = with_spans(c.messages, c.metadata, res, judge.spec, config.agent_role)
        records.append(rec)
    return records


def _env_prefix_score(conv: Conversation, prefix: list[dict[str, Any]], key: str, envs: dict[str, Any]) -> float:
    """The prefix's score by the environment that played ``conv`` (``metadata.env`` and ``env_options``;
    environments are built once per setting in ``envs``); RwftError if it cannot score prefixes."""
    from rwft.rollout.envs.base import make_env

    name, options = conv.metadata.get("env"), conv.metadata.get("env_options") or {}
    if not isinstance(name, str) or not isinstance(options, dict):
        raise RwftError(f"{key}: --per-turn with judge 'env' needs metadata.env (and env_options), as written "
                        "by rwft collect")
    cache_key = json.dumps([name, options], sort_keys=True)
    if cache_key not in envs:
        envs[cache_key] = make_env(name, options)
    score = envs[cache_key].prefix_score(prefix, conv.metadata)
    if score is None:
        raise RwftError(f"{key}: --per-turn with judge 'env': environment {name!r} cannot score a prefix of "
                        "this conversation (see Environment.prefix_score); use --judge exact or rubric")
    return float(score)


def judge_per_turn(judge: Judge, convs: list[Conversation], config: LabelConfig, envs: dict[str, Any]
                   ) -> list[tuple[JudgeResult, tuple[list[dict[str, Any]], dict[str, Any]] | None]]:
    """Per conversation: the judge's result on the whole conversation and, unless some prefix failed, the
    messages with the redistributed turn rewards and ``metadata.per_turn``.

    Every prefix ending after an agent turn but the last is judged as a conversation of its own (items keyed
    ``... record ID turn t``, so a rubric judge's seeds do not depend on the batch), in calls of at most
    ``batch_size`` items."""
    items: list[JudgeItem] = []
    spans = []
    for c in convs:
        key = f"{config.data} record {c.id}"
        turns = c.agent_turns(config.agent_role)
        first = len(items)
        for t, i in enumerate(turns[:-1], start=1):
            prefix = c.messages[: i + 1]
            meta = c.metadata
            if judge.uses_env:
                meta = dict(c.metadata, env_reward=_env_prefix_score(c, prefix, key, envs))
            items.append(JudgeItem(prefix, meta, f"{key} turn {t}"))
        items.append(JudgeItem(c.messages, c.metadata, key))
        spans.append((first, len(items)))
    bs = config.batch_size
    results = [r for k in range(0, len(items), bs) for r in judge.judge(items[k : k + bs])]
    out: list[tuple[JudgeResult, tuple[list[dict[str, Any]], dict[str, Any]] | None]] = []
    for c, (a, b) in zip(convs, spans, strict=True):
        full, prefixes = results[b - 1], results[a : b - 1]
        failed = next(((t, r) for t, r in enumerate(prefixes, start=1) if r.reward is None), None)
        if full.reward is None or failed is not None:
            why = full.failure if full.reward is None else f"prefix up to agent turn {failed[0]}: {failed[1].failure}"
            out.append((JudgeResult(None, full.scores, why), None))
            continue
        scores = [r.reward for r in prefixes]
        credit = redistribute(scores, full.reward)
        messages = [{k: v for k, v in m.items() if k != "reward"} for m in c.messages]
        for i, r in zip(c.agent_turns(config.agent_role), credit, strict=True):
            messages[i]["reward"] = r
        meta = {"method": "redistribution", "rule": "r_t = R(<=t) - R(<=t-1), R(<=0) = 0, R(<=T) = reward",
                "judge": judge.spec, "prefix_scores": [*scores, full.reward]}
        out.append((full, (messages, meta)))
    return out
