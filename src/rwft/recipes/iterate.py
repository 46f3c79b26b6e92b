"""``rwft iterate``: collect with a generator copy of the policy, train, and sync every S steps (semi-online RL).

Each optimizer step k draws ``prompts_per_step`` fresh tasks (split over the environments by
``--env-weights``; the tasks of step k depend only on (seed, k, environment)), the generator plays
``group_size`` episodes of each with rwft's batched collector at ``--temperature``, the environments
(or their judges) give the rewards, and the trainer takes one step on them (``train.online.Learner``).
After steps S, 2S, ... the generator takes the trainer's weights (and the reference too with
``--sync-reference``). ``--sync-every 1`` is online; ``--sync-every never`` keeps pi_0 as the generator,
so every step trains on pi_0's samples: offline training on data from pi_0 with the same budget of steps
and episodes (Bridging's s = infinity).

The run directory holds ``rwft_config.yaml``, ``steps.jsonl`` (one line per step: mean reward per
environment, the generator's next-token entropy on its samples, response length, KL to the reference,
steps since the last sync, seconds spent generating / training / syncing, the loss), ``episodes.jsonl``
(every episode, with its step), ``curves.png``, ``state.pt`` (the last checkpoint) and ``model/`` (the final
trainer, save_pretrained). The state is saved after every sync (every ``--save-every`` steps with
``never``): the trainer, its optimizer, the torch RNG and the step; the generator and the reference need
no copy, since at a sync they equal the trainer (or are pi_0). Killed and rerun with the same command,
the run continues from that step, with the logs cut back to it: nothing is lost or counted twice.

With ``--span-judge tod`` every fresh episode's agent messages get error spans from the rule judge of
``rollout.span_judges`` (as ``rwft label --spans --judge tod`` writes them, kept in ``episodes.jsonl``), and
GRPO / Swift / Refit weigh a token inside a span by its advantage or weight minus ``--span-weight`` times its
severity's penalty (``train.online``).

Under ``accelerate launch`` / torchrun with several processes, each process plays its share of each
environment's tasks (``train.online.share``, by process index), the episodes are gathered in the one-process
order, and every process trains on its share of them (``train.online.Learner``: DDP, the whole batch's
normalizers). Only the main process writes the run directory; each step line records ``processes``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwft.data.io import cut_jsonl
from rwft.errors import RwftError
from rwft.recipes.served_generator import Served
from rwft.rollout.envs.base import Episode
from rwft.rollout.hf_policy import HFPolicy
from rwft.rollout.http_policy import mark_cut
from rwft.rollout.served_adapters import check_request_timeout
from rwft.train.online import LearnerConfig, share

VERIFIABLE = {"mcqa": "reward", "twenty-questions": "correct"}
"""Environments whose episodes are right or wrong, and the field of a record that says how right (compared with
--pairing-threshold by online DPO): mcqa's reward is 1 or 0; twenty-questions' reward counts the turns (never
above 0 by default), its win is ``metadata.correct``."""
NEUTRAL = ("progress", "quiet", "threads", "api_key_env", "request_timeout")


@dataclass(kw_only=True)
class IterateConfig(LearnerConfig):
    """Options of ``rwft iterate``: the learner's (``train.online.LearnerConfig``) and the loop's."""

    output: str
    """Run directory (config, step log, episodes, curves, checkpoint, final model); rerun to resume."""
    env: list[str] = field(default_factory=lambda: ["clarify"])
    """Environment(s) to collect in: mcqa, clarify, twenty-questions; several mix their prompts in each step."""
    env_args: list[str] = field(default_factory=list)
    """Environment options as key=value; with several environments, ENV.key=value (e.g. clarify.source=requests)."""
    env_weights: list[float] = field(default_factory=list)
    """Share of each step's prompts per environment (default: equal)."""
    sync_every: str = "1"
    """Optimizer steps between syncs of the generator with the trainer: 1 online, S semi-online, never offline."""
    sync_reference: bool = False
    """At each sync the reference (DPO's pi_ref, GRPO's KL anchor, the logged KL) takes the weights too."""
    steps: int = 20
    """Optimizer steps."""
    prompts_per_step: int = 8
    """Fresh tasks (prompts) per step."""
    group_size: int = 4
    """Episodes per task G (GRPO's group, DPO's candidates, Swift's context)."""
    max_new_tokens: int = 48
    """Tokens generated per agent turn."""
    span_judge: str = ""
    """Error spans on each fresh episode's agent messages: empty for none; tod: the rule judge of rwft label --spans
    --judge tod (--env tod only). A token in a span gets GRPO advantage A - span_weight * p (Swift / Refit: weight
    w - span_weight * p); DPO scores whole episodes and takes no spans."""
    save_every: int = 10
    """With --sync-every never: steps between checkpoints (otherwise a checkpoint follows each sync)."""
    generator_url: str = ""
    """An OpenAI-compatible server (http://host:port/v1) serving pi_0 as --served-model, with runtime LoRA loading
    (vLLM: --enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; scripts/vllm_cpu.sh). It generates; each sync saves
    the adapter under OUTPUT/adapters/ and loads it there. Needs --lora (full-weight sync to a server is not done)."""
    served_model: str = ""
    """The name the server gives pi_0 (its --served-model-name)."""
    request_timeout: float = 120.0
    """With --generator-url: seconds one request to the server may take, its retries included (a long prompt's
    prefill on a slow CPU server can need more). When it runs out the run stops with an error naming this option;
    a rerun resumes from the last checkpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the server's API key, if it wants one (the key is never written)."""
    threads: int = 0
    """Torch CPU threads (0: torch's default)."""
    progress: bool = True
    """Show a progress bar over the steps."""
    quiet: bool = False
    """Print nothing."""

    def interval(self) -> int | None:
        """S as a number (None: never)."""
        text = str(self.sync_every).strip().lower()
        if text == "never":
            return None
        try:
            s = int(text)
        except ValueError:
            s = 0
        if s < 1:
            raise RwftError(f"--sync-every {self.sync_every}: expected a positive integer or never")
        return s

    def check(self) -> None:
        self.entry()
        if not self.policy:
            raise RwftError("--policy: give pi_0 (a preset such as tiny, a model directory or a hub id)")
        if self.interval() is None and self.sync_reference:
            raise RwftError("--sync-reference with --sync-every never: the generator and the reference are never "
                            "synced; drop --sync-reference or give a sync interval")
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "max_length", "save_every"):
            if getattr(self, name) < 1:
                raise RwftError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected a positive integer")
        if self.group_size < 2 and self.objective != "refit":
            raise RwftError(f"--group-size {self.group_size}: {self.objective} compares the samples of a task; "
                            "expected 2 or more")
        if self.env_weights and len(self.env_weights) != len(self.env):
            raise RwftError(f"--env-weights: {len(self.env_weights)} weights for {len(self.env)} environments")
        if any(w < 0 for w in self.env_weights) or (self.env_weights and sum(self.env_weights) <= 0):
            raise RwftError(f"--env-weights {self.env_weights}: expected non-negative weights, not all 0")
        if len(set(self.env)) != len(self.env):
            raise RwftError(f"--env {self.env}: each environment once")
        if self.generator_url and not self.lora:
            raise RwftError("--generator-url: a served generator is synced by hot-loading a LoRA adapter; add --lora "
                            "(full-weight sync to a server is out of scope)")
        if self.generator_url and not self.served_model:
            raise RwftError("--generator-url: give --served-model, the name the server gives pi_0")
        check_request_timeout(self.request_timeout)
        self.check_spans()
        if self.temperature <= 0 or self.learning_rate <= 0 or self.beta <= 0 or self.kl_coef < 0 or self.epsilon <= 0:
            raise RwftError("--temperature, --learning-rate, --beta, --epsilon: expected > 0; --kl-coef: >= 0")


    def check_spans(self) -> None:
        """Refuse a span judge other than tod, on an environment other than tod, for DPO, or with lambda 0."""
        if not self.span_judge:
            return
        if self.span_judge != "tod":
            raise RwftError(f"--span-judge {self.span_judge}: expected tod (the rule judge of --env tod) or nothing")
        if set(self.env) != {"tod"}:
            raise RwftError(f"--span-judge tod: its rules read --env tod's episodes, not --env {' '.join(self.env)}")
        if self.objective == "dpo":
            raise RwftError("--span-judge with --objective dpo: DPO scores whole episodes and has no per-token term; "
                            "use grpo, swift or refit")
        if self.span_weight <= 0:
            raise RwftError(f"--span-judge with --span-weight {self.span_weight}: the spans would weigh nothing")


