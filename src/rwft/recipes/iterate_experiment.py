"""The semi-online experiment: ``rwft iterate`` cells (objective x sync interval x seed) from one pi_0, evaluated.

    rwft sweep --config examples/iterate-demo.yaml

Every cell trains from the same pi_0 with the same number of optimizer steps and generated episodes
(``steps x prompts_per_step x group_size``), then ``rwft eval`` plays ``eval_episodes`` fresh tasks of
evaluation seed ``eval_seed + seed`` (the same tasks for every method at one seed). A cell is done when its
``result.json`` exists (a rerun skips it; an interrupted ``rwft iterate`` resumes). Written to ``OUTPUT``:
``pi0/`` (bootstrapped as ``rwft compare`` does, unless ``policy`` names one), ``cells/NAME-sSEED/``,
``report/`` (table.md / table.csv with mean and 95% Student-t interval over seeds, report.html) and
``report/curves.png`` (the generator's next-token entropy, response length, training reward and KL per step,
mean over seeds). Besides the evaluation metrics the table gives, per cell, the training log's mean over the
last quarter of the steps of the entropy (``entropy_end``), the response length (``tokens_end``) and the KL
to the reference (``kl_end``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.data.io import write_text_atomic
from rwft.errors import RwftError


@dataclass
class IterateExperimentConfig:
    """Options of ``rwft sweep``."""

    output: str
    """Directory of the experiment."""
    env: str = "clarify"
    """Environment of training and evaluation."""
    env_args: list[str] = field(default_factory=lambda: ["source=requests", "difficulty=3", "unambiguous=0"])
    """Its options."""
    policy: str = ""
    """pi_0 (a model directory); empty: bootstrap it into OUTPUT/pi0 as rwft compare's demo does."""
    bootstrap_contexts: int = 150
    """Scripted contexts x 2 for the bootstrap SFT (as examples/compare-demo.yaml)."""
    bootstrap_epochs: float = 3.0
    """Epochs of that SFT."""
    bootstrap_learning_rate: float = 3e-3
    """Its learning rate."""
    methods: list[str] = field(default_factory=lambda: [
        "offline-dpo:dpo:never", "dpo-s8:dpo:8", "dpo-s4:dpo:4", "online-dpo:dpo:1", "grpo:grpo:1", "swift:swift:1"])
    """Cells as NAME:OBJECTIVE:S, with :ref appended to sync the reference too."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds (training tasks and sampling; evaluation seed eval_seed + seed)."""
    steps: int = 24
    """Optimizer steps per cell."""
    prompts_per_step: int = 8
    """Tasks per step."""
    group_size: int = 4
    """Episodes per task."""
    temperature: float = 1.0
    """Generator temperature."""
    max_new_tokens: int = 12
    """Tokens per agent turn (training and evaluation)."""
    learning_rate: float = 1e-3
    """Learning rate of every objective (see dpo_learning_rate)."""
    dpo_learning_rate: float = 0.0
    """Learning rate of DPO cells (0: learning_rate)."""
    beta: float = 0.1
    """DPO beta."""
    kl_coef: float = 0.001
    """GRPO KL coefficient."""
    eval_episodes: int = 100
    """Evaluation episodes per cell."""
    eval_seed: int = 1000
    """Evaluation seed base."""
    eval_temperature: float = 0.7
    """Evaluation sampling temperature."""
    threads: int = 1
    """Torch CPU threads."""

    def cells(self) -> list[tuple[str, str, str, bool]]:
        out = []
        for spec in self.methods:
            parts = spec.split(":")
            if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "ref"):
                raise RwftError(f"methods: {spec!r}: expected NAME:OBJECTIVE:S or NAME:OBJECTIVE:S:ref")
            out.append((parts[0], parts[1], parts[2], len(parts) == 4))
        return out


