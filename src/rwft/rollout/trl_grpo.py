"""rwft's environments in TRL's ``GRPOTrainer``: a rollout function that plays them, and their reward.

TRL's GRPOTrainer generates one completion per prompt; rwft's environments are conversations with a simulated
user, tools and a judge. ``EnvRollout`` is TRL's ``rollout_func``: for each prompt of the batch (TRL's sampler
repeats each prompt ``num_generations`` times in a row: one task, that many samples) it plays one whole episode
with rwft's batched collector, then hands TRL each episode as one completion
after the task's opening (``prompt_ids``), the environment's turns inside it masked out of the loss
(``env_mask`` 0) and its reward forwarded to ``EnvRollout.reward``::

    rollout = EnvRollout("clarify", ["source=requests"], max_new_tokens=12)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=GRPOConfig(num_generations=4, ...),
                          train_dataset=rollout.dataset(256), reward_funcs=rollout.reward, rollout_func=rollout)

The agent's turns are played by the policy TRL trains: in-process through ``HFPolicy.from_model`` on the
trainer's model (generation with rwft's KV cache across turns), or, with ``use_vllm``, by TRL's own vLLM
generation (server or colocate, weights synced by TRL), one call per turn. Tokens are the conversation
re-encoded by rwft's chat-template encoder (the agent's tokens are those the data layer trains), so TRL
recomputes the old log-probabilities itself; the sampling log-probabilities are given as NaN, which TRL's
vLLM importance-sampling correction treats as "no correction".

A prompt names its task by its text: ``dataset(n)`` draws n tasks and remembers them under their opening;
tasks whose openings are equal (the hidden part differs) are played in turn.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.collect import episode_records, run_episodes
from rwft.rollout.envs.base import Episode, Task, make_env


def _key(prompt: list[dict[str, Any]]) -> str:
    return json.dumps([{"role": m["role"], "content": m.get("content")} for m in prompt], sort_keys=True)


class _TRLvLLMPolicy:
    """rwft's policy interface on TRL's vLLM generation: one ``vllm_generation.generate`` call per turn."""

    def __init__(self, trainer: Any):
        self.trainer, self.name = trainer, "trl-vllm"

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        tok = self.trainer.processing_class
        ids = [tok.apply_chat_template(ep.messages, tools=ep.tools, add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for ep in episodes]
        _, completions, _, _ = self.trainer.vllm_generation.generate(ids, None, 1)
        return [tok.decode(c, skip_special_tokens=True) for c in completions]


class EnvRollout:
    """TRL's ``rollout_func`` over one rwft environment, with its task dataset and its reward function."""

    def __init__(self, env: str, env_args: list[str] | dict[str, Any] | None = None, *, judge: str = "env",
                 agent_role: str = "assistant", max_new_tokens: int = 64, max_length: int = 1024,
                 temperature: float = 1.0, seed: int = 0):
        from rwft.rollout.judges import make_judge

        self.env = make_env(env, env_args)
        self.judge = make_judge(judge)
        self.agent_role, self.max_new_tokens, self.max_length = agent_role, max_new_tokens, max_length
        self.temperature, self.seed = temperature, seed
        self._tasks: dict[str, deque[Task]] = defaultdict(deque)
        self._calls = 0
        self.__name__ = f"rwft_{self.env.name}"

    def dataset(self, n: int, seed: int | None = None):
        """``n`` tasks of the environment as a ``datasets.Dataset`` with a conversational ``prompt`` column."""
        from datasets import Dataset

        rows = []
        for task in self.env.tasks(n, self.seed if seed is None else seed):
            prompt = self.env.start(task).messages
            self._tasks[_key(prompt)].append(task)
            rows.append({"prompt": prompt})
        return Dataset.from_list(rows)

    def _task(self, prompt: list[dict[str, Any]]) -> Task:
        queue = self._tasks.get(_key(prompt))
        if not queue:
            raise RwftError(f"rollout: a prompt that no task of env {self.env.name} opens with "
                            f"({prompt[-1].get('content', '')[:60]!r}); build the dataset with EnvRollout.dataset")
        queue.rotate(-1)  # tasks with equal openings take turns
        return queue[-1]

    def _policy(self, trainer: Any):
        if getattr(trainer, "use_vllm", False):
            return _TRLvLLMPolicy(trainer)
        from rwft.rollout.hf_policy import HFPolicy

        model = trainer.accelerator.unwrap_model(trainer.model)
        return HFPolicy.from_model(model, trainer.processing_class, max_new_tokens=self.max_new_tokens,
                                   reuse_cache=False)

    def __call__(self, prompts: list[list[dict[str, Any]]], trainer: Any) -> dict[str, list]:
        """Play ``num_generations`` episodes per prompt; return TRL's rollout fields plus ``rwft_reward``."""
        import torch

        from rwft.data.encode import encode_batch

        k = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        # TRL's sampler repeats each prompt k times in a row: one task per run of k, sample j of it
        tasks, samples = [], []
        for i, p in enumerate(prompts):
            same = i % k != 0 and _key(p) == _key(prompts[i - 1])
            tasks.append(tasks[-1] if same else self._task(p))
            samples.append(samples[-1] + 1 if same else 0)
        seed = self.seed + 1_000_003 * self._calls
        self._calls += 1
        policy = self._policy(trainer)
        model = getattr(policy, "model", None)
        was_training = model.training if model is not None else False
        if model is not None:
            model.eval()
        try:
            with torch.no_grad():
                episodes = run_episodes(self.env, policy, tasks, samples, [self.temperature] * len(tasks), seed)
        finally:
            if model is not None:
                model.train(was_training)
        records = episode_records(self.env, self.judge, policy.name, episodes, samples,
                                  [self.temperature] * len(tasks), seed)
        encoded = encode_batch(trainer.processing_class, [r["messages"] for r in records], self.max_length,
                               self.agent_role, [r.get("tools") for r in records])
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [],
                                "rwft_reward": []}
        for r, enc in zip(records, encoded, strict=True):
            if enc is None or enc.truncated:
                raise RwftError(f"rollout: episode {r['id']} does not fit max_length {self.max_length}")
            start = next(i for i, t in enumerate(enc.turn_index) if t >= 0)
            out["prompt_ids"].append(enc.input_ids[:start])
            out["completion_ids"].append(enc.input_ids[start:])
            out["env_mask"].append([int(t >= 0) for t in enc.turn_index[start:]])
            out["logprobs"].append([float("nan")] * (len(enc.input_ids) - start))
            out["rwft_reward"].append(0.0 if r["reward"] is None else float(r["reward"]))
        return out

    def reward(self, prompts: list, completions: list, rwft_reward: list[float], **_: Any) -> list[float]:
        """The episodes' rewards as rwft's judge gave them (TRL's reward function)."""
        return list(rwft_reward)
