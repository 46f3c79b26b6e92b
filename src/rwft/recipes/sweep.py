"""The semi-online experiment: ``rwft iterate`` cells (objective x sync interval x seed) from one pi_0, evaluated.

    rwft sweep --config examples/iterate-demo.yaml

Every cell trains from the same pi_0 with the same number of optimizer steps and generated episodes
(``steps x prompts_per_step x group_size``), then ``rwft eval`` plays ``eval_episodes`` fresh tasks of
evaluation seed ``eval_seed + seed`` (the same tasks for every method at one seed); the ``pi0`` row is pi_0
itself on those tasks. A cell is done when its ``result.json`` exists (a rerun skips it; an interrupted
``rwft iterate`` resumes). Written to ``OUTPUT``:
``pi0/`` (bootstrapped as ``rwft compare`` does, unless ``policy`` names one), ``cells/NAME-sSEED/``,
``report/`` (table.md / table.csv with mean and 95% Student-t interval over seeds, report.html) and
``report/curves.png`` (the generator's next-token entropy, response length, training reward and KL per step,
mean over seeds). Besides the evaluation metrics the table gives, per cell, the training log's mean over the
last quarter of the steps of the entropy (``entropy_end``), the response length (``tokens_end``) and the KL
to the reference (``kl_end``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rwft.data.io import write_text_atomic
from rwft.errors import RwftError
from rwft.recipes.iterate import IterateConfig
from rwft.recipes.pi0_and_logs import EvalOptions, Pi0Options


@dataclass(kw_only=True)
class SweepConfig(IterateConfig, Pi0Options, EvalOptions):
    """Options of ``rwft sweep``: every cell is an ``rwft iterate`` run with these options, its objective, sync
    interval and seed taken from ``methods`` and ``seeds``; ``output`` is the experiment's directory."""

    methods: list[str] = field(default_factory=lambda: [
        "offline-dpo:dpo:never", "dpo-s8:dpo:8", "dpo-s4:dpo:4", "online-dpo:dpo:1", "grpo:grpo:1", "swift:swift:1"])
    """Cells as NAME:OBJECTIVE:S, with :ref appended to sync the reference too and :spans to label the cell's episodes
    with --span-judge (the other cells get no spans)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds (training tasks and sampling; evaluation seed eval_seed + seed)."""
    dpo_learning_rate: float = 0.0
    """Learning rate of DPO cells (0: learning_rate)."""

    def cells(self) -> list[tuple[str, str, str, bool, bool]]:
        """The cells (name, objective, interval, sync reference, spans), each checked as its rwft iterate will be."""
        out = []
        for spec in self.methods:
            parts = spec.split(":")
            flags = parts[3:]
            if len(parts) < 3 or not set(flags) <= {"ref", "spans"} or len(set(flags)) != len(flags):
                raise RwftError(f"methods: {spec!r}: expected NAME:OBJECTIVE:S, then :ref and / or :spans")
            if parts[0] == "pi0":
                raise RwftError(f"methods: {spec!r}: the name pi0 is the row of pi_0 itself; choose another")
            if "spans" in flags and not self.span_judge:
                raise RwftError(f"methods: {spec!r}: a :spans cell needs --span-judge (tod)")
            out.append((parts[0], parts[1], parts[2], "ref" in flags, "spans" in flags))
            self.cell(self.policy or "pi0", *out[-1], 0, Path(self.output)).check()
        if len(self.env) != 1:
            raise RwftError(f"--env {self.env}: rwft sweep trains and evaluates in one environment")
        if not self.policy and self.bootstrap_contexts <= 0:
            raise RwftError("no pi_0: give --policy, or --bootstrap-contexts N to make one with rwft bootstrap")
        return out

    def cell(self, pi0: str, name: str, objective: str, sync: str, ref: bool, spans: bool, seed: int,
             out: Path) -> IterateConfig:
        """The ``rwft iterate`` config of one cell."""
        lr = self.dpo_learning_rate if objective == "dpo" and self.dpo_learning_rate else self.learning_rate
        base = IterateConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(IterateConfig)})
        return dataclasses.replace(base, output=str(out / "cells" / f"{name}-s{seed}" / "run"), policy=pi0,
                                   objective=objective, sync_every=sync, sync_reference=ref, seed=seed,
                                   learning_rate=lr, span_judge=self.span_judge if spans else "", progress=False,
                                   quiet=True)


