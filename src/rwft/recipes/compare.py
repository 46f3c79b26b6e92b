"""``rwft compare``: every objective on one logged dataset, several seeds, one table.

The pipeline, each stage a plain directory under ``OUTPUT`` so a rerun skips what is done (stages 1-2 and the
per-turn labels in ``recipes.pi0_and_logs``):

1. ``pi0/`` (when ``--bootstrap-contexts`` > 0): the logging policy pi_0, made by ``rwft bootstrap`` (SFT of
   the tiny preset on scripted conversations of mixed quality, so its rollouts spread in reward).
   Otherwise pi_0 is ``--model`` itself.
2. ``logs.jsonl`` (unless ``--data`` is given): m samples per context from pi_0 at the listed temperatures.
3. ``cells/METHOD-sSEED/``: each method trained from pi_0 on the same data with the same epochs, learning
   rate, batch size and length (Base: pi_0 untrained), then evaluated by ``rwft eval`` on fresh tasks drawn
   with evaluation seed ``eval_seed + SEED`` (the same tasks for every method at one seed). A cell is done
   when its ``result.json`` exists; finished cells are never recomputed (resumable), and a cell whose training
   finished (``trained.json``) but whose evaluation did not is only evaluated again. A method that cannot
   train on the data (no reward spread for swift, no pairs for DPO) records its error and shows ``-``.
4. with ``--quality-judge``: ``cells/METHOD-sSEED/quality.jsonl``, the first ``--quality-episodes`` evaluation
   episodes graded by a rubric judge on the paper's six dimensions (``rwft.eval.quality``), added to the
   cell's metrics as ``judge_overall`` ... and ``judge_failure`` (also for cells finished before it was
   asked for); the report notes how far the judge agrees with exact match over all judged episodes.
5. ``report/``: table.md / table.csv (mean ± 95% CI over seeds per metric, training time, peak memory),
   reward.png, training.png, report.html (see ``rwft.eval.report``).

Methods (``METHODS``): base and every offline objective of ``objectives.registry`` by its row name: sft,
star-gate (filtered, top-1 per context), refit, swift, per-turn (turn rewards by redistribution, labelled once
into ``logs-per-turn.jsonl`` by ``--per-turn-judge``), star-gate-d, qsft (its behaviour policy the same seed's
sft cell when there is one; played by policy extraction), dpo (final answer) and stepdpo. A weighted method
(sft, star-gate, refit, swift, per-turn, star-gate-d) with the suffix ``+spans`` (``refit+spans``, its row name)
trains on the logs labelled once with error spans by ``--span-judge`` (``recipes.spans_stage``), each token of a
span weighing w - ``--span-weight`` * its severity's penalty; its plain row trains with no span penalty.
The weighted objectives train on random batches by default (``group_by_length``); DPO / StepDPO may get
their own learning rate (``dpo_learning_rate``). After the table, one line per (Refit or Swift,
other method) says whether its reward interval lies above ("beats"), below, or overlaps the other's.
On the terminal: one line per cell (``refit seed 1: reward 0.853, trained 5.2 s, eval 3.1 s``) and then the
table as in table.md; the inner collection, training and evaluation print nothing unless ``--progress``.
Nothing is written before the environment options, ``--data`` and ``--model`` are checked.
Training time is the wall time of the training call; peak memory is the peak resident set size of this
process during it (reset before each cell through /proc/self/clear_refs) on the CPU, or the peak CUDA
memory allocated on a GPU.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.data.io import write_text_atomic
from rwft.errors import RwftError
from rwft.objectives.registry import OBJECTIVES, Objective
from rwft.recipes.pi0_and_logs import EvalOptions, Pi0Options
from rwft.recipes.quality_stage import add_quality
from rwft.recipes.spans_stage import check_span_judge_inputs, check_span_methods, split_method
from rwft.rollout.served_adapters import check_request_timeout

# One row per method: "base" (pi_0 untrained) and every offline objective of the registry, by its row name.
METHODS: dict[str, Objective | None] = {"base": None, **{o.row: o for o in OBJECTIVES.values() if o.offline}}


@dataclass
class CompareConfig(Pi0Options, EvalOptions):
    """Options of ``rwft compare``."""

    output: str
    """Directory of the whole comparison (pi0, logs, one directory per cell, the report)."""
    env: str = "mcqa"
    """Environment used to collect the logs (when --data is not given) and to evaluate every method."""
    env_args: list[str] = field(default_factory=lambda: ["source=arithmetic", "difficulty=1"])
    """Environment options as key=value, for collection and evaluation."""
    model: str = "tiny"
    """The base model: a preset, a directory or a hub id (pi_0 itself unless --bootstrap-contexts > 0)."""
    data: str = ""
    """Logged conversations to train on; empty: collect them from pi_0 into OUTPUT/logs.jsonl."""
    logs_policy: str = ""
    """The policy that plays the collected logs (as rwft collect --policy, e.g. scripted); empty: pi_0."""
    methods: list[str] = field(default_factory=lambda: ["base", "sft", "star-gate", "dpo", "stepdpo", "refit", "swift"])
    """Methods to compare: base, sft, star-gate, star-gate-d, dpo, stepdpo, refit, swift, per-turn, qsft; a
    weighted one with +spans (sft+spans, star-gate+spans, star-gate-d+spans, refit+spans, swift+spans,
    per-turn+spans) trains on the logs with error spans from --span-judge."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: each method is trained and evaluated once per seed."""
    contexts: int = 40
    """Contexts of the collected logs."""
    samples_per_context: int = 3
    """Samples m per context (the paper: 3, at different temperatures)."""
    temperatures: list[float] = field(default_factory=lambda: [0.6, 0.9, 1.2])
    """Sampling temperatures of the logs."""
    collect_seed: int = 0
    """Seed of the logged tasks and their generation."""
    epochs: float = 2.0
    """Training epochs, the same budget for every method."""
    learning_rate: float = 3e-4
    """Learning rate of every method."""
    dpo_learning_rate: float = 0.0
    """Learning rate of DPO and StepDPO (0: --learning-rate); DPO may diverge at rates that suit weighted SFT."""
    batch_size: int = 8
    """Batch size (conversations for the weighted objectives, pairs for DPO)."""
    max_length: int = 512
    """Longest training sequence in tokens."""
    group_by_length: bool = False
    """Length-grouped batches for the weighted objectives. Off by default: where behaviour sets the length (in
    the demo, asking makes a longer conversation than guessing), grouped batches each hold one behaviour, so a
    Swift batch can hold only negative weights, a pure push-down step; random batches mix them."""
    beta: float = 0.1
    """DPO / StepDPO beta."""
    gamma: float = 1.0
    """per-turn and qsft: discount per agent turn."""
    per_turn_judge: str = "env"
    """per-turn: the judge that scores each prefix of a logged conversation (rwft label --per-turn --judge)."""
    span_judge: str = "tod"
    """+spans methods: the span judge that labels the logs once (rwft label --spans --judge): tod (rules over an
    --env tod episode's goal and database) or rubric (--span-judge-model asked for the errors as JSON)."""
    span_judge_model: str = ""
    """+spans methods with --span-judge rubric: the judge model, a preset, directory or http(s):// URL."""
    span_api_model: str = ""
    """+spans methods with an http(s):// --span-judge-model: the model name it serves."""
    span_weight: float = 0.1
    """+spans methods: lambda, a token in an error span weighs w - lambda * p (p: minor 1, major 5, critical 10;
    rwft train --span-weight). The plain methods train with lambda 0, so a pair differs only in the spans."""
    push_down_limit: float = 0.2
    """Weighted methods: how far a token with a negative weight is pushed below pi_0 (rwft train
    --push-down-limit; inf: no bound, the paper's objective)."""
    qsft_beta: float = 4.0
    """qsft: the acting beta of pi_phi * exp(beta * p_theta) at evaluation. Its behaviour policy pi_phi is the
    sft cell of the same seed when sft is among the methods (the same SFT on the same data), else trained."""
    lora: bool = False
    """Train every method as a LoRA adapter (all linear layers; saved merged, so evaluation loads a plain model)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
    generator_url: str = ""
    """OpenAI-compatible server with runtime LoRA loading (scripts/vllm_cpu.sh) that plays pi_0's logs (as
    --served-model) and every cell's evaluation (its adapter, saved unmerged, loaded at run time); needs --lora.
    Perplexity under pi_0 stays in this process. Empty: everything runs in this process."""
    served_model: str = ""
    """With --generator-url: the name the server gives the base model --model (scripts/vllm_cpu.sh: smollm2)."""
    request_timeout: float = 120.0
    """With --generator-url: seconds one request to the server may take, its retries included (a long prompt's
    prefill on a slow CPU server can need more). When it runs out the comparison stops with an error naming this
    option; finished cells are kept, and a rerun resumes."""
    eval_env_args: list[str] = field(default_factory=list)
    """Extra environment options for evaluation only (e.g. split=test); appended to --env-args."""
    max_new_tokens: int = 48
    """Tokens generated per agent turn (collection and evaluation)."""
    perplexity: bool = True
    """Report the perplexity of each method's agent text under pi_0."""
    quality_judge: str = ""
    """Rubric judge of language quality (the paper's six dimensions): a model preset/directory or an
    OpenAI-compatible http(s):// URL; empty: no judged quality."""
    quality_api_model: str = ""
    """The model name the --quality-judge URL serves (an http(s):// judge needs it)."""
    quality_episodes: int = 20
    """Evaluation episodes judged per cell (the first ones of its evaluation seed)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default, one per core). On a busy machine 1 is often much faster."""
    progress: bool = False
    """Show the inner stages' progress bars and messages (collection, training, evaluation). Off: one line per
    cell and the table."""

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if split_method(m)[0] not in METHODS]
        if bad:
            raise RwftError(f"--methods: unknown {bad}; known: {', '.join(METHODS)} (weighted ones also +spans)")
        check_span_methods(self.methods, METHODS)
        if not self.span_weight > 0.0 and any(split_method(m)[1] for m in self.methods):
            raise RwftError(f"--span-weight {self.span_weight}: the +spans methods need a value > 0 (at 0 they "
                            "would train as the plain ones)")
        if not self.seeds:
            raise RwftError("--seeds: give at least one seed")
        if self.quality_episodes < 1:
            raise RwftError(f"--quality-episodes {self.quality_episodes}: expected a positive integer")
        check_request_timeout(self.request_timeout)
        need = [what for what, ok in (("--lora true", self.lora), ("--served-model", self.served_model),
                                      ("no --bootstrap-contexts", self.bootstrap_contexts <= 0),
                                      ("no qsft", "qsft" not in self.methods)) if not ok]
        if self.generator_url and need:
            raise RwftError(f"--generator-url {self.generator_url}: needs {', '.join(need)} (the server plays the "
                            "base model and loads each cell's LoRA adapter; it cannot load full weights)")


