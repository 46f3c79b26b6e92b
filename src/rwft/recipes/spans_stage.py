"""The error-span stage of ``rwft compare``: methods named ``METHOD+spans`` train on the logs labelled once by
``rwft label --spans --judge SPAN_JUDGE`` (``OUTPUT/<logs' stem>-spans.jsonl``; per-turn's turn-credit logs
get their own, ``logs-per-turn-spans.jsonl``), with ``--span-weight`` as lambda: a token in an error span
weighs w - lambda * p (``train.collate.token_weights``). Their plain counterparts train with lambda 0, so a
pair differs only in the spans, even where ``--data`` already carries some.

Only the objectives whose loss takes per-token weights accept spans: the ``weighted`` trainer's (sft,
star-gate, refit, swift, per-turn) and star-gate-d's (``distill``, the same collator). Q-SFT's targets,
DPO's and StepDPO's pairs have no per-token weight, so ``qsft+spans``, ``dpo+spans`` and ``stepdpo+spans``
are refused, as is ``base+spans`` (nothing is trained).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rwft.data.conversation import SEVERITIES
from rwft.errors import RwftError
from rwft.objectives.registry import Objective

SUFFIX = "+spans"
SPAN_TRAINERS = ("weighted", "distill")
"""Trainers whose loss weighs each token (``train.collate.WeightedCollator``), so they can take error spans."""


def split_method(method: str) -> tuple[str, bool]:
    """``("refit", True)`` for ``refit+spans``, ``("refit", False)`` for ``refit``."""
    if method.endswith(SUFFIX):
        return method.removesuffix(SUFFIX), True
    return method, False


def takes_spans(objective: Objective | None) -> bool:
    """Whether a method's objective (None: base, untrained) can train on error spans."""
    return objective is not None and objective.trainer in SPAN_TRAINERS


def check_span_methods(methods: list[str], known: dict[str, Objective | None]) -> None:
    """RwftError for a ``+spans`` method whose objective cannot take spans (module docstring)."""
    able = [m for m, o in known.items() if takes_spans(o)]
    for method in methods:
        name, spans = split_method(method)
        if spans and name in known and not takes_spans(known[name]):
            why = "nothing is trained" if known[name] is None else \
                f"its trainer ({known[name].trainer}) has no per-token weights"
            raise RwftError(f"--methods {method}: {name} cannot train on error spans ({why}); methods that take "
                            f"{SUFFIX}: {', '.join(able)}")


def span_counts(path: str | Path, agent_role: str = "assistant") -> dict[str, int]:
    """Spans per severity on a labelled file's agent messages, the agent messages and conversations with at
    least one span, all agent messages and conversations, and the judge's failures (``metadata.span_failure``)."""
    counts = dict.fromkeys([*SEVERITIES, "messages", "conversations", "agent_messages", "all", "failures"], 0)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        agents = [m for m in rec["messages"] if m["role"] == agent_role]
        marked = [m for m in agents if m.get("spans")]
        for m in marked:
            for s in m["spans"]:
                counts[s["severity"]] += 1
        counts["messages"] += len(marked)
        counts["conversations"] += bool(marked)
        counts["agent_messages"] += len(agents)
        counts["all"] += 1
        counts["failures"] += (rec.get("metadata") or {}).get("span_failure") is not None
    return counts


def counts_line(counts: dict[str, int], judge: str) -> str:
    """``error spans (judge tod): 12 minor, 30 major, 4 critical on 40 of 500 agent messages, in 35 of 120
    conversations``, and the failures when there are some."""
    sev = ", ".join(f"{counts[s]} {s}" for s in SEVERITIES)
    line = (f"error spans (judge {judge}): {sev} on {counts['messages']} of {counts['agent_messages']} agent "
            f"messages, in {counts['conversations']} of {counts['all']} conversations")
    return line + (f"; {counts['failures']} judge failures (no spans)" if counts["failures"] else "")


def label_spans(config: Any, data: str, out: Path) -> tuple[str, dict[str, int]]:
    """``OUTPUT/<data's stem>-spans.jsonl``: ``data`` with the span judge's spans (``rwft label --spans``,
    resumable), made once; returns its path and ``span_counts``. ``config`` is a ``CompareConfig``."""
    from rwft.rollout.label import LabelConfig, run_label

    path = out / f"{Path(data).stem}-spans.jsonl"
    t0 = time.time()
    run_label(LabelConfig(data=data, out=str(path), judge=config.span_judge, spans=True,
                          judge_model=config.span_judge_model, api_model=config.span_api_model, progress=False))
    counts = span_counts(path)
    print(f"{counts_line(counts, config.span_judge)} in {path} ({time.time() - t0:.0f} s)", flush=True)
    return str(path), counts


def pair_lines(results: list[dict[str, Any]], metric: str = "reward") -> list[str]:
    """One line per ``METHOD+spans`` whose plain METHOD also ran: whether its ``metric`` interval lies above
    ("beats"), below ("loses to") or overlaps the plain method's (``eval.report.verdicts``)."""
    from rwft.eval.report import summarize, verdicts

    names = {r["method"] for r in results}
    lines = []
    for method in dict.fromkeys(r["method"] for r in results):
        name, spans = split_method(method)
        if spans and name in names:
            rows = summarize([r for r in results if r["method"] in (name, method)], [metric])
            lines += verdicts(rows, metric, ours=(method,))
    return lines


def check_span_judge_inputs(config: Any) -> None:
    """The +spans methods' judge: known, with its model, and ``tod`` only on logs of --env tod."""
    from rwft.presets import locate_model
    from rwft.rollout.span_judges import check_span_judge

    check_span_judge(config.span_judge, config.span_judge_model)
    if config.span_judge == "tod" and not config.data and config.env != "tod":
        raise RwftError(f"--span-judge tod: judges episodes of --env tod, not of --env {config.env} (use "
                        "--span-judge rubric with --span-judge-model)")
    url = config.span_judge_model.startswith(("http://", "https://"))
    if config.span_judge == "rubric" and not url:
        locate_model(config.span_judge_model)
    elif config.span_judge == "rubric" and not config.span_api_model:
        raise RwftError(f"--span-judge-model {config.span_judge_model}: an http(s):// judge needs "
                        "--span-api-model (the model name it serves)")