def evaluate(config: SweepConfig, policy: str, seed: int, output: Path) -> dict[str, Any]:
    """``rwft eval`` of ``policy`` on seed ``seed``'s evaluation tasks (``eval_seed + seed``); its metrics, flat."""
    from rwft.eval.evaluate import EvalConfig, flat, run_eval

    ev = run_eval(EvalConfig(policy=policy, env=config.env[0], output=str(output), episodes=config.eval_episodes,
                             seeds=[config.eval_seed + seed], env_args=list(config.env_args),
                             temperature=config.eval_temperature, max_new_tokens=config.max_new_tokens,
                             similarity=False, progress=False, quiet=True))
    return flat(ev["metrics"])


def run_pi0_cell(config: SweepConfig, pi0: str, seed: int, out: Path) -> dict[str, Any]:
    """The ``pi0`` row: pi_0 itself on the seed's evaluation tasks, the baseline every cell starts from."""
    cell = out / "cells" / f"pi0-s{seed}"
    done = cell / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    result = {"method": "pi0", "seed": seed, "metrics": evaluate(config, pi0, seed, cell / "eval"),
              "train_time_s": 0.0}
    write_text_atomic(done, json.dumps(result))
    return result


def run_cell(config: SweepConfig, pi0: str, name: str, objective: str, sync: str, ref: bool, spans: bool,
             seed: int, out: Path) -> dict[str, Any]:
    from rwft.recipes.iterate import run_iterate

    cell = out / "cells" / f"{name}-s{seed}"
    done = cell / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    run_iterate(config.cell(pi0, name, objective, sync, ref, spans, seed, out))
    train_s = time.perf_counter() - t0
    metrics = evaluate(config, str(cell / "run" / "model"), seed, cell / "eval")
    log = [json.loads(x) for x in (cell / "run" / "steps.jsonl").read_text().splitlines()]
    tail = log[-max(1, len(log) // 4):]
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


def run_experiment(config: SweepConfig) -> str:
    from rwft.eval.report import write_report
    from rwft.recipes.compare import CompareConfig, cell_line
    from rwft.recipes.pi0_and_logs import make_pi0

    cells = config.cells()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    pi0 = config.policy or make_pi0(CompareConfig(
        output=str(out), env=config.env[0], env_args=list(config.env_args),
        **{f.name: getattr(config, f.name) for f in fields(Pi0Options)},
        max_new_tokens=config.max_new_tokens, samples_per_context=config.group_size), out)
    results = []
    for seed in config.seeds:
        resumed = (out / "cells" / f"pi0-s{seed}" / "result.json").exists()
        results.append(run_pi0_cell(config, pi0, seed, out))
        print(cell_line(results[-1], resumed), flush=True)
        for name, objective, sync, ref, spans in cells:
            resumed = (out / "cells" / f"{name}-s{seed}" / "result.json").exists()
            results.append(run_cell(config, pi0, name, objective, sync, ref, spans, seed, out))
            print(cell_line(results[-1], resumed), flush=True)
    names = [k for k in ("reward", "asked", "turns", "length", "entropy_end", "tokens_end", "kl_end")
             if any(k in r["metrics"] for r in results)]
    title = f"rwft iterate: {config.env[0]} {' '.join(config.env_args)}"
    files = write_report(results, out / "report", names, title=title,
                         notes=[f"pi_0: {pi0}; {config.steps} steps x {config.prompts_per_step} tasks x "
                                f"{config.group_size} episodes per cell"])
    plot_curves(results, out / "report" / "curves.png")
    table = files["markdown"].read_text()
    print(table, end="", flush=True)
    return table