def env_options(config: IterateConfig) -> dict[str, list[str]]:
    """Each environment's key=value options from --env-args (ENV.key=value with several environments)."""
    per: dict[str, list[str]] = {e: [] for e in config.env}
    for arg in config.env_args:
        key = arg.split("=", 1)[0]
        if "." in key and key.split(".", 1)[0] in per:
            name, rest = arg.split(".", 1)
            per[name].append(rest)
        elif len(config.env) == 1:
            per[config.env[0]].append(arg)
        else:
            raise RwftError(f"--env-args {arg}: with several environments write ENV.key=value")
    return per


def prompt_split(n: int, weights: list[float]) -> list[int]:
    """n prompts split by weights, largest remainders first (ties: the earlier environment)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


class Generator(HFPolicy):
    """The in-process generator: an ``HFPolicy`` that notes the turns it cut at --max-new-tokens (``mark_cut``)."""

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        texts = super().act(episodes, temperatures, seeds)
        for ep, cut in zip(episodes, self.cut, strict=True):
            mark_cut(ep, cut)
        return texts


def verdicts(records: list[dict[str, Any]]) -> list[float | None]:
    """Per record, None when its environment's reward is graded, else its ``VERIFIABLE`` field as a number."""
    out: list[float | None] = []
    for r in records:
        key = VERIFIABLE.get(r["metadata"]["env"])
        out.append(None if key is None else float(r["reward"] if key == "reward" else r["metadata"][key]))
    return out


