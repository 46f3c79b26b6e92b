"""``rwft bootstrap``: make a behaviour policy pi_0 for an environment (tiny preset by default).

1. Collect ``contexts x samples_per_context`` conversations from the environment's scripted agent
   (``scripted:mixed``: a skill drawn per episode, so good and poor strategies, sloppy formats, random
   guesses; or one fixed skill), so the data hold the behaviours pi_0 should sample
   (``OUTPUT/scripted.jsonl``).
2. SFT the model (the tiny preset, or ``--model``) on them (``rwft train --objective sft``;
   ``OUTPUT/train``): pi_0 imitates the data imperfectly, so its own rollouts spread in reward.
3. Measure pi_0 on held-out tasks (seed + 1): ``best_of`` samples per context; report the mean reward
   and the best-of-m reward (mean over contexts of the best sample: the room reweighting can use),
   written to ``OUTPUT/bootstrap.json`` with the rollouts in ``OUTPUT/rollouts.jsonl``.

Options left unset take per-environment defaults (``ENV_DEFAULTS`` over ``DEFAULTS``); values given
explicitly always win. Why each environment's defaults are what they are: docs/bootstrap.md.

Every step resumes: a rerun with the same arguments skips what is done.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rwft.errors import RwftError

DEFAULTS: dict[str, Any] = {
    "skill": "mixed", "contexts": 100, "samples_per_context": 2, "epochs": 5.0, "learning_rate": 2e-3,
    "batch_size": 8, "max_new_tokens": 48, "max_length": 512,
}
"""Defaults of the options left unset (None), for an environment without its own in ENV_DEFAULTS."""
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "mcqa": {"epochs": 8.0, "batch_size": 4},
    "twenty-questions": {"skill": "1", "contexts": 200, "epochs": 4.0, "batch_size": 4, "max_new_tokens": 16},
    "tod": {"max_length": 1024, "max_new_tokens": 96},
}
"""Per-environment defaults over DEFAULTS (see the module docstring for why)."""


@dataclass
class BootstrapConfig:
    env: str
    """environment: mcqa, clarify, twenty-questions or tod"""
    output: str = ""
    """run directory (default: pi0-ENV)"""
    env_args: list[str] = field(default_factory=list)
    """environment options as key=value (see rwft collect)"""
    model: str = "tiny"
    """the preset or model directory (or hub id) to fine-tune into pi_0"""
    skill: str | None = None
    """skill of the scripted agent that plays the training data: mixed (drawn per episode) or a number in
    [0, 1] (unset: 1 for twenty-questions, else mixed)"""
    contexts: int | None = None
    """training contexts played by the scripted agent (unset: 200 for twenty-questions, else 100)"""
    samples_per_context: int | None = None
    """scripted samples per training context (unset: 2)"""
    epochs: float | None = None
    """SFT epochs (unset: 8 for mcqa, 4 for twenty-questions, else 5)"""
    learning_rate: float | None = None
    """SFT learning rate (unset: 2e-3, high because the tiny preset starts from random weights)"""
    batch_size: int | None = None
    """SFT batch size (unset: 4 for mcqa and twenty-questions, else 8)"""
    max_length: int | None = None
    """SFT max tokens per conversation (unset: 1024 for tod, whose tool schemas and calls are long in the tiny
    preset's tokens, else 512)"""
    eval_contexts: int = 32
    """held-out contexts on which pi_0 is measured (16 left the best-of-4 of one pi_0 varying by +-0.2)"""
    best_of: int = 4
    """samples per held-out context (m of best-of-m)"""
    temperature: float = 1.0
    """sampling temperature of pi_0's rollouts"""
    max_new_tokens: int | None = None
    """tokens per agent turn in pi_0's rollouts (unset: 16 for twenty-questions, 96 for tod, else 48)"""
    seed: int = 0
    """seed of the scripted data, the training and the rollouts"""
    progress: bool = True
    """show progress bars"""
    quiet: bool = False
    """print nothing from the collections and no summary line (for callers such as rwft compare)"""


def resolve_defaults(config: BootstrapConfig) -> BootstrapConfig:
    """A copy of ``config`` whose unset (None) options hold the environment's defaults."""
    defaults = {**DEFAULTS, **ENV_DEFAULTS.get(config.env, {})}
    return replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


def scripted_policy(skill: str | float) -> str:
    """The ``--policy`` spec of the scripted agent at ``skill`` (mixed or a number in [0, 1])."""
    text = str(skill).strip()
    if text == "mixed":
        return "scripted:mixed"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise RwftError(f"--skill {skill}: expected mixed or a number in [0, 1]")
    return f"scripted:{value:g}"


def reward_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean reward, mean of each context's best reward, pass^k (``eval.metrics.pass_hat_k``, success = reward 1)
    for k up to the samples per context, and the spread (std) over episodes."""
    from rwft.eval.metrics import pass_hat_k

    rewards = [r["reward"] for r in records if r.get("reward") is not None]
    if not rewards:
        return {"episodes": 0}
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("reward") is not None:
            groups[r["context_id"]].append(r["reward"])
    return {
        "episodes": len(rewards),
        "mean_reward": statistics.fmean(rewards),
        "best_of_m_reward": statistics.fmean(max(v) for v in groups.values()),
        "pass_hat_k": {str(k): pass_hat_k([[x >= 1.0 for x in v] for v in groups.values()], k)  # success: reward 1
                       for k in range(1, max(map(len, groups.values())) + 1)},
        "std_reward": statistics.pstdev(rewards),
        "min_reward": min(rewards),
        "max_reward": max(rewards),
    }


def run_bootstrap(config: BootstrapConfig) -> dict[str, Any]:
    from rwft.presets import locate_model
    from rwft.rollout.collect import CollectConfig, run_collect
    from rwft.rollout.envs.base import make_env
    from rwft.train.trainers import TrainConfig, train

    config = resolve_defaults(config)
    if config.best_of < 1 or config.eval_contexts < 1:
        raise RwftError("--best-of and --eval-contexts must be positive integers")
    policy = scripted_policy(config.skill)
    make_env(config.env, config.env_args)  # bad options fail here, before OUTPUT exists
    locate_model(config.model)
    out = Path(config.output or f"pi0-{config.env}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scripted = out / "scripted.jsonl"
    run_collect(CollectConfig(
        env=config.env, out=str(scripted), policy=policy, contexts=config.contexts,
        samples_per_context=config.samples_per_context, temperatures=[1.0], seed=config.seed,
        env_args=config.env_args, progress=config.progress, quiet=config.quiet,
    ))
    t_collect = time.time()
    train_dir = out / "train"
    train(TrainConfig(
        data=str(scripted), output_dir=str(train_dir), model=config.model, objective="sft",
        num_train_epochs=config.epochs, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size, max_length=config.max_length,
        seed=config.seed, report_to="none", disable_tqdm=config.quiet or not config.progress,
    ))
    t_train = time.time()
    rollouts = out / "rollouts.jsonl"
    run_collect(CollectConfig(
        env=config.env, out=str(rollouts), policy=str(train_dir), contexts=config.eval_contexts,
        samples_per_context=config.best_of, temperatures=[config.temperature], seed=config.seed + 1,
        env_args=config.env_args, max_new_tokens=config.max_new_tokens, batch_size=32, progress=config.progress,
        quiet=config.quiet,
    ))
    t_eval = time.time()
    read = lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    summary = {
        "env": config.env, "env_args": config.env_args, "policy": str(train_dir), "scripted_policy": policy,
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "quiet")},
        "pi0": reward_summary(read(rollouts)), "scripted_data": reward_summary(read(scripted)),
        "seconds": {"collect": t_collect - t0, "train": t_train - t_collect, "rollouts": t_eval - t_train},
    }
    (out / "bootstrap.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    p = summary["pi0"]
    if not config.quiet:
        print(f"rwft bootstrap: pi_0 = {train_dir}; {config.env}: mean reward "
              f"{p.get('mean_reward', float('nan')):.3f}, best-of-{config.best_of} "
              f"{p.get('best_of_m_reward', float('nan')):.3f}, pass^{config.best_of} "
              f"{p.get('pass_hat_k', {}).get(str(config.best_of), float('nan')):.3f} over {p['episodes']} rollouts")
    return summary