def objective(method: str) -> Objective | None:
    """The registry entry a method trains (None: base), ``+spans`` or not."""
    return METHODS[split_method(method)[0]]


def trainer_config(config: CompareConfig, method: str, seed: int, data: str, pi0: str, out: str,
                   behaviour: str | None = None):
    """The config of ``rwft train`` (or ``rwft dpo``) that trains one method from pi_0, silently
    (``behaviour``: Q-SFT's behaviour policy, when one is trained already); the span penalty's lambda is
    --span-weight for a +spans method, 0 for every other."""
    common = dict(data=data, model=pi0, output_dir=out, num_train_epochs=config.epochs,
                  learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
                  max_length=config.max_length, seed=seed, report_to="none", save_steps=10**6, disable_tqdm=True,
                  lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                  merge_lora=config.lora and not config.generator_url)
    entry = objective(method)
    if entry.trainer == "dpo":
        from rwft.train.dpo import DpoConfig

        common["learning_rate"] = config.dpo_learning_rate or config.learning_rate
        return DpoConfig(beta=config.beta, **entry.settings, **common)
    from rwft.train.weighted import TrainConfig

    extra = {}
    if entry.trainer == "qsft":
        extra = dict(qsft_beta=config.qsft_beta, behaviour_model=behaviour)
    span_weight = config.span_weight if split_method(method)[1] else 0.0
    return TrainConfig(objective=entry.name, group_by_length=config.group_by_length, gamma=config.gamma,
                       span_weight=span_weight, push_down_limit=config.push_down_limit, **entry.settings, **extra,
                       **common)


