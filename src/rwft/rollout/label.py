"""``rwft label``: add or replace rewards on logged conversations with a judge (resumable).

Reads any file ``rwft validate`` reads (JSONL, Parquet, a ``datasets`` directory; rewards may be
missing), judges the conversations in batches and writes them, in input order, with ``reward``
replaced and ``metadata.judge``, ``metadata.scores`` and ``metadata.judge_failure`` set. A reply the
judge cannot parse after its retries gives ``"reward": null`` with the reason in
``metadata.judge_failure``; ``--only-missing`` on the labelled file then re-judges just those records.

Resumable like ``rwft collect``: whole fsynced lines, a sidecar ``OUT.args.json`` holding the
arguments and the input's SHA-256, and a rerun that continues after the last complete line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwft.data.io import JsonlAppender, load_conversations
from rwft.errors import RwftError
from rwft.rollout.collect import check_output, fingerprint, prepare_output
from rwft.rollout.judges import JudgeItem, make_judge, parse_spec


@dataclass
class LabelConfig:
    data: str
    """conversations to label (JSONL, Parquet or a datasets directory)"""
    out: str
    """output JSONL file (resumed; see --overwrite)"""
    judge: str = "exact"
    """env, exact, rubric[.DIM] or a weighted combination such as exact:0.5,rubric:0.5"""
    judge_model: str = ""
    """model preset/directory or http(s):// URL of the rubric judge"""
    judge_retries: int = 2
    """extra tries for an unparseable judge reply before it is recorded as a failure"""
    api_model: str = ""
    """model name sent to an http(s):// judge endpoint"""
    api_key_env: str = "OPENAI_API_KEY"
    """name of the environment variable holding the endpoint's API key (the key is never written)"""
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
    overwrite: bool = False
    """start over: delete OUT and its sidecar first"""
    progress: bool = True
    """show a progress bar"""


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
    comps = parse_spec(config.judge)
    if any(kind == "rubric" for kind, _, _ in comps) and not config.judge_model:
        raise RwftError(f"--judge {config.judge}: the rubric judge needs --judge-model")
    src = Path(config.data)
    if src.resolve() == Path(config.out).resolve():
        raise RwftError(f"--out {config.out}: must differ from --data")
    convs = load_conversations(src, config.agent_role, require_reward=False)
    args = dict(fingerprint(config), data_sha256=file_digest(src))
    out = Path(config.out)
    done = check_output(out, args, config.overwrite, "label")
    summary: dict[str, Any] = {"out": str(out), "conversations": len(convs), "resumed_from": done, "failures": 0}
    if done >= len(convs):
        return summary
    judge = make_judge(config.judge, config.judge_model, config.api_model, config.api_key_env,
                       config.judge_retries, config.seed, config.max_new_tokens)
    done = prepare_output(out, args, config.overwrite, "label")  # the judge loaded: now touch OUT
    summary["resumed_from"] = done
    bar = tqdm(total=len(convs), initial=done, desc="label", unit="conv", disable=not config.progress)
    bs = config.batch_size
    with JsonlAppender(out) as writer:
        for start in range((done // bs) * bs, len(convs), bs):
            batch = convs[start : start + bs]
            todo = [c for c in batch if not (config.only_missing and c.reward is not None)]
            items = [JudgeItem(c.messages, c.metadata, f"{config.data} record {c.id}") for c in todo]
            results = dict(zip((id(c) for c in todo), judge.judge(items), strict=True)) if todo else {}
            records = []
            for c in batch:
                rec = c.to_record()
                res = results.get(id(c))
                if res is not None:
                    rec["reward"] = res.reward
                    rec["metadata"] = dict(c.metadata, judge=judge.spec, scores=res.scores,
                                           judge_failure=res.failure)
                    summary["failures"] += res.failure is not None
                records.append(rec)
            skip = max(0, done - start)
            writer.write(records[skip:])
            bar.update(len(records) - skip)
    bar.close()
    return summary
