"""The learner of rwft iterate: syncs copy weights, and a step equals rwft train's on the same data."""

import json
import random

import pytest
import torch

from rwft.train.online import Learner, LearnerConfig
from rwft.train.trainers import TrainConfig, train

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


INF = float("inf")


@pytest.mark.parametrize(("objective", "spans", "limit"), [("swift", False, INF), ("refit", False, INF),
                                                           ("swift", True, INF), ("swift", False, 0.2)])
def test_step_equals_rwft_train_on_the_same_batch(tmp_path, objective, spans, limit):
    """Two iterate steps on one batch (what S = never gives when every step sees the same samples) and `rwft train`
    two steps on that data as one batch: equal up to float summation order (the Trainer shuffles the rows and
    uses fused AdamW); with error spans on some messages, both with --span-weight 0.1 (the same convention); with
    the bounded push-down, both with --push-down-limit 0.2 (rwft train's reference is pi_0's log-probs computed
    before training, the learner's its fixed reference copy: the same numbers, found independently), and then the
    second step differs from the unbounded one (the bound is exercised).
    Adam's first step is sign-like, lr * g / (|g| + eps): with eps = 1e-8 a gradient entry
    that is rounding noise around 0 moves its weight by +-lr in one run and -+lr in the other (measured: about
    5 of 100k entries per matrix), so the test uses eps = 1e-3, which keeps every real entry's step."""
    recs = records()
    if spans:
        for r in recs[::2]:
            r["messages"][-1]["spans"] = [{"start": 0, "end": 5, "severity": "critical"}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("id", "context_id", "messages", "reward")}) + "\n"
                            for r in recs))
    cfg = TrainConfig(data=str(data), model="tiny", output_dir=str(tmp_path / "run"), objective=objective,
                      span_weight=0.1, push_down_limit=limit,
                      max_steps=2, per_device_train_batch_size=len(recs), learning_rate=1e-2, report_to="none",
                      adam_epsilon=1e-3, lr_scheduler_type="constant",
                      disable_tqdm=True, group_by_length=False, save_steps=100, max_length=512)
    train(cfg)
    from rwft.presets import load_model

    trained = weights(load_model(str(tmp_path / "run")))
    def run(push_down_limit):
        learner = Learner(LearnerConfig(policy="tiny", objective=objective, learning_rate=1e-2, adam_epsilon=1e-3,
                                        push_down_limit=push_down_limit))
        for _ in range(2):
            learner.step(recs, random.Random(0), [None] * len(recs))
        return weights(learner.model)

    pi0 = weights(load_model("tiny"))
    mine = run(limit)
    assert not same(mine, pi0)
    assert same(mine, trained, atol=1e-6)
    moved = max(float((mine[k] - pi0[k]).abs().max()) for k in mine)
    assert moved > 1e-3  # the tolerance is far below one step's change
    if limit < float("inf"):
        unbounded = run(float("inf"))
        assert max(float((mine[k] - unbounded[k]).abs().max()) for k in mine) > 1e-4


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


def test_pairing_threshold_decides_which_verifiable_responses_are_right():
    """Verifiable records pair a right (verdict >= --pairing-threshold) with a wrong response of the same task: with
    verdicts 0.6 / 0.2 in every group the default 0.5 pairs every group, 0.7 none (all wrong)."""
    recs = records()
    verdicts = [0.6 if i % 3 == 0 else 0.2 for i in range(9)]
    for threshold, pairs in ((0.5, 3), (0.7, 0)):
        learner = Learner(LearnerConfig(policy="tiny", objective="dpo", pairing_threshold=threshold))
        out = learner.step(recs, random.Random(0), verdicts)
        assert out["pairs"] == pairs and out["skipped_groups"] == 3 - pairs


