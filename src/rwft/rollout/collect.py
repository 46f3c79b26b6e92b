"""``rwft collect``: run a policy in an environment and log the conversations (one JSON line each).

Episodes are numbered in a fixed order, context-major: episode ``i * m + j`` is sample ``j`` of context
``i``, sampled at ``temperatures[j % len(temperatures)]``. They are run in consecutive batches of
``batch_size``: all live episodes of a batch advance in lockstep, one policy call per turn, and an
episode that ends leaves the batch. Every generation is seeded from (seed, context, sample, turn), so
the same arguments give the same episodes.

Resumable: a finished batch is judged and appended in episode order as whole fsynced lines, and a
sidecar ``OUT.args.json`` records the arguments. A rerun with the same arguments cuts a torn last
line, counts the complete lines ``k``, reruns the batch holding episode ``k`` from its start (the
same batch, so the same episodes) and writes only episodes ``k`` onward. A rerun with other
arguments is refused (use another ``--out`` or ``--overwrite``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.data.io import JsonlAppender, count_complete_lines, write_text_atomic
from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, make_env, options_dict
from rwft.rollout.judges import Judge, JudgeItem, JudgeOptions
from rwft.rollout.policies import turn_seed
from rwft.rollout.served_adapters import ServedOptions, make_run_policy, release_policy

MAX_TURNS = 200


@dataclass(kw_only=True)
class OutputOptions:
    """The output options of the verbs that write a resumable JSONL file, ``rwft collect`` and ``label`` (see
    ``check_output``): a mixin of their configs (keyword-only, so it goes before their required fields)."""

    out: str
    """output JSONL file (appended to and resumed; see --overwrite)"""
    overwrite: bool = False
    """start over: delete OUT and its sidecar first"""
    progress: bool = True
    """show a progress bar"""


@dataclass
class CollectConfig(OutputOptions, JudgeOptions, ServedOptions):
    """Options of ``rwft collect`` (the output's: ``OutputOptions``; the judge's: ``JudgeOptions``; a served
    generator's: ``ServedOptions``)."""

    env: str
    """environment: mcqa, clarify or twenty-questions"""
    policy: str = "scripted"
    """scripted, scripted:SKILL (0-1), scripted:mixed, a model preset/directory/hub id, or an http(s):// URL"""
    contexts: int = 10
    """number of contexts (tasks)"""
    samples_per_context: int = 3
    """samples m per context"""
    temperatures: list[float] = field(default_factory=lambda: [0.6, 0.9, 1.2])
    """sampling temperatures; sample j uses temperatures[j % len]; 0 is greedy"""
    seed: int = 0
    """seed of the task draw and of every generation"""
    env_args: list[str] = field(default_factory=list)
    """environment options as key=value (e.g. source=arithmetic difficulty=3 mode=clarifying)"""
    batch_size: int = 32
    """episodes advanced together (one generate call per turn)"""
    max_new_tokens: int = 128
    """tokens generated per agent turn"""
    qsft_beta: float = 0.0
    """for a Q-SFT run as --policy: the acting beta of pi_phi * exp(beta * p_theta); 0 or less: qsft.json's"""
    quiet: bool = False
    """print nothing (no progress bar, no messages); for callers such as rwft compare"""

    def check(self) -> None:
        for name in ("contexts", "samples_per_context", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise RwftError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected a positive integer")
        if not self.temperatures:
            raise RwftError("--temperatures: give at least one temperature")
        if any(t < 0 for t in self.temperatures):
            raise RwftError(f"--temperatures {self.temperatures}: temperatures must be >= 0")
        self.check_judge()
        self.check_served()


def fingerprint(config: Any, skip: tuple[str, ...] = ("out", "overwrite", "progress", "quiet")) -> dict[str, Any]:
    """The arguments that decide the file's content (what the sidecar stores)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def check_output(out: Path, args: dict[str, Any], overwrite: bool, verb: str) -> int:
    """The number of complete records already in ``out`` that a run with ``args`` continues from (0 with
    ``overwrite``); refuses a file written with other arguments. Reads only: nothing is created or deleted."""
    if overwrite:
        return 0
    sidecar = out.with_name(out.name + ".args.json")
    done = count_complete_lines(out)
    if sidecar.exists():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise RwftError(f"{sidecar}: unreadable; delete it with {out}, or pass --overwrite") from None
        diff = sorted(k for k in set(old) | set(args) if old.get(k) != args.get(k))
        if diff:
            raise RwftError(
                f"--out {out}: was written by `rwft {verb}` with other arguments ({', '.join(diff)} differ); "
                "use another --out, or --overwrite to start over"
            )
    elif done:
        raise RwftError(f"--out {out}: already holds {done} lines not written by `rwft {verb}`; use --overwrite")
    return done


def prepare_output(out: Path, args: dict[str, Any], overwrite: bool, verb: str) -> int:
    """Check or write the sidecar; return the number of complete records already in ``out``.

    Call it once the inputs have loaded: it deletes ``out`` with ``overwrite`` and creates its directory."""
    sidecar = out.with_name(out.name + ".args.json")
    if overwrite:
        out.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    done = check_output(out, args, False, verb)
    if not sidecar.exists():
        write_text_atomic(sidecar, json.dumps(args, indent=1, sort_keys=True))
    return done


def run_episodes(env: Environment, policy: Any, tasks: list[Task], samples: list[int], temps: list[float],
                 seed: int) -> list[Episode]:
    """Play one batch to the end in lockstep: one ``policy.act`` call per turn over the live episodes."""
    episodes = [env.start(t) for t in tasks]
    if hasattr(policy, "play"):  # a served policy: every episode in flight, each advancing on its own
        policy.play(env, episodes, temps, lambda k, t: turn_seed(seed, tasks[k].context_id, samples[k], t), MAX_TURNS)
        return episodes
    live = list(range(len(episodes)))
    turn = 0
    while live:
        if turn >= MAX_TURNS:
            raise RwftError(f"env {env.name}: an episode passed {MAX_TURNS} turns (its stopping rule is broken)")
        seeds = [turn_seed(seed, tasks[k].context_id, samples[k], turn) for k in live]
        actions = policy.act([episodes[k] for k in live], [temps[k] for k in live], seeds)
        for k, action in zip(live, actions, strict=True):
            env.step(episodes[k], action)
        live = [k for k in live if not episodes[k].done]
        turn += 1
    return episodes


def episode_records(env: Environment, judge: Judge, policy_name: str, episodes: list[Episode], samples: list[int],
                    temps: list[float], seed: int) -> list[dict[str, Any]]:
    """Judge finished episodes and build their records (see the README for the metadata fields)."""
    outcomes = [env.outcome(ep) for ep in episodes]
    items = []
    for ep, j, oc in zip(episodes, samples, outcomes, strict=True):
        meta = {k: v for k, v in oc.items() if k not in ("reward", "message_rewards")}
        meta["env_reward"] = oc["reward"]
        items.append(JudgeItem(ep.messages, meta, f"{ep.task.context_id}/{j}"))
    results = judge.judge(items)
    records = []
    for ep, j, t, oc, item, res in zip(episodes, samples, temps, outcomes, items, results, strict=True):
        messages = [dict(m) for m in ep.messages]
        reward = res.reward
        env_only = all(kind == "env" for kind, _, _ in judge.components)
        if env_only and "message_rewards" in oc:
            agent = [m for m in messages if m["role"] == "assistant"]
            for m, r in zip(agent, oc["message_rewards"], strict=True):
                m["reward"] = r
        if reward is not None and not judge.uses_env and "discount" in oc:
            reward *= oc["discount"]
        meta = {
            "env": env.name, "env_options": options_dict(env), "policy": policy_name, "temperature": t,
            "sample": j, "seed": seed, "judge": judge.spec, "scores": res.scores, "judge_failure": res.failure,
            **item.metadata,
        }
        if ep.truncated_actions:
            meta["truncated_actions"] = ep.truncated_actions
        records.append({"id": item.key, "context_id": ep.task.context_id, "messages": messages,
                        "reward": reward, **({"tools": ep.tools} if ep.tools else {}), "metadata": meta})
    return records


def run_collect(config: CollectConfig, *, policy: Any = None, judge_backend: Any = None,
                bar: Any = None) -> dict[str, Any]:
    """Collect (or finish collecting) the episodes described by ``config``; returns a summary.

    Everything is checked and loaded (environment, judge, policy) before ``OUT`` or its directory is
    touched. ``policy`` (an already built policy for ``config.policy``) and ``judge_backend`` (for a rubric
    judge) let a caller that collects several files load each model once; ``bar`` (a tqdm bar, not closed
    here) lets it show one bar over all of them.
    """
    from tqdm.auto import tqdm

    config.check()
    env = make_env(config.env, config.env_args)
    tasks = env.tasks(config.contexts, config.seed)
    m = config.samples_per_context
    order = [(i, j) for i in range(len(tasks)) for j in range(m)]
    out = Path(config.out)
    args = fingerprint(config)
    if config.qsft_beta <= 0:
        del args["qsft_beta"]  # files collected before the option existed resume as they were
    del args["generator_url"]  # where the server listens, not what it plays: a restarted server resumes the file
    del args["request_timeout"]  # how long to wait for it, likewise
    if not config.served_model:
        del args["served_model"]
    done = check_output(out, args, config.overwrite, "collect")
    total = len(order)
    summary: dict[str, Any] = {"out": str(out), "episodes": total, "resumed_from": done}
    if done >= total:
        if bar is not None:
            bar.update(total)
        elif not config.quiet:
            print(f"rwft collect: {out} already holds all {total} episodes", file=sys.stderr)
        return summary
    own = policy is None
    if own:
        policy = make_run_policy(config, env)  # through --generator-url when given
    try:
        judge = config.build_judge(config.seed, backend=judge_backend)
        done = prepare_output(out, args, config.overwrite, "collect")  # the inputs loaded: now touch OUT
        summary["resumed_from"] = done
        temps_all = [config.temperatures[j % len(config.temperatures)] for _, j in order]
        bs = config.batch_size
        start_time = time.time()
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=total, initial=done, desc=f"collect {env.name}", unit="ep",
                       disable=config.quiet or not config.progress)
        else:
            bar.update(done)
        with JsonlAppender(out) as writer:
            for start in range((done // bs) * bs, total, bs):
                idx = list(range(start, min(start + bs, total)))
                samples = [order[k][1] for k in idx]
                temps = [temps_all[k] for k in idx]
                episodes = run_episodes(env, policy, [tasks[order[k][0]] for k in idx], samples, temps, config.seed)
                records = episode_records(env, judge, policy.name, episodes, samples, temps, config.seed)
                skip = max(0, done - start)
                writer.write(records[skip:])
                bar.update(len(records) - skip)
        if own_bar:
            bar.close()
    finally:
        if own:
            release_policy(policy)  # an adapter it loaded into --generator-url is unloaded, done or failed
    summary["seconds"] = time.time() - start_time
    summary["generated_tokens"] = getattr(policy, "generated_tokens", None)
    return summary
