"""The learner of rwft iterate: syncs copy weights, and a step equals rwft train's on the same data."""

import json
import random

import pytest
import torch

from rwft.train.online import Learner, LearnerConfig
from rwft.train.weighted import TrainConfig, train

ANSWERS = ["Done: cat.", "Which one do you mean?", "Done: dog.", "Done: frog."]


def records(contexts=3, per=3):
    out = []
    for c in range(contexts):
        for j in range(per):
            text = ANSWERS[(c + j) % len(ANSWERS)]
            msgs = [{"role": "user", "content": f"Buy me a pet {c}: cat or dog or frog."},
                    {"role": "assistant", "content": text}]
            out.append({"id": f"q{c}/{j}", "context_id": f"q{c}", "messages": msgs,
                        "reward": float((c + 2 * j) % 3) / 2, "metadata": {"env": "clarify"}})
    return out


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b, atol=0.0):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


@pytest.mark.parametrize("objective", ["dpo", "grpo"])
def test_sync_copies_trainer_into_generator_and_optionally_reference(objective):
    learner = Learner(LearnerConfig(policy="tiny", objective=objective, learning_rate=1e-2))
    pi0 = weights(learner.model)
    out = learner.step(records(), random.Random(0), [None] * 9)
    assert out["loss"] == out["loss"] and not same(weights(learner.model), pi0)
    assert same(weights(learner.generator_model), pi0)  # not synced yet: the generator is still pi_0
    learner.sync(reference=False)
    assert same(weights(learner.generator_model), weights(learner.model))
    assert same(weights(learner.reference), pi0)  # a fixed reference stays pi_0
    learner.step(records(), random.Random(1), [None] * 9)
    learner.sync(reference=True)
    assert same(weights(learner.generator_model), weights(learner.model))
    assert same(weights(learner.reference), weights(learner.model))


@pytest.mark.parametrize("objective", ["swift", "refit"])
def test_step_equals_rwft_train_on_the_same_batch(tmp_path, objective):
    """Two iterate steps on one batch (what S = never gives when every step sees the same samples) and `rwft train`
    two steps on that data as one batch: equal up to float summation order (the Trainer shuffles the rows and
    uses fused AdamW). Adam's first step is sign-like, lr * g / (|g| + eps): with eps = 1e-8 a gradient entry
    that is rounding noise around 0 moves its weight by +-lr in one run and -+lr in the other (measured: about
    5 of 100k entries per matrix), so the test uses eps = 1e-3, which keeps every real entry's step."""
    recs = records()
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("id", "context_id", "messages", "reward")}) + "\n"
                            for r in recs))
    cfg = TrainConfig(data=str(data), model="tiny", output_dir=str(tmp_path / "run"), objective=objective,
                      max_steps=2, per_device_train_batch_size=len(recs), learning_rate=1e-2, report_to="none",
                      adam_epsilon=1e-3, lr_scheduler_type="constant",
                      disable_tqdm=True, group_by_length=False, save_steps=100, max_length=512)
    train(cfg)
    from rwft.presets import load_model

    trained = weights(load_model(str(tmp_path / "run")))
    learner = Learner(LearnerConfig(policy="tiny", objective=objective, learning_rate=1e-2, adam_epsilon=1e-3))
    pi0 = weights(learner.model)
    for _ in range(2):
        learner.step(recs, random.Random(0), [None] * len(recs))
    mine = weights(learner.model)
    assert not same(mine, pi0)
    assert same(mine, trained, atol=1e-6)
    moved = max(float((mine[k] - pi0[k]).abs().max()) for k in mine)
    assert moved > 1e-3  # the tolerance is far below one step's change


def test_dpo_step_equals_rwft_dpo_when_the_template_adds_nothing_after_a_turn(tmp_path):
    """Online DPO on pi_0's samples (S = never) against `rwft dpo` (TRL's DPOTrainer) on the same pairs, two steps
    on one batch. With ChatML, TRL's completion is everything the template adds after the prompt, so it also scores
    the newline after <|im_end|>, which rwft does not count as the agent's (data.encode): the two losses differ by
    that token's log-ratio. With a template that puts nothing after the end-of-turn marker the tokens scored are
    the same, and so must be the models (up to float order; eps 1e-3 as above)."""
    import shutil

    from rwft.presets import resolve_model
    from rwft.train.dpo import DpoConfig, run_dpo

    model = tmp_path / "pi0"
    shutil.copytree(resolve_model("tiny"), model)
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").write_text(template.replace("'<|im_end|>' + '\n'", "'<|im_end|>'"))
    recs = records(contexts=4, per=2)
    for i, r in enumerate(recs):
        r["reward"] = float(i % 2 == 0)  # one better and one worse sample per context, no ties
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("id", "context_id", "messages", "reward")}) + "\n"
                            for r in recs))
    out = run_dpo(DpoConfig(data=str(data), model=str(model), output_dir=str(tmp_path / "run"), max_steps=2,
                            per_device_train_batch_size=4, learning_rate=1e-2, adam_epsilon=1e-3, beta=0.1,
                            lr_scheduler_type="constant", report_to="none", disable_tqdm=True, save_steps=100))
    from rwft.presets import load_model

    trained = weights(load_model(str(out)))
    learner = Learner(LearnerConfig(policy=str(model), objective="dpo", learning_rate=1e-2, adam_epsilon=1e-3,
                                    beta=0.1))
    pi0 = weights(learner.model)
    for _ in range(2):
        assert learner.step(recs, random.Random(0), [None] * len(recs))["pairs"] == 4
    mine = weights(learner.model)
    assert max(float((mine[k] - pi0[k]).abs().max()) for k in mine) > 1e-3
    assert same(mine, trained, atol=1e-6)
