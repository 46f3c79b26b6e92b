"""``rwft eval``: play a policy in an environment and measure it; metrics (JSON) and sample conversations.

For each evaluation seed, ``rwft collect`` plays ``episodes`` fresh tasks drawn with that seed (one
sample each, at ``temperature``), so episodes are resumable and reproducible, and every method evaluated
with the same seeds meets the same tasks. Measured, as mean with a 95% Student-t interval over episodes:

- ``reward`` (the judge's / environment's reward) and every numeric or boolean outcome the environment
  records in ``metadata`` (``correct`` = final-answer accuracy for mcqa; success and turns used for
  twenty-questions; questions asked and whether they paid for clarify; ``used_thinking``, ...), and the
  judge's dimension scores when a rubric judge is configured;
- language: thinking-tag use, reply length (words), repetition rate, distinct-1 / distinct-2 over all
  agent text, perplexity of the agent's text under ``--ppl-model`` (usually the base model pi_0), and
  MiniLM similarity to a reference explanation where the task carries one (``metadata.reference``).

Written to ``OUTPUT``: ``metrics.json`` (pooled over seeds and per seed), ``episodes-s{SEED}.jsonl``
(every conversation) and ``samples.jsonl`` (a few per seed, for reports).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rwft.errors import RwftError
from rwft.eval import metrics as M
from rwft.rollout.judges import JudgeOptions
from rwft.rollout.served_adapters import ServedOptions, release_policy

if TYPE_CHECKING:
    from rwft.rollout.collect import CollectConfig

SKIP_META = {"seed", "sample", "temperature", "env_reward", "truncated_actions", "judge_failure"}


@dataclass
class EvalConfig(JudgeOptions, ServedOptions):
    """Options of ``rwft eval`` (the judge's: ``JudgeOptions``; a served generator's: ``ServedOptions``)."""

    policy: str
    """The policy: a checkpoint directory, a preset (tiny, smollm2-135m), scripted[:SKILL] or an http(s) URL; with
    --generator-url, a LoRA adapter directory (loaded into the server) or the base model (--served-model)."""
    env: str
    """Environment: mcqa, clarify or twenty-questions."""
    output: str
    """Directory for metrics.json, the episodes and sample conversations."""
    episodes: int = 20
    """Tasks (episodes) per evaluation seed."""
    seeds: list[int] = field(default_factory=lambda: [1000])
    """Evaluation seeds: each draws its own tasks and sampling; metrics are pooled and given per seed."""
    env_args: list[str] = field(default_factory=list)
    """Environment options as key=value (e.g. source=arithmetic split=test)."""
    temperature: float = 0.7
    """Sampling temperature of the policy (0 is greedy)."""
    max_new_tokens: int = 96
    """Tokens generated per agent turn."""
    qsft_beta: float = 0.0
    """For a Q-SFT run as --policy: the acting beta of pi_phi * exp(beta * p_theta); 0 or less: qsft.json's."""
    batch_size: int = 32
    """Episodes advanced together."""
    ppl_model: str = ""
    """Model whose perplexity of the agent's text is reported (the base model pi_0); empty: skip."""
    similarity: bool = True
    """Report MiniLM similarity to reference explanations when tasks carry them."""
    samples: int = 3
    """Sample conversations kept per seed for reports."""
    progress: bool = True
    """Show a progress bar (one, over all seeds' episodes)."""
    quiet: bool = False
    """Print nothing (no progress bar, no summary line); for callers such as rwft compare."""