def train_cell(config: CompareConfig, method: str, seed: int, data: str, pi0: str, cell: Path) -> str:
    """Train one method from pi_0; return the policy to evaluate."""
    if not objective(method):
        return pi0
    from rwft.train.dpo import run_dpo
    from rwft.train.trainers import train

    sft = cell.parent / f"sft-s{seed}"
    behaviour = str(sft / "model") if (sft / "result.json").exists() and (sft / "model" / "config.json").exists() \
        else None
    trainer = trainer_config(config, method, seed, data, pi0, str(cell / "model"), behaviour)
    (run_dpo if objective(method).trainer == "dpo" else train)(trainer)
    return str(cell / "model")


def eval_cell(config: CompareConfig, policy: str, seed: int, pi0: str, cell: Path) -> dict[str, Any]:
    from rwft.eval.evaluate import EvalConfig, run_eval

    return run_eval(EvalConfig(
        policy=policy, env=config.env, output=str(cell / "eval"), episodes=config.eval_episodes,
        seeds=[config.eval_seed + seed], env_args=[*config.env_args, *config.eval_env_args],
        temperature=config.eval_temperature, max_new_tokens=config.max_new_tokens,
        ppl_model=pi0 if config.perplexity else "", progress=config.progress, quiet=not config.progress,
        qsft_beta=config.qsft_beta, generator_url=config.generator_url, served_model=config.served_model,
        request_timeout=config.request_timeout,
    ))