def check_rewards(records: list[dict[str, Any]], config: IterateConfig) -> None:
    """Refuse a batch with a reward the objective does not accept (its registry entry's range)."""
    entry = config.entry()
    for r in records:
        if r["reward"] is None or not entry.accepts(r["reward"]):
            raise RwftError(f"--objective {entry.name} needs rewards {entry.range_text()}; episode {r['id']} of "
                            f"--env {r['metadata']['env']} has reward {r['reward']}: rescale the environment's "
                            "reward (twenty-questions: --env-args reward=unit) or choose another objective")


def play(env, generator, judge, config: IterateConfig, tasks: list, step: int, step_seed: int) -> list[dict[str, Any]]:
    """``group_size`` episodes of each task, as records of ``step`` (their cut turns noted)."""
    from rwft.rollout.collect import episode_records, run_episodes

    if not tasks:
        return []
    order = [(t, j) for t in tasks for j in range(config.group_size)]
    samples = [j for _, j in order]
    temps = [config.temperature] * len(order)
    episodes = run_episodes(env, generator, [t for t, _ in order], samples, temps, step_seed)
    recs = episode_records(env, judge, config.policy, episodes, samples, temps, step_seed)
    for r, ep in zip(recs, episodes, strict=True):
        r["metadata"]["iterate_step"] = step + 1
        if ep.state.get("cut_turns"):  # the learner does not train their end-of-turn token
            r["metadata"]["cut_turns"] = ep.state["cut_turns"]
    if config.span_judge:
        add_spans(recs, config.span_judge)
    return recs


def add_spans(records: list[dict[str, Any]], spec: str) -> None:
    """Label each record with the span judge's error spans, as ``rwft label --spans`` does (``with_spans``)."""
    from rwft.rollout.judges import JudgeItem
    from rwft.rollout.span_judges import make_span_judge, with_spans

    items = [JudgeItem(r["messages"], r["metadata"], f"episode {r['id']}") for r in records]
    for r, res in zip(records, make_span_judge(spec).judge(items), strict=True):
        r["messages"], r["metadata"] = with_spans(r["messages"], r["metadata"], res, spec)


def check_processes(config: IterateConfig, processes: int) -> None:
    """Refuse what several processes cannot share."""
    if processes == 1:
        return
    if config.generator_url:
        raise RwftError(f"--generator-url with {processes} processes: a served generator is driven by one process "
                        "(it already has every episode in flight); run without accelerate launch")
    if config.prompts_per_step < processes:
        raise RwftError(f"--prompts-per-step {config.prompts_per_step} for {processes} processes: give each process "
                        "one task or more")


def _save_state(out: Path, learner, step: int, generator_step: int) -> None:
    import torch

    tmp = out / ".state.pt.tmp"
    torch.save({"step": step, "generator_step": generator_step, **learner.state()}, tmp)
    os.replace(tmp, out / "state.pt")


