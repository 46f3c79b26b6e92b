"""Paired differences against a reference method: each method's evaluation episodes set against the reference's
episodes of the same training seed, task and sampling seed (``rwft compare`` evaluates every method of a seed on
the same tasks with the same sampling seeds).

Pairing removes the task-to-task spread that dominates a small evaluation. Its interval is over evaluation
episodes of these trained models (sampling noise), not over training seeds: the table's interval over seeds is
the one that says whether a method beats another across training runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rwft.data.io import read_records
from rwft.eval.metrics import mean_ci


def cell_episodes(cell: Path, metric: str = "reward") -> dict[tuple[str, str], tuple[float, str]]:
    """``(file name, episode id) -> (metric, the episode's messages as JSON)`` for each evaluation episode of
    a ``rwft compare`` cell (``CELL/eval/episodes-*.jsonl``); empty when the cell has none."""
    out = {}
    for path in sorted((cell / "eval").glob("episodes-*.jsonl")):
        for _, record in read_records(path):
            out[(path.name, record["id"])] = (float(record[metric]), json.dumps(record["messages"]))
    return out


def paired_difference(cells: Path, method: str, seeds: Sequence[int], reference: str = "base",
                      metric: str = "reward") -> dict[str, Any] | None:
    """Mean of ``metric(method episode) - metric(reference episode)`` over the episodes both cells of each seed
    have, with its 95% t-interval (``eval.metrics.mean_ci``) and ``same``: how many of those episodes are word
    for word the reference's. None when no episode pairs."""
    diffs, same = [], 0
    for seed in seeds:
        mine = cell_episodes(cells / f"{method}-s{seed}", metric)
        ref = cell_episodes(cells / f"{reference}-s{seed}", metric)
        for key in sorted(mine.keys() & ref.keys()):
            diffs.append(mine[key][0] - ref[key][0])
            same += mine[key][1] == ref[key][1]
    return dict(mean_ci(diffs), same=same) if diffs else None


def paired_lines(cells: Path, methods: Sequence[str], seeds: Sequence[int], reference: str = "base",
                 metric: str = "reward") -> list[str]:
    """One line per method other than ``reference`` that pairs with it, then one saying what the interval is
    over; nothing when ``reference`` did not run."""
    lines = []
    for method in methods:
        d = paired_difference(cells, method, seeds, reference, metric) if method != reference else None
        if d:
            lines.append(f"{method} - {reference} on {metric}, paired: {d['mean']:+.3f} ± {d['half']:.3f} over "
                         f"{d['n']} evaluation episodes ({d['same']} word for word {reference}'s)")
    if lines:
        lines.append(f"paired = the same tasks and sampling seeds as {reference}'s episodes of the same training "
                     "seed; its interval is over those episodes, not over training seeds")
    return lines