def run_cell(config: CompareConfig, method: str, seed: int, data: str, pi0: str, out: Path) -> dict[str, Any]:
    """Train and evaluate one (method, seed) cell unless its result.json exists; return its result."""
    from rwft.eval.evaluate import flat

    cell = out / "cells" / f"{method}-s{seed}"
    done = cell / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    trained = cell / "trained.json"  # training finished: a rerun after a failed evaluation evaluates that model
    if trained.exists():
        cost = json.loads(trained.read_text())
        policy = cost.pop("policy")
    else:
        shutil.rmtree(cell / "model", ignore_errors=True)  # an interrupted training restarts clean
        cell.mkdir(parents=True, exist_ok=True)
        from rwft.recipes.cost import measure

        try:
            with measure() as cost:
                policy = train_cell(config, method, seed, data, pi0, cell)
        except RwftError as e:  # e.g. swift / dpo on logs without reward spread: recorded, not fatal
            result = {"method": method, "seed": seed, "metrics": {}, "error": str(e)}
            done.write_text(json.dumps(result))
            return result
        if method == "base":
            cost.update(train_time_s=0.0, peak_memory_mb=0.0)
        write_text_atomic(trained, json.dumps({"policy": policy, **cost}))
    t_eval = time.perf_counter()
    ev = eval_cell(config, policy, seed, pi0, cell)
    cost["eval_time_s"] = time.perf_counter() - t_eval
    log_path = cell / "model" / "train_log.jsonl"
    train_log = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    samples_path = cell / "eval" / "samples.jsonl"
    samples = [json.loads(x)["messages"] for x in samples_path.read_text().splitlines()] if samples_path.exists() \
        else []
    result = {"method": method, "seed": seed, "metrics": flat(ev["metrics"]), **cost,
              "train_log": train_log, "samples": samples[:2]}
    write_text_atomic(done, json.dumps(result))
    return result


def cell_line(result: dict[str, Any], resumed: bool = False) -> str:
    """The one line printed per cell: ``refit seed 1: reward 0.853, trained 5.2 s, eval 3.1 s``."""
    head = f"{result['method']} seed {result['seed']}"
    if "error" in result:
        return f"{head}: not trained ({result['error']})"
    reward = result.get("metrics", {}).get("reward")
    parts = [f"reward {reward:.3f}" if isinstance(reward, (int, float)) else "reward -"]
    if result["method"] != "base":
        parts.append(f"trained {result.get('train_time_s', 0.0):.1f} s")
    if "eval_time_s" in result:
        parts.append(f"eval {result['eval_time_s']:.1f} s")
    judged = result.get("metrics", {}).get("judge_overall")
    if isinstance(judged, (int, float)) and judged == judged:
        parts.append(f"judged overall {judged:.2f}")
    return f"{head}: {', '.join(parts)}" + (" (done before)" if resumed else "")