def run_cell(config: IterateExperimentConfig, pi0: str, name: str, objective: str, sync: str, ref: bool,
             seed: int, out: Path) -> dict[str, Any]:
    from rwft.eval.evaluate import EvalConfig, flat, run_eval
    from rwft.recipes.iterate import IterateConfig, run_iterate

    cell = out / "cells" / f"{name}-s{seed}"
    done = cell / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    lr = config.dpo_learning_rate if objective == "dpo" and config.dpo_learning_rate else config.learning_rate
    t0 = time.perf_counter()
    run_iterate(IterateConfig(
        output=str(cell / "run"), env=[config.env], env_args=list(config.env_args), policy=pi0, objective=objective,
        sync_every=sync, sync_reference=ref, steps=config.steps, prompts_per_step=config.prompts_per_step,
        group_size=config.group_size, temperature=config.temperature, max_new_tokens=config.max_new_tokens,
        learning_rate=lr, beta=config.beta, kl_coef=config.kl_coef, seed=seed, threads=config.threads,
        progress=False, quiet=True))
    train_s = time.perf_counter() - t0
    ev = run_eval(EvalConfig(policy=str(cell / "run" / "model"), env=config.env, output=str(cell / "eval"),
                             episodes=config.eval_episodes, seeds=[config.eval_seed + seed],
                             env_args=list(config.env_args), temperature=config.eval_temperature,
                             max_new_tokens=config.max_new_tokens, similarity=False, progress=False, quiet=True))
    log = [json.loads(x) for x in (cell / "run" / "steps.jsonl").read_text().splitlines()]
    tail = log[-max(1, len(log) // 4):]
    metrics = flat(ev["metrics"])
    for key, label in (("entropy", "entropy_end"), ("response_tokens", "tokens_end"), ("kl", "kl_end")):
        metrics[label] = sum(r[key] for r in tail) / len(tail)
    result = {"method": name, "seed": seed, "metrics": metrics, "train_time_s": train_s,
              "train_log": [{k: r.get(k) for k in ("step", "loss", "reward", "entropy", "response_tokens", "kl")}
                            for r in log]}
    write_text_atomic(done, json.dumps(result))
    return result


def plot_curves(results: list[dict[str, Any]], path: Path) -> None:
    """Entropy, response length, training reward and KL against the step, mean over seeds, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("entropy", "generator next-token entropy"), ("response_tokens", "response tokens"),
            ("reward", "training reward"), ("kl", "KL to reference")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    methods = list(dict.fromkeys(r["method"] for r in results))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for m in methods:
            logs = [r["train_log"] for r in results if r["method"] == m and r.get("train_log")]
            if not logs:
                continue
            n = min(len(x) for x in logs)
            ax.plot(range(1, n + 1), [sum(x[i][key] for x in logs) / len(logs) for i in range(n)], label=m)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key == "kl":  # off-policy k3 on stale samples reaches thousands: a log scale keeps the rest visible
            ax.set_yscale("symlog", linthresh=1.0)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_experiment(config: IterateExperimentConfig) -> str:
    from rwft.eval.report import write_report
    from rwft.recipes.compare import CompareConfig, cell_line
    from rwft.recipes.logs import make_pi0

    cells = config.cells()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    pi0 = config.policy or make_pi0(CompareConfig(
        output=str(out), env=config.env, env_args=list(config.env_args), bootstrap_contexts=config.bootstrap_contexts,
        bootstrap_epochs=config.bootstrap_epochs, bootstrap_learning_rate=config.bootstrap_learning_rate,
        max_new_tokens=config.max_new_tokens, samples_per_context=config.group_size), out)
    results = []
    for seed in config.seeds:
        for name, objective, sync, ref in cells:
            resumed = (out / "cells" / f"{name}-s{seed}" / "result.json").exists()
            results.append(run_cell(config, pi0, name, objective, sync, ref, seed, out))
            print(cell_line(results[-1], resumed), flush=True)
    names = [k for k in ("reward", "asked", "turns", "length", "entropy_end", "tokens_end", "kl_end")
             if any(k in r["metrics"] for r in results)]
    title = f"rwft iterate: {config.env} {' '.join(config.env_args)}"
    files = write_report(results, out / "report", names, title=title,
                         notes=[f"pi_0: {pi0}; {config.steps} steps x {config.prompts_per_step} tasks x "
                                f"{config.group_size} episodes per cell"])
    plot_curves(results, out / "report" / "curves.png")
    table = files["markdown"].read_text()
    print(table, end="", flush=True)
    return table

