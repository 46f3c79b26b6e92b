"""The data a comparison trains on, each stage a file or directory under its output, skipped when done:
pi_0 (``pi0/``, made by ``rwft bootstrap``, or ``--model`` itself), its logs (``logs.jsonl``, by ``rwft
collect`` of pi_0 or of ``--logs-policy``, or ``--data``) and their turn rewards by redistribution
(``logs-per-turn.jsonl``, by ``rwft label --per-turn``). ``config`` is a ``CompareConfig`` (``rwft sweep``
builds one for its pi_0)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class Pi0Options:
    """How ``rwft compare`` and ``rwft sweep`` make pi_0 with ``rwft bootstrap`` when none is given."""

    bootstrap_contexts: int = 0
    """Make pi_0 with rwft bootstrap from this many scripted contexts x 2 (tiny preset; 0: pi_0 is the given
    model, compare's --model or sweep's --policy)."""
    bootstrap_epochs: float = 3.0
    """Epochs of that SFT."""
    bootstrap_learning_rate: float = 2e-3
    """Learning rate of that SFT (high: the tiny preset starts from random weights)."""
    bootstrap_batch_size: int = 0
    """Batch size of that SFT (0: --batch-size)."""
    bootstrap_eval_contexts: int = 32
    """Held-out contexts on which pi_0's mean and best-of-m reward are measured (m = --samples-per-context)."""


@dataclass(kw_only=True)
class EvalOptions:
    """How ``rwft compare`` and ``rwft sweep`` evaluate each cell."""

    eval_episodes: int = 40
    """Evaluation tasks per seed."""
    eval_seed: int = 1000
    """Evaluation seed of cell seed s is eval_seed + s (fresh tasks, unseen in training for procedural envs)."""
    eval_temperature: float = 0.7
    """Sampling temperature at evaluation."""


def make_pi0(config: Any, out: Path) -> str:
    """pi_0's directory, made once by ``rwft bootstrap`` (resumable), or --model itself."""
    if config.bootstrap_contexts <= 0:
        return config.model
    from rwft.recipes.bootstrap import BootstrapConfig, run_bootstrap

    pi0 = out / "pi0" / "train"
    if not (pi0 / "config.json").exists() or not (out / "pi0" / "bootstrap.json").exists():
        t0 = time.time()
        run_bootstrap(BootstrapConfig(env=config.env, output=str(out / "pi0"), env_args=list(config.env_args),
                                      contexts=config.bootstrap_contexts, epochs=config.bootstrap_epochs,
                                      learning_rate=config.bootstrap_learning_rate,
                                      batch_size=config.bootstrap_batch_size or config.batch_size,
                                      eval_contexts=config.bootstrap_eval_contexts, best_of=config.samples_per_context,
                                      max_new_tokens=config.max_new_tokens, seed=config.collect_seed + 7,
                                      progress=config.progress, quiet=not config.progress))
        print(f"pi_0: bootstrapped in {time.time() - t0:.0f} s", flush=True)
    return str(pi0)


def collect_logs(config: Any, pi0: str, out: Path) -> str:
    """``OUTPUT/logs.jsonl``: the logs played by ``config.logs_policy`` (pi_0 when empty), or ``config.data``."""
    if config.data:
        return config.data
    from rwft.data.io import count_complete_lines
    from rwft.rollout.collect import CollectConfig, run_collect

    path = out / "logs.jsonl"
    t0 = time.time()
    policy = config.logs_policy or pi0
    run_collect(CollectConfig(env=config.env, out=str(path), policy=policy, contexts=config.contexts,
                              samples_per_context=config.samples_per_context, temperatures=list(config.temperatures),
                              seed=config.collect_seed, env_args=list(config.env_args),
                              max_new_tokens=config.max_new_tokens, progress=config.progress,
                              quiet=not config.progress, generator_url=config.generator_url,
                              served_model=config.served_model, request_timeout=config.request_timeout))
    who = config.logs_policy or "pi_0"
    print(f"logs: {count_complete_lines(path)} episodes of {who} in {path} ({time.time() - t0:.0f} s)", flush=True)
    return str(path)


def label_per_turn(config: Any, data: str, out: Path) -> str:
    """``OUTPUT/logs-per-turn.jsonl``: the logs with turn rewards by redistribution (``rwft label --per-turn``,
    resumable), made once when a method trains on them."""
    from rwft.data.io import count_complete_lines
    from rwft.rollout.label import LabelConfig, run_label

    path = out / "logs-per-turn.jsonl"
    t0 = time.time()
    run_label(LabelConfig(data=data, out=str(path), judge=config.per_turn_judge, per_turn=True, progress=False))
    print(f"per-turn credit: {count_complete_lines(path)} conversations by redistribution "
          f"(judge {config.per_turn_judge}) in {path} ({time.time() - t0:.0f} s)", flush=True)
    return str(path)