def check_inputs(config: CompareConfig) -> None:
    """Check what the comparison reads (environment options, --data, --model) before anything is written."""
    from rwft.presets import locate_model
    from rwft.rollout.envs.base import make_env

    make_env(config.env, list(config.env_args))
    make_env(config.env, [*config.env_args, *config.eval_env_args])
    if config.data and not Path(config.data).exists():
        raise RwftError(f"--data {config.data}: no such file or directory")
    if config.bootstrap_contexts <= 0:  # pi_0 is --model itself (bootstrap trains the tiny preset)
        locate_model(config.model)
    if config.quality_judge and not config.quality_judge.startswith(("http://", "https://")):
        locate_model(config.quality_judge)
    elif config.quality_judge and not config.quality_api_model:
        raise RwftError(f"--quality-judge {config.quality_judge}: an http(s):// judge needs --quality-api-model "
                        "(the model name it serves)")
    if any(split_method(m)[1] for m in config.methods):
        check_span_judge_inputs(config)


def run_compare(config: CompareConfig) -> dict[str, Any]:
    """Run (or finish) the comparison; print one line per cell and the table; return the report's files."""
    from rwft.eval.paired import paired_lines
    from rwft.eval.quality import episode_intervals
    from rwft.eval.report import write_report
    from rwft.recipes.pi0_and_logs import collect_logs, label_per_turn, make_pi0
    from rwft.recipes.spans_stage import counts_line, label_spans, pair_lines

    check_inputs(config)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    pi0 = make_pi0(config, out)
    data = collect_logs(config, pi0, out)
    datasets, span_notes = {"": data}, []
    if any(objective(m) and objective(m).turn_credit for m in config.methods):
        datasets["per-turn"] = label_per_turn(config, data, out)
    for key in dict.fromkeys(data_key(m) for m in config.methods if split_method(m)[1]):
        datasets[key], counts = label_spans(config, datasets[key.removesuffix("+spans")], out)
        span_notes.append(f"{counts_line(counts, config.span_judge)} ({Path(datasets[key]).name})")
    results, judged, judge = [], [], {}
    for seed in config.seeds:
        for method in config.methods:
            resumed = (out / "cells" / f"{method}-s{seed}" / "result.json").exists()
            results.append(run_cell(config, method, seed, datasets[data_key(method)], pi0, out))
            if config.quality_judge:
                judged += add_quality(config, results[-1], out, judge)
            print(cell_line(results[-1], resumed), flush=True)
            results[-1]["metrics_ci"] = episode_intervals(out / "cells" / f"{method}-s{seed}")
    from rwft.eval.quality import judge_trust, trust_line
    from rwft.rollout.judges import KEYS

    keep = ["reward", "correct", "success", "asked", "turns", "thinking", "length", "repetition", "distinct_2",
            "perplexity", *(f"judge_{k}" for k in KEYS), "judge_failure"]
    names = [k for k in keep if any(r["metrics"].get(k) for r in results)]  # present and not always 0
    title = f"rwft compare: {config.env} {' '.join(config.env_args)}"
    notes = [*pair_lines(results), *span_notes, *paired_lines(out / "cells", config.methods, config.seeds)]
    summary = out / "pi0" / "bootstrap.json"
    if config.bootstrap_contexts > 0 and summary.exists():
        p = json.loads(summary.read_text())["pi0"]
        notes.append(f"pi_0 on {p.get('episodes', 0)} held-out rollouts: mean reward "
                     f"{p.get('mean_reward', float('nan')):.3f}, best-of-{config.samples_per_context} "
                     f"{p.get('best_of_m_reward', float('nan')):.3f}")
    if judged:
        notes.append(trust_line(judge_trust(judged), config.quality_judge))
    if len(config.seeds) == 1:
        notes.append("one seed: each ± is the 95% interval over that cell's evaluation (or judged) episodes, "
                     "not over training seeds")
    notes.append(f"plots and report: {out / 'report'}")
    files = write_report(results, out / "report", names, title=title, notes=notes)
    print(files["markdown"].read_text(), end="", flush=True)
    return {k: str(v) for k, v in files.items()}


def data_key(method: str) -> str:
    """Which logs a method trains on: "" (the logs), "per-turn" (with turn credit), either + "+spans"."""
    entry = objective(method)
    key = "per-turn" if entry and entry.turn_credit else ""
    return key + ("+spans" if split_method(method)[1] else "")