def outcome_values(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Every numeric / boolean metadata field (and judge score) as a list over episodes."""
    out: dict[str, list[float]] = {"reward": []}
    for r in records:
        out["reward"].append(float(r["reward"]) if r.get("reward") is not None else math.nan)
        meta = r.get("metadata", {})
        items = [(k, v) for k, v in meta.items() if k not in SKIP_META]
        items += [(f"judge_{k}", v) for k, v in (meta.get("scores") or {}).items() if k != "env"]
        for k, v in items:
            if isinstance(v, (bool, int, float)):
                out.setdefault(k, []).append(float(v))
    return out


def episode_metrics(records: list[dict[str, Any]], ppl_model=None, embedder=None) -> dict[str, Any]:
    """Metrics of a list of episode records: ``{name: mean_ci dict}`` plus pooled text statistics."""
    convs = [r["messages"] for r in records]
    values = outcome_values(records)
    values.update(M.text_metrics(convs))
    refs = [(r["metadata"]["reference"], M.agent_texts(r["messages"])) for r in records
            if isinstance(r.get("metadata", {}).get("reference"), str)]
    if embedder is not None and refs:
        values["similarity"] = M.semantic_similarity([" ".join(t) for _, t in refs], [ref for ref, _ in refs],
                                                     embedder)
    out: dict[str, Any] = {k: M.mean_ci([x for x in v if math.isfinite(x)]) for k, v in values.items()}
    texts = [t for c in convs for t in M.agent_texts(c)]
    out["distinct_1"] = M.distinct_n(texts, 1)
    out["distinct_2"] = M.distinct_n(texts, 2)
    if ppl_model is not None:
        model, tok = ppl_model
        out["perplexity"] = M.perplexity(model, tok, convs)
    return out


def flat(metrics: dict[str, Any]) -> dict[str, float]:
    """One number per metric (the mean for interval metrics)."""
    return {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in metrics.items()}


def collect_config(config: EvalConfig, seed: int) -> CollectConfig:
    """The ``rwft collect`` run that plays one evaluation seed into ``OUTPUT/episodes-sSEED.jsonl``."""
    from rwft.rollout.collect import CollectConfig

    return CollectConfig(
        env=config.env, out=str(Path(config.output) / f"episodes-s{seed}.jsonl"), policy=config.policy,
        contexts=config.episodes, samples_per_context=1, temperatures=[config.temperature], seed=seed,
        env_args=list(config.env_args), batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
        progress=config.progress and not config.quiet, quiet=config.quiet, qsft_beta=config.qsft_beta,
        generator_url=config.generator_url, served_model=config.served_model, request_timeout=config.request_timeout,
        **config.judge_options(),
    )


def collect_seed(config: EvalConfig, seed: int, policy: Any = None, judge_backend: Any = None,
                 bar: Any = None) -> list[dict[str, Any]]:
    """The episodes of one evaluation seed (played by rwft collect, resumed if already there)."""
    from rwft.data.io import load_conversations
    from rwft.rollout.collect import run_collect

    run = collect_config(config, seed)
    run_collect(run, policy=policy, judge_backend=judge_backend, bar=bar)
    return [c.to_record() for c in load_conversations(run.out, require_reward=False)]


def load_inputs(config: EvalConfig) -> tuple[Any, Any, Any]:
    """Check the options and load the policy, the rubric judge's model and the perplexity model, before anything
    is written: ``(policy, judge_backend or None, (model, tokenizer) or None)``. The policy loads last: an adapter
    it loads into --generator-url is not left there by a model that fails to load (``release_policy`` after)."""
    from rwft.rollout.envs.base import make_env
    from rwft.rollout.served_adapters import make_run_policy

    if config.episodes < 1 or not config.seeds:
        raise RwftError("--episodes must be positive and --seeds non-empty")
    collect_config(config, config.seeds[0]).check()  # the options eval hands to rwft collect
    env = make_env(config.env, config.env_args)
    judge_backend = config.judge_backend()
    ppl = None
    if config.ppl_model:
        from rwft.presets import load_model, load_tokenizer

        ppl = (load_model(config.ppl_model).eval(), load_tokenizer(config.ppl_model))
    policy = make_run_policy(config, env)  # an adapter is loaded into --generator-url here
    return policy, judge_backend, ppl


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate as configured; writes OUTPUT/metrics.json and returns its content.

    The environment, the policy and the other models load first: a bad option or model leaves no OUTPUT."""
    from tqdm.auto import tqdm

    policy, judge_backend, ppl = load_inputs(config)
    try:
        out = Path(config.output)
        out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=config.episodes * len(config.seeds), desc=f"eval {config.env}", unit="ep",
                   disable=config.quiet or not config.progress)
        with bar:
            per_seed = {s: collect_seed(config, s, policy, judge_backend, bar) for s in config.seeds}
    finally:
        release_policy(policy)  # every episode played (or a failure): an adapter it loaded is unloaded
    embedder = None
    if config.similarity and any("reference" in r.get("metadata", {}) for rs in per_seed.values() for r in rs):
        embedder = M.Embedder()
    pooled = [r for rs in per_seed.values() for r in rs]
    result = {
        "policy": config.policy, "env": config.env, "env_args": list(config.env_args), "seeds": list(config.seeds),
        "episodes": len(pooled),
        "metrics": episode_metrics(pooled, ppl, embedder),
        # per seed without perplexity (a second forward pass over every episode; the pooled value is above)
        "per_seed": {str(s): flat(episode_metrics(rs, None, embedder)) for s, rs in per_seed.items()},
    }
    samples = [r for rs in per_seed.values() for r in rs[: config.samples]]
    (out / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples))
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    m = result["metrics"]
    if not config.quiet:
        print(f"rwft eval: {config.policy} on {config.env}: reward {M_fmt(m['reward'])} over {len(pooled)} "
              f"episodes; wrote {out / 'metrics.json'}")
    return result


def M_fmt(ci: dict[str, float]) -> str:  # noqa: N802 - short local name
    return f"{ci['mean']:.3f} ± {ci['half']:.3f}" if ci["n"] else "-"
