"""Throughput of ``rwft iterate`` in-process: episodes/s and optimizer steps/s for S = 1 and S = 8, and the
share of the time spent generating, training and syncing.

    OMP_NUM_THREADS=1 python bench/iterate_throughput.py --model tiny --steps 16 --threads 1

Each run plays ``--prompts`` clarify tasks x ``--group-size`` episodes per step with the generator and takes
one GRPO step on them (GRPO always takes its forward and backward passes, whatever the rewards); model
loading is not timed. The times come from the run's own step log (``generate_s``, ``train_s``, ``sync_s``).
Reported: the sync's mean cost relative to the mean S = 1 step (target: under 5%). On a shared machine the
load average is printed with the figures.

    python bench/iterate_throughput.py --collect-url http://127.0.0.1:8011/v1 --served-model smollm2 \
        --model smollm2-135m --episodes 64

compares collection alone (the same clarify tasks, ``--episodes`` of them, one generation batch) in-process
(HFPolicy, batched, KV cache) against the server: every episode in flight (``OpenAIPolicy.play``) and the
collector's lockstep turns with 8 requests at a time (``act``), as episodes/s and generated tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from rwft.recipes.iterate import IterateConfig, run_iterate


def run(sync: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    run_iterate(IterateConfig(
        output=str(out), env=["clarify"], env_args=["source=requests", "difficulty=3", "unambiguous=0"],
        policy=args.model, objective="grpo", sync_every=sync, steps=args.steps, prompts_per_step=args.prompts,
        group_size=args.group_size, max_new_tokens=args.max_new_tokens, threads=args.threads, progress=False,
        quiet=True))
    rows = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    gen, train, sync_t = (sum(r[k] for r in rows) for k in ("generate_s", "train_s", "sync_s"))
    total = gen + train + sync_t
    syncs = [r["sync_s"] for r in rows if r["steps_since_sync"] == (int(sync) - 1 if sync != "never" else -1)]
    return {"S": sync, "episodes_per_s": sum(r["episodes"] for r in rows) / total, "steps_per_s": len(rows) / total,
            "generate_share": gen / total, "train_share": train / total, "sync_share": sync_t / total,
            "step_s": total / len(rows), "sync_s": sum(syncs) / max(len(syncs), 1)}


def collect_compare(args: argparse.Namespace) -> None:
    import time

    from rwft.rollout.collect import run_episodes
    from rwft.rollout.envs.base import make_env
    from rwft.rollout.hf_policy import HFPolicy
    from rwft.rollout.http_policy import OpenAIPolicy

    env = make_env("clarify", ["source=requests", "difficulty=3", "unambiguous=0"])
    tasks = env.tasks(args.episodes, 0)
    samples, temps = [0] * len(tasks), [1.0] * len(tasks)

    class Lockstep:  # the collector's turn-by-turn path: one act per turn, 8 requests at a time
        def __init__(self, policy):
            self.policy, self.name = policy, policy.name

        def act(self, *a):
            return self.policy.act(*a)

    rows = []
    served = OpenAIPolicy(args.collect_url, args.served_model, max_new_tokens=args.max_new_tokens)
    local = HFPolicy(args.model, args.max_new_tokens, device="cpu")
    for label, policy, counter in (("in-process HFPolicy (one batch)", local, local),
                                   ("server, every episode in flight", served, served),
                                   ("server, lockstep turns, 8 at a time", Lockstep(served), served)):
        before = counter.generated_tokens
        t0 = time.perf_counter()
        episodes = run_episodes(env, policy, tasks, samples, temps, 0)
        dt = time.perf_counter() - t0
        turns = sum(ep.agent_turns for ep in episodes)
        rows.append((label, len(episodes) / dt, (counter.generated_tokens - before) / dt, turns, dt))
    print(f"collection of {args.episodes} clarify episodes, {args.model} / {args.served_model}, "
          f"max {args.max_new_tokens} new tokens, load average {os.getloadavg()[0]:.1f}")
    print("| generator | episodes/s | generated tokens/s | agent turns | seconds |")
    print("|---|---|---|---|---|")
    for label, eps, tps, turns, dt in rows:
        print(f"| {label} | {eps:.2f} | {tps:.0f} | {turns} | {dt:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--collect-url", default="", help="compare collection through this server with in-process")
    p.add_argument("--served-model", default="smollm2")
    p.add_argument("--episodes", type=int, default=64)
    args = p.parse_args()
    if args.collect_url:
        collect_compare(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("1", "8"):
            results.append(run(sync, args, Path(tmp) / f"s{sync}"))
    print(f"model {args.model}, {args.prompts} tasks x {args.group_size} episodes per step, {args.steps} steps, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print("| S | episodes/s | steps/s | generate | train | sync | s per step |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['S']} | {r['episodes_per_s']:.1f} | {r['steps_per_s']:.2f} | {r['generate_share']:.1%} | "
              f"{r['train_share']:.1%} | {r['sync_share']:.2%} | {r['step_s']:.2f} |")
    one = results[0]
    print(f"one in-process sync: {one['sync_s'] * 1000:.1f} ms = {one['sync_s'] / one['step_s']:.2%} of an S = 1 step "
          "(target < 5%)")


if __name__ == "__main__":
    main()
