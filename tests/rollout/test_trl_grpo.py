"""rwft's environments under TRL's GRPOTrainer: whole episodes as completions, the user's turns masked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwft.rollout.trl_grpo import EnvRollout


@pytest.fixture
def trainer_factory(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from rwft.presets import load_model, load_tokenizer

    def make(rollout: EnvRollout, steps: int = 2):
        tok = load_tokenizer("tiny")
        tok.padding_side = "left"
        args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=4,
                          max_steps=steps, learning_rate=1e-3, report_to="none", use_cpu=True, logging_steps=1,
                          save_strategy="no", disable_tqdm=True, beta=0.0, seed=0,
                          activation_checkpointing=False)  # GRPOConfig turns it on; not needed on a tiny model
        return GRPOTrainer(model=load_model("tiny"), processing_class=tok, args=args,
                           train_dataset=rollout.dataset(8), reward_funcs=rollout.reward, rollout_func=rollout)
    return make


def test_episodes_become_completions_with_the_users_turns_masked(trainer_factory):
    rollout = EnvRollout("clarify", ["source=requests"], max_new_tokens=8)
    trainer = trainer_factory(rollout)
    prompts = [rollout.dataset(2, seed=5)["prompt"][0]] * 4  # TRL's sampler repeats a prompt num_generations times
    out = rollout(prompts, trainer)
    assert len(out["completion_ids"]) == 4  # one episode each, four samples of the one task
    assert len({tuple(c) for c in out["completion_ids"]}) > 1  # the samples differ (their own seeds)
    tok = trainer.processing_class
    for p, c, m in zip(out["prompt_ids"], out["completion_ids"], out["env_mask"], strict=True):
        assert len(c) == len(m) and m[0] == 1  # the completion starts with the agent's first token
        text = tok.decode(p + c)
        assert text.startswith(tok.decode(p))
        agent = tok.decode([t for t, keep in zip(c, m, strict=True) if keep])
        users = tok.decode([t for t, keep in zip(c, m, strict=True) if not keep])
        assert "I mean" not in agent  # the simulated user's answers are never trained
        if "Which one" in agent:
            assert "I mean" in users
    assert all(0.0 <= r <= 1.0 for r in out["rwft_reward"])


def test_two_trl_grpo_steps_on_a_builtin_environment(trainer_factory):
    rollout = EnvRollout("clarify", ["source=requests"], max_new_tokens=8)
    trainer = trainer_factory(rollout, steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(np.isfinite(h["loss"]) for h in logs)
    assert any(f"rewards/{rollout.reward.__name__}/mean" in h for h in logs)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in trainer.model.named_parameters())
    assert moved > 0 or all(h.get("reward_std", 0) == 0 for h in logs)  # no contrast, no update
    assert torch.isfinite(torch.cat([p.flatten() for p in trainer.model.parameters()])).all()
