"""How far can a rubric judge be trusted? Grade scripted mcqa episodes of mixed skill (right and wrong final
answers, verbose and terse) on the paper's six dimensions and compare the judge's scores with exact match.

    python bench/judge_trust.py --judge smollm2-135m --episodes 40 --source openbookqa

Prints the judged means, the trust figures (parse failures, spread of Overall, agreement of the Accuracy score
with exact match: AUC, point-biserial r) and the first replies. Writes the episodes under --output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rwft.eval.quality import judge_episodes, judge_trust, quality_metrics, trust_line
from rwft.rollout.collect import CollectConfig, run_collect
from rwft.rollout.policies import make_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="smollm2-135m", help="preset, model directory or http(s):// URL")
    ap.add_argument("--api-model", default="", help="model name for an http(s) judge")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--source", default="openbookqa")
    ap.add_argument("--output", default="runs/judge-trust")
    args = ap.parse_args()
    out = Path(args.output) / f"episodes-{args.source}-{args.episodes}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_collect(CollectConfig(env="mcqa", out=str(out), policy="scripted:mixed", contexts=args.episodes,
                              samples_per_context=1, temperatures=[0.7], seed=5,
                              env_args=[f"source={args.source}", "split=test"], quiet=True, progress=False))
    records = [json.loads(x) for x in out.read_text().splitlines()]
    t0 = time.time()
    rows = judge_episodes(records, make_policy(args.judge, None, 64, api_model=args.api_model).generate, retries=2)
    print(f"judged {len(rows)} episodes in {time.time() - t0:.0f} s")
    print(json.dumps(quality_metrics(rows), indent=1))
    print(trust_line(judge_trust(rows), args.judge))
    for r in rows[:6]:
        print(r["correct"], r["scores"], (r["failure"] or "")[:160])


if __name__ == "__main__":
    main()
