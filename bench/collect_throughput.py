"""Episodes per second of batched collection vs one episode at a time (same episodes), tiny preset.

    RWFT_CACHE=/tmp/rwft-cache python bench/collect_throughput.py --episodes 32 --batch-size 32

Both runs play the same mcqa episodes (arithmetic tasks, 3 agent turns, sampled at temperature 1 with
per-row seeds) through ``rwft collect``; the script checks the conversations are identical and
prints episodes/s, generated tokens/s and the speed-up, each the median of ``--repeats`` runs. Model
loading is not timed. ``--no-reuse-cache`` turns off the KV-cache reuse across turns (and the shared
prefill of a context's samples) to show what it brings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from functools import partialmethod
from pathlib import Path
from unittest.mock import patch

from rwft.rollout.collect import CollectConfig, run_collect
from rwft.rollout.hf_policy import HFPolicy


def run(out: Path, batch_size: int, args: argparse.Namespace) -> tuple[dict, list]:
    cfg = CollectConfig(
        env="mcqa", env_args=["source=arithmetic"], policy=args.model, out=str(out),
        contexts=args.episodes // args.samples, samples_per_context=args.samples, temperatures=[1.0],
        batch_size=batch_size, max_new_tokens=args.max_new_tokens, seed=0, progress=False, overwrite=True,
    )
    runs = []
    for _ in range(args.repeats):
        with patch.object(HFPolicy, "__init__", partialmethod(HFPolicy.__init__, reuse_cache=args.reuse_cache)):
            runs.append(run_collect(cfg))
    summary = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return summary, [json.loads(x)["messages"] for x in out.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-reuse-cache", dest="reuse_cache", action="store_false")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = {}
        for name, bs in (("batched", args.batch_size), ("one at a time", 1)):
            summary, episodes = run(Path(d) / f"{bs}.jsonl", bs, args)
            rows[name] = (summary, episodes)
            s = summary["seconds"]
            n = len(episodes)
            print(f"{name:>14} (batch {bs:>3}): {n} episodes in {s:7.2f} s = {n / s:7.2f} ep/s, "
                  f"{summary['generated_tokens'] / s:8.1f} generated tokens/s")
    (sb, eb), (s1, e1) = rows["batched"], rows["one at a time"]
    same = sum(a == b for a, b in zip(eb, e1, strict=True))
    print(f"speed-up: {s1['seconds'] / sb['seconds']:.1f}x; identical episodes: {same}/{len(eb)}")


if __name__ == "__main__":
    main()