def run_iterate(config: IterateConfig) -> dict[str, Any]:
    """Run (or resume) the loop; returns a summary (steps done, the last step's line, paths)."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from rwft.presets import locate_model
    from rwft.rollout.envs.base import make_env, stable_int
    from rwft.rollout.judges import make_judge
    from rwft.train import skeleton
    from rwft.train.online import Learner

    config.check()
    interval = config.interval()
    envs = {name: make_env(name, args) for name, args in env_options(config).items()}
    locate_model(config.policy)
    if config.generator_url:
        from rwft.rollout.http_policy import check_server

        check_server(config.generator_url, config.served_model, config.api_key_env)
    out = Path(config.output)
    resolved = {k: v for k, v in dataclasses.asdict(config).items() if k not in NEUTRAL}
    skeleton.check_config(out, resolved)
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    learner = Learner(config)
    acc = learner.accelerator
    procs, main = acc.num_processes, acc.is_main_process  # only the main process writes OUTPUT
    check_processes(config, procs)
    local = Generator.from_model(learner.generator_model, learner.tok, name=config.policy,
                                 max_new_tokens=config.max_new_tokens)  # synced in place by the learner
    learner.on_sync.append(local.reset_cache)
    judge = make_judge("env")
    say = print if main and not config.quiet else (lambda *_: None)
    steps_log, episodes_log = out / "steps.jsonl", out / "episodes.jsonl"
    start, generator_step = 0, 0
    if (out / "state.pt").exists():
        import torch

        state = torch.load(out / "state.pt", weights_only=False, map_location="cpu")
        start, generator_step = state["step"], state["generator_step"]
        learner.load_state(state, generator_synced=generator_step == start and start > 0,
                           reference_synced=config.sync_reference)
        say(f"rwft iterate: resuming at step {start}")
    served = Served(config, out, learner) if config.generator_url else None
    if served is not None and generator_step > 0:
        served.load(generator_step)  # the server may have restarted since: load the last synced adapter again
    generator = served.policy if served is not None else local
    if main:
        cut_jsonl(steps_log, lambda r: r["step"] <= start)
        cut_jsonl(episodes_log, lambda r: r["metadata"]["iterate_step"] <= start)
    counts = prompt_split(config.prompts_per_step, config.env_weights or [1.0] * len(envs))
    bar = tqdm(total=config.steps, initial=start, desc=f"rwft iterate {config.objective}", unit="step",
               disable=config.quiet or not config.progress or not main)
    last: dict[str, Any] = {}
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        records = []
        for (name, env), n in zip(envs.items(), counts, strict=True):
            if n == 0:
                continue
            step_seed = stable_int("iterate", config.seed, step, name) % 2**31
            tasks = env.tasks(n, step_seed)[share(n, acc.process_index, procs)]
            recs = play(env, generator, judge, config, tasks, step, step_seed)
            records += gather_object(recs) if procs > 1 else recs  # in process order: the one-process order
        check_rewards(records, config)
        if step == start and main:  # the first batch passed: the run is worth a directory
            skeleton.write_config(out, resolved)
        t1 = time.perf_counter()
        rng = random.Random(stable_int("pairs", config.seed, step))
        metrics = learner.step(records, rng, verdicts(records))
        t2 = time.perf_counter()
        synced = interval is not None and (step + 1) % interval == 0
        if synced:
            learner.sync(config.sync_reference)
            if served is not None:
                served.load(step + 1)
        t3 = time.perf_counter()
        line = {"step": step + 1, "reward": sum(r["reward"] for r in records) / len(records)}
        for name in envs:
            rs = [r["reward"] for r in records if r["metadata"]["env"] == name]
            if rs:
                line[f"reward/{name}"] = sum(rs) / len(rs)
        line.update(metrics)
        line.update(steps_since_sync=step - generator_step, episodes=len(records), processes=procs,
                    generate_s=t1 - t0, train_s=t2 - t1, sync_s=t3 - t2)
        if synced:
            generator_step = step + 1
        if main:
            with episodes_log.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            with steps_log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            if synced or (interval is None and (step + 1) % config.save_every == 0) or step + 1 == config.steps:
                _save_state(out, learner, step + 1, generator_step)
        bar.set_postfix(reward=f"{line['reward']:.3f}", refresh=False)
        bar.update(1)
        last = line
    bar.close()
    if served is not None:
        served.release()
    from rwft.presets import quiet_hf

    if main:
        with quiet_hf():
            learner.model.save_pretrained(out / "model")
            learner.tok.save_pretrained(out / "model")
        from rwft.eval.report import plot_steps

        plot_steps(steps_log, out / "curves.png")
    acc.wait_for_everyone()  # every process returns with the run directory complete
    say(f"rwft iterate: wrote {out}")
    return {"steps": config.steps, "last": last, "output": str(out)}
