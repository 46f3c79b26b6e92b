"""The judged-quality stage of ``rwft compare --quality-judge``: each finished cell's first ``--quality-episodes``
evaluation episodes graded once by the judge (``cells/METHOD-sSEED/quality.jsonl``), their means added to the
cell's metrics and ``result.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rwft.data.io import write_text_atomic


def add_quality(config: Any, result: dict[str, Any], out: Path, judge: dict[str, Any]) -> list:
    """Add the judged means (``judge_overall`` ..., ``judge_failure``) of the cell's first --quality-episodes
    evaluation episodes to its metrics and result.json; return the judged rows (none for a cell that could not
    train). The judge loads into ``judge`` on first use; a cell is judged once (``quality.jsonl``)."""
    from rwft.eval.quality import judge_file, quality_metrics

    cell = out / "cells" / f"{result['method']}-s{result['seed']}"
    episodes = cell / "eval" / f"episodes-s{config.eval_seed + result['seed']}.jsonl"
    if "error" in result or not episodes.exists():
        return []
    t0 = time.perf_counter()
    rows = judge_file(episodes, cell / "quality.jsonl", config.quality_episodes, config.quality_judge, judge,
                      seed=config.collect_seed, api_model=config.quality_api_model)
    metrics = quality_metrics(rows)
    if any(result["metrics"].get(k) != v for k, v in metrics.items() if v == v):  # new or changed (NaN skipped)
        result["metrics"].update(metrics)
        result.setdefault("quality_time_s", time.perf_counter() - t0)
        write_text_atomic(cell / "result.json", json.dumps(result))
    return rows
