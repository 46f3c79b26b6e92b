"""How much a twenty-questions log leaves to stitching: the best logged game of each hidden object against
the stitched optimum, the scripted player at skill 1 (the halving questions of ``ask-well`` and the guesses of
``guess-well``, see ``twenty_questions``), on the same objects and reward options.

``python -m rwft.rollout.envs.twenty_questions_stitching LOGS.jsonl`` prints the measurement of a log that
``rwft collect`` (or ``rwft compare``) wrote: games, mean reward per scripted player, the mean over hidden
objects of their best logged game and of the stitched game, over contexts of the best of m, and which half of
the game the logged play gets right (``halves``). Run on a policy's evaluation episodes, it tells whether
that policy combines the halves.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import Task, make_env
from rwft.rollout.envs.twenty_questions import OBJECTS, TwentyQuestionsEnv, parse_turn, splits


def stitched_reward(env: TwentyQuestionsEnv, obj: str) -> float:
    """The reward of the skill-1 scripted game on ``obj`` under ``env``'s reward options (deterministic)."""
    play = make_env("twenty-questions", {"horizon": env.options.horizon, "reward": env.options.reward})
    ep = play.start(Task(f"stitched-{obj}", {"object": obj}))
    while not ep.done:
        play.step(ep, play.scripted_action(ep, random.Random(ep.agent_turns), 1.0))
    return play.outcome(ep)["reward"]


def measure(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The stitching gap of twenty-questions ``records`` (rwft collect's lines): ``best_per_object`` (the mean
    over hidden objects of the best logged reward), ``stitched_per_object`` (of the stitched game's),
    ``best_of_m`` (over contexts, of the best of their samples), ``stitched_per_context``, ``logged_mean``,
    ``players`` (mean reward per scripted player), ``objects_below`` (objects whose best logged game scores
    less than the stitched one), ``objects``, ``games`` and the shares of ``halves``."""
    rows = [r for r in records if r.get("reward") is not None and r.get("metadata", {}).get("gold") in OBJECTS]
    if not rows:
        raise RwftError("no twenty-questions games with a reward and a known hidden object in the log")
    env = make_env("twenty-questions", {k: v for k, v in rows[0]["metadata"].get("env_options", {}).items()
                                        if k in ("horizon", "reward")})
    by_object: dict[str, list[float]] = defaultdict(list)
    by_context: dict[str, list[float]] = defaultdict(list)
    by_player: dict[str, list[float]] = defaultdict(list)
    gold_of: dict[str, str] = {}
    for r in rows:
        gold = r["metadata"]["gold"]
        by_object[gold].append(r["reward"])
        by_context[r["context_id"]].append(r["reward"])
        by_player[r["metadata"].get("player", "?")].append(r["reward"])
        gold_of[r["context_id"]] = gold
    stitched = {o: stitched_reward(env, o) for o in by_object}
    return {
        "games": len(rows),
        "objects": len(by_object),
        "logged_mean": statistics.fmean(r["reward"] for r in rows),
        "players": {p: statistics.fmean(v) for p, v in sorted(by_player.items())},
        "best_per_object": statistics.fmean(max(v) for v in by_object.values()),
        "stitched_per_object": statistics.fmean(stitched.values()),
        "best_of_m": statistics.fmean(max(v) for v in by_context.values()),
        "stitched_per_context": statistics.fmean(stitched[gold_of[c]] for c in by_context),
        "objects_below": sum(max(v) < stitched[o] for o, v in by_object.items()),
        **halves(rows),
    }


def halves(records: list[dict[str, Any]]) -> dict[str, float]:
    """Which half of the game a log's play gets right, over the games with a known hidden object:
    ``even_questions``, the share of questions that split the candidates left as evenly as any question not
    asked yet (ask-well: 1); ``open_guesses``, the share of guesses that name an object still consistent with
    the answers (guess-well: 1); each NaN without any such turn."""
    even, open_ = [], []
    for r in records:
        gold = r.get("metadata", {}).get("gold")
        if gold not in OBJECTS:
            continue
        cands, asked = sorted(OBJECTS), []
        for m in r.get("messages") or []:
            if m["role"] != "assistant":
                continue
            kind, arg = parse_turn(m["content"])
            if kind == "ask" and arg not in asked:
                useful = splits(cands, asked)
                even.append(bool(useful) and imbalance(arg, cands) == min(imbalance(a, cands) for a in useful))
                asked.append(arg)
            elif kind == "ask":
                even.append(False)  # asked before: rules out nothing
            elif kind == "guess":
                open_.append(arg in cands)
            if kind == "ask":
                cands = [o for o in cands if (arg in OBJECTS[o]) == (arg in OBJECTS[gold])]
            elif kind == "guess":
                cands = [o for o in cands if o != arg]
    nan = float("nan")
    return {"even_questions": statistics.fmean(even) if even else nan,
            "open_guesses": statistics.fmean(open_) if open_ else nan}


def imbalance(attr: str, cands: list[str]) -> int:
    """|yes - no| over ``cands`` for a question about ``attr`` (0: it halves them)."""
    return abs(2 * sum(attr in OBJECTS[o] for o in cands) - len(cands))


def report(m: dict[str, Any]) -> str:
    players = ", ".join(f"{p} {v:.3f}" for p, v in m["players"].items())
    return "\n".join([
        f"{m['games']} games of {m['objects']} hidden objects: mean reward {m['logged_mean']:.3f} ({players})",
        f"per hidden object: best logged game {m['best_per_object']:.3f}, stitched {m['stitched_per_object']:.3f} "
        f"(best logged below stitched on {m['objects_below']} of {m['objects']} objects)",
        f"per context: best of m {m['best_of_m']:.3f}, stitched {m['stitched_per_context']:.3f}",
        f"questions that halve the candidates {m['even_questions']:.3f}, guesses of an open candidate "
        f"{m['open_guesses']:.3f} (stitched play: 1 and 1)",
    ])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rwft.rollout.envs.twenty_questions_stitching LOGS.jsonl", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    records = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    try:
        print(report(measure(records)))
    except RwftError as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