def test_log_probs_and_entropy_are_of_the_sampling_distribution():
    """At temperature T the generator samples from softmax(z / T): the entropy logged and the KL to the reference
    are of that distribution (checked against a fresh pi_0 by hand)."""
    from rwft.objectives.online import masked_entropy
    from rwft.presets import load_model

    learner = Learner(LearnerConfig(policy="tiny", objective="grpo", temperature=0.5, learning_rate=1e-2))
    recs = records()
    batch = learner.collate(recs)
    with torch.no_grad():
        logits = load_model("tiny")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != -100
    at_t, at_1 = (float(masked_entropy(logits[:, :-1] / t, mask)) for t in (0.5, 1.0))
    assert abs(at_t - at_1) > 0.1  # the test tells the two apart
    assert learner.step(recs, random.Random(0), [None] * 9)["entropy"] == pytest.approx(at_t, rel=1e-5)


class _Accelerator:
    """What GRPOTrainer._compute_loss asks of accelerate on one process."""

    is_main_process = True
    num_processes = 1

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x


def _trl_grpo(kl_coef: float, epsilon: float, loss_type: str = "grpo"):
    """GRPOTrainer's own loss code (_compute_loss, _get_per_token_logps_and_entropies) on an object carrying only
    the attributes they read: token-level ratio, one process, no accumulation, one step per generation."""
    import types
    from collections import defaultdict

    from trl.trainer.grpo_trainer import GRPOTrainer

    t = types.SimpleNamespace(
        accelerator=_Accelerator(), top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=kl_coef, loss_type=loss_type, epsilon_low=epsilon,
        epsilon_high=epsilon, use_vllm=False, vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, args=types.SimpleNamespace(
            use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    t._get_per_token_logps_and_entropies = types.MethodType(GRPOTrainer._get_per_token_logps_and_entropies, t)
    return t, GRPOTrainer._compute_loss


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_loss_and_gradient_equal_trls_grpo_trainer(loss_type):
    """One GRPO batch, its loss and gradient, by rwft and by TRL's GRPOTrainer code (loss_type grpo / dapo,
    beta = kl_coef, epsilon 0.2, temperature 0.7) on the same tokens: the trainer has taken a step since the
    generator (pi_0) sampled, so the ratio is not 1 and some tokens are clipped; the old log-probs TRL gets are the
    generator's and the reference's, computed by TRL's own fused head at the temperature."""
    import copy

    from trl.trainer.utils import add_fused_lm_head

    kl_coef, epsilon, temp = 0.05, 0.2, 0.7
    learner = Learner(LearnerConfig(policy="tiny", objective="grpo", temperature=temp, kl_coef=kl_coef,
                                    epsilon=epsilon, learning_rate=1e-2, loss_type=loss_type))
    learner.step(records(), random.Random(0), [None] * 9)  # the trainer moves; generator and reference stay pi_0
    msgs = [{"role": "user", "content": "Buy me a pet: cat or dog or frog."}]
    answers = ["Done: cat.", "Which one do you mean, the cat or the dog?", "Done: frog, the green one.", "Dog."]
    batch_recs = [{"id": f"b/{j}", "context_id": "b", "reward": [1.0, 0.5, 0.0, 0.2][j], "metadata": {"env": "x"},
                   "messages": [*msgs, {"role": "assistant", "content": a}]} for j, a in enumerate(answers)]
    trainer = copy.deepcopy(learner.model)  # TRL's copies: the same weights, patched with TRL's fused head
    loss, _ = learner.loss(batch_recs, random.Random(0), [None] * 4)
    loss.backward()

    batch = learner.collate(batch_recs)
    labels = batch["labels"]
    starts = [int((row != -100).nonzero()[0]) for row in labels]
    assert len(set(starts)) == 1  # one prompt: no left padding for TRL
    prompt = batch["input_ids"][:, : starts[0]]
    lengths = [int((row != -100).sum()) for row in labels]
    completion = torch.full((4, max(lengths)), learner.tok.pad_token_id)
    completion_mask = torch.zeros(4, max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        completion[i, :n] = labels[i][labels[i] != -100]
        completion_mask[i, :n] = 1
    rewards = torch.tensor([r["reward"] for r in batch_recs])
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # TRL's scale_rewards="group"
    fake, compute_loss = _trl_grpo(kl_coef, epsilon, loss_type)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": completion_mask, "advantages": advantages,
              "num_items_in_batch": completion_mask.sum()}
    ids, attn = torch.cat([prompt, completion], 1), torch.cat([torch.ones_like(prompt), completion_mask], 1)
    for key, model in (("old_per_token_logps", learner.generator_model), ("ref_per_token_logps", learner.reference)):
        model = copy.deepcopy(model)
        add_fused_lm_head(model, temperature=temp)
        with torch.no_grad():
            inputs[key] = fake._get_per_token_logps_and_entropies(model, ids, attn, completion.shape[1])[0]
    add_fused_lm_head(trainer, temperature=temp, outputs=("log_probs", "entropy"))
    trl_loss = compute_loss(fake, trainer, inputs)
    trl_loss.backward()
    assert fake._metrics["train"]["clip_ratio/region_mean"][0] > 0  # the clipping is exercised
    assert float(loss.detach()) == pytest.approx(float(trl_loss.detach()), rel=1e-5)
    mine = dict(learner.model.named_parameters())
    theirs = dict(trainer.named_parameters())
    for name, p in theirs.items():
        assert torch.allclose(mine[name].grad, p.grad, rtol=1e-4, atol=1e-7), name


def test_the_end_of_turn_token_of_a_cut_turn_is_not_trained():
    """A turn cut at --max-new-tokens (``metadata.cut_turns``) never sampled its end-of-turn marker: that one label
    goes, the turn's other tokens and the other turns keep theirs."""
    learner = Learner(LearnerConfig(policy="tiny", objective="grpo"))
    msgs = [{"role": "user", "content": "Buy me a pet."}, {"role": "assistant", "content": "Which one do you mean"},
            {"role": "user", "content": "A cat."}, {"role": "assistant", "content": "Done: cat."}]
    rec = {"id": "a", "context_id": "a", "messages": msgs, "reward": 1.0, "metadata": {"env": "clarify"}}
    whole = learner.collate([rec])["labels"][0]
    cut = learner.collate([{**rec, "metadata": {"env": "clarify", "cut_turns": [0]}}])["labels"][0]
    differ = (whole != cut).nonzero().flatten().tolist()
    assert len(differ) == 1 and int(cut[differ[0]]) == -100
    assert learner.tok.decode([int(whole[differ[0]])]) == "<|im_end|>"
    first_turn_end = differ[0]
    assert int(whole[first_turn_end - 1]) != -100  # the content before it is still trained
    assert learner.tok.decode(whole[first_turn_end + 1:][whole[first_turn_end + 1:] != -100]).count("<|im_end|>") == 1


def tod_records(n=2, skill=0.5, seed=0):
    """``n`` played --env tod episodes of one task (the scripted agent), as rwft iterate's records, with tools."""
    from rwft.rollout.envs.base import make_env

    env = make_env("tod", [])
    task = env.tasks(1, seed)[0]
    out = []
    for j in range(n):
        ep, rng = env.start(task), random.Random(j)
        while not ep.done:
            env.step(ep, env.scripted_action(ep, rng, skill))
        meta = {"env": "tod", **env.outcome(ep)}
        out.append({"id": f"{task.context_id}/{j}", "context_id": task.context_id, "messages": ep.messages,
                    "tools": ep.tools, "reward": meta["reward"], "metadata": meta})
    return out


def test_a_tod_episode_is_encoded_with_its_tools_as_data_encode_does():
    from rwft.data.encode import encode_conversation

    learner = Learner(LearnerConfig(policy="tiny", objective="grpo", max_length=2048))
    rec = tod_records(1)[0]
    assert any(m.get("tool_calls") for m in rec["messages"])
    ids = learner.collate([rec])["input_ids"][0].tolist()
    expect = encode_conversation(learner.tok, rec["messages"], 2048, tools=rec["tools"])
    assert ids == expect.input_ids
    text = learner.tok.decode(ids)
    assert all(json.dumps(t, ensure_ascii=False) in text for t in rec["tools"])  # the schemas, as generation sees them
    assert ids != encode_conversation(learner.tok, rec["messages"], 2048).input_ids


def span_batch():
    """Two tod episodes of one task, rewards 1 and 0, with a major error span on the first agent message of each."""
    recs = tod_records(2)
    for r, reward in zip(recs, (1.0, 0.0), strict=True):
        r["reward"] = reward
        first = next(m for m in r["messages"] if m["role"] == "assistant")
        from rwft.data.conversation import span_text

        first["spans"] = [{"start": 0, "end": max(1, len(span_text(first)) // 2), "severity": "major"}]
    return recs


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_with_spans_by_hand_on_a_two_episode_batch(loss_type):
    """On policy (the generator is pi_0 = the trainer, ratio 1) with no KL, GRPO's loss is sum_i -sum_t A_it / n_i / 2
    (grpo) or sum_i -sum_t A_it / (n_0 + n_1) (dapo) whatever the model, with A_it = A_i - 0.1 * 5 on the k_i span
    tokens of episode i and A_0 = -A_1, k_i and n_i counted from data.encode's penalties and labels. Without spans
    grpo's loss is 0 and dapo's -(A_0 n_0 + A_1 n_1) / (n_0 + n_1): the episodes' lengths differ."""
    from rwft.data.encode import encode_conversation
    from rwft.objectives.online import grpo_advantages

    recs = span_batch()
    opts = dict(policy="tiny", objective="grpo", kl_coef=0.0, max_length=2048, loss_type=loss_type)
    learner = Learner(LearnerConfig(**opts))
    a = grpo_advantages([1.0, 0.0], ["g", "g"])
    counts = []
    for r in recs:
        enc = encode_conversation(learner.tok, r["messages"], 2048, tools=r["tools"])
        trained = [t >= 0 for t in enc.turn_index]
        n, k = sum(trained), sum(p == 5.0 for p, on in zip(enc.token_penalty, trained, strict=True) if on)
        assert 0 < k < n
        counts.append((n, k))
    (n0, k0), (n1, k1) = counts
    assert n0 != n1
    if loss_type == "grpo":
        expect = sum(-(a_i * n - 0.1 * 5.0 * k) / n / 2 for a_i, (n, k) in zip(a, counts, strict=True))
        plain_expect = 0.0
    else:
        expect = sum(-(a_i * n - 0.1 * 5.0 * k) for a_i, (n, k) in zip(a, counts, strict=True)) / (n0 + n1)
        plain_expect = -(a[0] * n0 + a[1] * n1) / (n0 + n1)
    loss, out = learner.loss(recs, random.Random(0), [None, None])
    assert float(loss.detach()) == pytest.approx(expect, abs=1e-6) and abs(expect - plain_expect) > 0.01
    assert out["span_tokens"] > 0
    plain = Learner(LearnerConfig(**opts, span_weight=0.0))
    assert float(plain.loss(recs, random.Random(0), [None, None])[0].detach()) == pytest.approx(plain_expect, abs=1e-6)


@pytest.mark.parametrize("objective", ["grpo", "swift"])
def test_the_loss_with_spans_is_invariant_to_how_the_batch_is_split(objective):
    """Each share's loss (the learner's split over processes: its groups, the whole batch's advantages, weights and
    normalizers) summed over the shares gives the whole batch's loss and gradient, with error spans."""
    recs = span_batch() + tod_records(3, seed=1)
    for r in recs[2:]:
        r["reward"] = float(r["id"].endswith("/1"))
    learner = Learner(LearnerConfig(policy="tiny", objective=objective, kl_coef=0.01, max_length=2048))

    def run(rows):
        learner.shard = lambda groups: rows
        loss, _ = learner.loss(recs, random.Random(0), [None] * len(recs))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}
        learner.model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    whole, g = run(list(range(5)))
    first, g1 = run([0, 1])
    second, g2 = run([2, 3, 4])
    assert first + second == pytest.approx(whole, rel=1e-5)
    for name in g:
        assert torch.allclose(g1[name] + g2[name], g[name], rtol=1e-4, atol=1e-7), name
