"""``rwft bootstrap``: make a behaviour policy pi_0 for an environment on the tiny preset.

1. Collect ``contexts x samples_per_context`` conversations from the environment's scripted agent
   with a skill drawn per episode (``scripted:mixed``: good and poor strategies, sloppy formats,
   random guesses), so the data hold every level of quality (``OUTPUT/scripted.jsonl``).
2. SFT the tiny preset on them (``rwft train --objective sft``; ``OUTPUT/train``): pi_0 imitates the
   mixture, so its own rollouts spread in reward.
3. Measure pi_0 on held-out tasks (seed + 1): ``best_of`` samples per context; report the mean reward
   and the best-of-m reward (mean over contexts of the best sample: the room reweighting can use),
   written to ``OUTPUT/bootstrap.json`` with the rollouts in ``OUTPUT/rollouts.jsonl``.

Every step resumes: a rerun with the same arguments skips what is done.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.errors import RwftError


@dataclass
class BootstrapConfig:
    env: str
    """environment: mcqa, clarify or twenty-questions"""
    output: str = ""
    """run directory (default: pi0-ENV)"""
    env_args: list[str] = field(default_factory=list)
    """environment options as key=value (see rwft collect)"""
    contexts: int = 100
    """training contexts played by the scripted agent"""
    samples_per_context: int = 2
    """scripted samples per training context"""
    epochs: float = 5.0
    """SFT epochs"""
    learning_rate: float = 2e-3
    """SFT learning rate (high: the tiny preset starts from random weights)"""
    batch_size: int = 8
    """SFT batch size"""
    max_length: int = 512
    """SFT max tokens per conversation"""
    eval_contexts: int = 16
    """held-out contexts on which pi_0 is measured"""
    best_of: int = 4
    """samples per held-out context (m of best-of-m)"""
    temperature: float = 1.0
    """sampling temperature of pi_0's rollouts"""
    max_new_tokens: int = 48
    """tokens per agent turn in pi_0's rollouts"""
    seed: int = 0
    """seed of the scripted data, the training and the rollouts"""
    progress: bool = True
    """show progress bars"""


def reward_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean reward, mean of each context's best reward, and the spread (std) over episodes."""
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
        "std_reward": statistics.pstdev(rewards),
        "min_reward": min(rewards),
        "max_reward": max(rewards),
    }


def run_bootstrap(config: BootstrapConfig) -> dict[str, Any]:
    from rwft.collect import CollectConfig, run_collect
    from rwft.training import TrainConfig, train

    if config.best_of < 1 or config.eval_contexts < 1:
        raise RwftError("--best-of and --eval-contexts must be positive integers")
    out = Path(config.output or f"pi0-{config.env}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scripted = out / "scripted.jsonl"
    run_collect(CollectConfig(
        env=config.env, out=str(scripted), policy="scripted:mixed", contexts=config.contexts,
        samples_per_context=config.samples_per_context, temperatures=[1.0], seed=config.seed,
        env_args=config.env_args, progress=config.progress,
    ))
    t_collect = time.time()
    train_dir = out / "train"
    train(TrainConfig(
        data=str(scripted), output=str(train_dir), model="tiny", objective="sft", epochs=config.epochs,
        learning_rate=config.learning_rate, batch_size=config.batch_size, max_length=config.max_length,
        seed=config.seed, report_to="none",
    ))
    t_train = time.time()
    rollouts = out / "rollouts.jsonl"
    run_collect(CollectConfig(
        env=config.env, out=str(rollouts), policy=str(train_dir), contexts=config.eval_contexts,
        samples_per_context=config.best_of, temperatures=[config.temperature], seed=config.seed + 1,
        env_args=config.env_args, max_new_tokens=config.max_new_tokens, batch_size=32, progress=config.progress,
    ))
    t_eval = time.time()
    read = lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    summary = {
        "env": config.env, "env_args": config.env_args, "policy": str(train_dir),
        "pi0": reward_summary(read(rollouts)), "scripted_data": reward_summary(read(scripted)),
        "seconds": {"collect": t_collect - t0, "train": t_train - t_collect, "rollouts": t_eval - t_train},
    }
    (out / "bootstrap.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    p = summary["pi0"]
    print(f"rwft bootstrap: pi_0 = {train_dir}; {config.env}: mean reward {p.get('mean_reward', float('nan')):.3f}, "
          f"best-of-{config.best_of} {p.get('best_of_m_reward', float('nan')):.3f} over {p['episodes']} rollouts")
    return summary
