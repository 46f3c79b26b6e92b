"""Judged language quality: the paper's six rubric dimensions on evaluation episodes, and how far the judge agrees
with exact match.

``judge_episodes`` asks a rubric judge (``rollout.judges.RubricJudge`` over any backend rwft has: a local model
or an OpenAI-compatible endpoint) to grade finished episodes on Overall, Accuracy, Reasoning,
Comprehensiveness, Pedagogical value and Confidence calibration (each rescaled to [0, 1]); a reply that
does not parse is retried and, if it still fails, counted as a failure, never as a score.
``quality_metrics`` gives one mean per dimension (``judge_overall``, ...) and ``judge_failure`` (the share
of episodes without a score); ``judge_trust`` measures the judge against exact-match correctness (the
environment's ``correct``) on the same episodes: how often replies fail to parse, how spread the scores
are, and whether the Accuracy score separates right from wrong final answers (AUC and correlation).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from rwft.rollout.judges import KEYS, JudgeItem, RubricJudge


def judge_episodes(records: list[dict[str, Any]], generate, seed: int = 0, retries: int = 1,
                   name: str = "judge") -> list[dict[str, Any]]:
    """One row per record: ``{"key", "correct", "scores" (dict or None), "failure" (str or None)}``."""
    items = [JudgeItem(r["messages"], r.get("metadata", {}), key=f"{r.get('context_id', i)}/{i}")
             for i, r in enumerate(records)]
    scored = RubricJudge(generate, name, retries, seed).score(items) if items else []
    rows = []
    for item, (scores, failure) in zip(items, scored, strict=True):
        correct = item.metadata.get("correct")
        rows.append({"key": item.key, "correct": None if correct is None else bool(correct),
                     "scores": scores, "failure": failure})
    return rows


def judge_file(episodes: Path, out: Path, n: int, judge_model: str, cache: dict[str, Any],
               seed: int = 0, api_model: str = "") -> list[dict[str, Any]]:
    """The first ``n`` episodes of a JSONL file judged by ``judge_model`` (a model preset/directory or an
    http(s):// URL serving ``api_model``, loaded into ``cache["backend"]`` on first use), written once to ``out``
    and read from it afterwards."""
    from rwft.data.io import write_jsonl_atomic
    from rwft.rollout.policies import make_policy

    if out.exists():
        return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    records = [json.loads(x) for x in episodes.read_text().splitlines() if x.strip()][:n]
    if "backend" not in cache:
        cache["backend"] = make_policy(judge_model, None, 64, api_model=api_model)
    rows = judge_episodes(records, cache["backend"].generate, seed=seed)
    write_jsonl_atomic(out, rows)
    return rows


def quality_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``judge_<dimension>``: the mean score over parsed replies (NaN if none); ``judge_failure``: the share
    of rows without scores."""
    ok = [r["scores"] for r in rows if r["scores"]]
    out = {f"judge_{k}": statistics.fmean(s[k] for s in ok) if ok else math.nan for k in KEYS}
    out["judge_failure"] = (len(rows) - len(ok)) / len(rows) if rows else math.nan
    return out


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counted half; NaN if a side is empty."""
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def correlation(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than 3 pairs."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return statistics.correlation(x, y)


def judge_trust(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How far the judge can be trusted on these episodes: ``episodes``, ``failure`` (parse-failure rate),
    ``overall_std`` and ``overall_distinct`` (spread of Overall), and against exact match (episodes whose
    ``correct`` is known): ``accuracy_auc`` (0.5 = chance), ``accuracy_r`` and ``overall_r`` (point-biserial
    correlations with correct), ``accuracy_right`` / ``accuracy_wrong`` (mean Accuracy score of each side)."""
    ok = [r for r in rows if r["scores"]]
    overall = [r["scores"]["overall"] for r in ok]
    known = [r for r in ok if r["correct"] is not None]
    right = [r["scores"]["accuracy"] for r in known if r["correct"]]
    wrong = [r["scores"]["accuracy"] for r in known if not r["correct"]]
    y = [float(r["correct"]) for r in known]
    return {
        "episodes": float(len(rows)),
        "failure": (len(rows) - len(ok)) / len(rows) if rows else math.nan,
        "overall_std": statistics.pstdev(overall) if overall else math.nan,
        "overall_distinct": float(len(set(overall))),
        "accuracy_auc": auc(right, wrong),
        "accuracy_r": correlation([r["scores"]["accuracy"] for r in known], y),
        "overall_r": correlation([r["scores"]["overall"] for r in known], y),
        "accuracy_right": statistics.fmean(right) if right else math.nan,
        "accuracy_wrong": statistics.fmean(wrong) if wrong else math.nan,
        "correct_share": statistics.fmean(y) if y else math.nan,
    }


def trust_line(t: dict[str, float], judge: str) -> str:
    """One line for the report: the judge's parse failures, spread and agreement with exact match."""
    def f(x: float, digits: int = 2) -> str:
        return "-" if not math.isfinite(x) else f"{x:.{digits}f}"

    return (f"judge {judge} on {int(t['episodes'])} episodes: {f(100 * t['failure'], 0)}% replies unparseable; "
            f"Overall std {f(t['overall_std'])} ({int(t['overall_distinct'])} distinct values); against exact "
            f"match (right {f(100 * t['correct_share'], 0)}%): Accuracy-score AUC {f(t['accuracy_auc'])} "
            f"(0.5 = chance), r {f(t['accuracy_r'])}; Overall r {f(t['overall_r'])}; mean Accuracy score "
            f"{f(t['accuracy_right'])} when right vs {f(t['accuracy_wrong'])} when wrong")


def episode_intervals(cell: Path) -> dict[str, dict[str, float]]:
    """Per metric, the 95% interval over the cell's evaluation episodes (eval/metrics.json) and its judged
    episodes (quality.jsonl): the table's interval when a method has one seed (``eval.report.summarize``)."""
    from rwft.eval.metrics import mean_ci

    out: dict[str, dict[str, float]] = {}
    path = cell / "eval" / "metrics.json"
    if path.exists():
        out.update({k: v for k, v in json.loads(path.read_text())["metrics"].items() if isinstance(v, dict)})
    path = cell / "quality.jsonl"
    if path.exists():
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        out.update({f"judge_{k}": mean_ci([r["scores"][k] for r in rows if r["scores"]]) for k in KEYS})
    return out
