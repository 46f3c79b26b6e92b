"""rwft train --objective qsft: rewards checked, behaviour trained and cached, resume, batching invariance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import sample_records, write_jsonl
from rwft.errors import RwftError
from rwft.train.trainers import TrainConfig, train


@pytest.fixture
def twelve(tmp_path) -> Path:
    """12 conversations (3 agent turns each) of different lengths; rewards in [0, 1], three of them per turn
    (one negative; every reward-to-go in [0, 1] at gamma 0.9 and 1)."""
    records = sample_records(36)[::3][:12]
    for i, r in enumerate(records):
        r["reward"] = round(0.08 * i, 2)
        if i % 3 == 0 and i:
            agent = [m for m in r["messages"] if m["role"] == "assistant"]
            for m, x in zip(agent, (-0.1, 0.2, r["reward"] - 0.1), strict=True):
                m["reward"] = x
    return write_jsonl(tmp_path / "twelve.jsonl", records)


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), output_dir=str(out), objective="qsft", per_device_train_batch_size=4,
                learning_rate=1e-3, report_to="none", disable_tqdm=True, seed=3, polyak=0.3, gamma=0.9)
    return TrainConfig(**{**base, **kw})


def _losses(run: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [d["step"] for d in lines if "loss" in d]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {d["step"]: d for d in lines if "loss" in d}


class Kill(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_after_kill_gives_the_same_losses_and_the_target_is_checkpointed(tmp_path, twelve):
    """Behaviour policy trained first into OUTPUT/behaviour (nested, skipped on resume); the target's
    weights saved in each checkpoint and restored, so the resumed run's losses are the uninterrupted ones."""
    kw = dict(max_steps=6, save_steps=2)
    full = train(_config(twelve, tmp_path / "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(_config(twelve, tmp_path / "killed", **kw), callbacks=[Kill(4)])
    resumed = train(_config(twelve, tmp_path / "killed", **kw))
    a, b = _losses(full), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for key in ("loss", "target_mean", "q_ratio_mean"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-5, abs=1e-6), (step, key)
    assert all(0 <= d["target_mean"] <= 1 and d["q_ratio_mean"] > 0 for d in a.values())

    info = json.loads((full / "qsft.json").read_text())
    assert info["behaviour_model"] == str((tmp_path / "full" / "behaviour").resolve())
    assert (Path(info["behaviour_model"]) / "model.safetensors").exists()
    assert {"beta", "gamma", "polyak"} <= set(info) and info["gamma"] == 0.9 and info["polyak"] == 0.3
    # the target lags the model by Polyak averaging: neither the initial weights nor the trained ones
    ckpt = full / "checkpoint-6"
    target = load_file(str(ckpt / "qsft_target.safetensors"))
    model = load_file(str(ckpt / "model.safetensors"))
    from rwft.presets import load_model

    initial = load_model("tiny").state_dict()
    name = next(n for n in target if n in model and target[n].dim() == 2)
    assert (target[name] - model[name]).abs().max() > 1e-6
    assert (target[name] - initial[name]).abs().max() > 1e-6


class SaveGrads(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        torch.save({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, self.path)


def test_gradient_same_for_batch_8x1_and_1x8(tmp_path, twelve, monkeypatch):
    """Eight conversations (the whole optimizer batch either way): the same gradient however it is split;
    the behaviour figures are computed once for both runs."""
    import rwft.train.qsft_behaviour as qsft

    computed = []
    write = qsft._write_cache
    monkeypatch.setattr(qsft, "_write_cache", lambda *a, **k: (computed.append(1), write(*a, **k)))
    eight = write_jsonl(tmp_path / "eight.jsonl", [json.loads(x) for x in twelve.read_text().splitlines()][:8])
    grads = {}
    for batch, accum in ((8, 1), (1, 8)):
        out = tmp_path / f"g{batch}x{accum}"
        train(_config(eight, out, behaviour_model="tiny", max_steps=1, per_device_train_batch_size=batch,
                      gradient_accumulation_steps=accum, max_grad_norm=0.0, save_steps=1000, seed=0),
              callbacks=[SaveGrads(tmp_path / f"{batch}x{accum}.pt")])
        grads[batch] = torch.load(tmp_path / f"{batch}x{accum}.pt")
    assert grads[8].keys() == grads[1].keys() and grads[8]
    for n in grads[8]:
        torch.testing.assert_close(grads[8][n], grads[1][n], rtol=0, atol=1e-5, msg=n)
    assert len(computed) == 1


def test_the_cached_behaviour_figures_are_the_behaviour_models(tmp_path, twelve):
    from rwft.presets import load_model, load_tokenizer
    from rwft.train.qsft import prepare

    config = _config(twelve, tmp_path / "o", behaviour_model="tiny", qsft_top_k=4)
    prepared = prepare(config, load_tokenizer("tiny"))
    data, stats, behaviour = prepared.data, prepared.stats, prepared.extras["behaviour"]
    assert len(data) == stats.kept == 12 and behaviour.is_dir()
    row = data[3]
    ids, ti = torch.as_tensor(row["input_ids"]), np.asarray(row["turn_index"])
    pos = np.nonzero(ti >= 0)[0]
    with torch.no_grad():
        lp = torch.log_softmax(load_model("tiny")(ids[None]).logits[0, pos - 1], -1)
    np.testing.assert_allclose(row["phi_logp"], lp[torch.arange(len(pos)), ids[pos]].numpy(), atol=1e-5)
    top = lp.topk(4, -1)
    np.testing.assert_array_equal(row["phi_ids"].reshape(-1, 4), top.indices.numpy())
    want = np.where(top.values.numpy() >= np.log(1e-3), top.values.numpy(), -np.inf)
    np.testing.assert_allclose(row["phi_lp"].reshape(-1, 4), want, atol=1e-5)
    # the conversation's turn rewards travel with its row (row 3 carries message rewards)
    np.testing.assert_allclose(row["turn_rewards"], [-0.1, 0.2, 0.24 - 0.1], atol=1e-6)
    assert not (tmp_path / "o").exists()


def test_rewards_outside_the_unit_interval_are_refused_with_the_file_named(tmp_path, twelve):
    records = [json.loads(line) for line in twelve.read_text().splitlines()]
    records[5]["reward"] = -3.0
    bad = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(RwftError, match=r"bad\.jsonl: conversation 6 .*reward-to-go -2\.43 from agent turn 1 outside"):
        train(_config(bad, tmp_path / "o"))  # gamma 0.9: G_1 = 0.81 * -3
    assert not (tmp_path / "o").exists()
    records[5]["reward"] = 0.5
    records[3]["messages"][1]["reward"] = 0.9  # the return is still in [0, 1], the second turn's G is not
    records[3]["messages"][3]["reward"] = -0.5
    with pytest.raises(RwftError, match=r"bad2\.jsonl: conversation 4 .*reward-to-go -0\.\d+ from agent turn 2"):
        train(_config(write_jsonl(tmp_path / "bad2.jsonl", records), tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_per_turn_credits_are_refused_with_the_record_named(tmp_path, twelve):
    """rwft label --per-turn's credits (metadata.per_turn) would make Q-SFT's Q-values the outcome less each
    prefix's score; refused (with or without --rescale-rewards) before anything is written."""
    records = [json.loads(line) for line in twelve.read_text().splitlines()]
    agent = [m for m in records[7]["messages"] if m["role"] == "assistant"]
    for m, x in zip(agent, (0.3, 0.2, records[7]["reward"] - 0.5), strict=True):
        m["reward"] = x  # every reward-to-go in [0, 1]: only the label gives it away
    records[7]["metadata"] = {"per_turn": {"method": "redistribution", "prefix_scores": [0.3, 0.5, 0.56]}}
    path = write_jsonl(tmp_path / "credit.jsonl", records)
    for rescale in (False, True):
        with pytest.raises(RwftError, match=r"credit\.jsonl: conversation 8 .*rwft label --per-turn"):
            train(_config(path, tmp_path / "o", rescale_rewards=rescale))
        assert not (tmp_path / "o").exists()


def _rescaled_reward_to_go(records: list[dict], path: Path, gamma: float) -> list[np.ndarray]:
    from rwft.data.dataset import read_dataset
    from rwft.train.qsft import qsft_turn_rewards

    offsets, values = qsft_turn_rewards(read_dataset(write_jsonl(path, records)), path, rescale=True, gamma=gamma)
    out = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        r = values[a:b]
        out.append(np.array([sum(gamma ** (j - t) * r[j] for j in range(t, len(r))) for t in range(len(r))]))
    return out


def test_rescaling_maps_every_reward_to_go_onto_the_unit_interval(tmp_path):
    """Twenty-questions' -1 per turn, games of 5 to 8 turns: the returns span [-8, -5], but the last turn's
    reward-to-go is -1; every state's G_t lands in [0, 1], an affine map of the original (gamma 1 and 0.9)."""
    records = []
    for k in (5, 8, 6, 7, 8):
        messages = [{"role": "user", "content": "Think of an object."}]
        for t in range(k):
            messages += [{"role": "assistant", "content": f"Is it alive? ({t})", "reward": -1.0},
                         {"role": "user", "content": "No."}]
        records.append({"messages": messages, "reward": -float(k)})
    for gamma in (1.0, 0.9):
        got = _rescaled_reward_to_go(records, tmp_path / f"tq{gamma}.jsonl", gamma)
        every = np.concatenate(got)
        assert every.min() == pytest.approx(0.0, abs=1e-9) and every.max() == pytest.approx(1.0, abs=1e-9)
        original = [np.array([-sum(gamma ** j for j in range(k - t)) for t in range(k)])
                    for k in (5, 8, 6, 7, 8)]
        flat = np.concatenate(original)
        np.testing.assert_allclose(every, (flat - flat.min()) / (flat.max() - flat.min()), atol=1e-9)


def test_rescaling_maps_the_returns_onto_the_unit_interval(tmp_path):
    from rwft.data.dataset import read_dataset
    from rwft.train.qsft import qsft_turn_rewards

    records = sample_records(4)
    for r, ret in zip(records, (-20.0, -7.0, -3.0, -12.0), strict=True):
        r["reward"] = ret
    path = write_jsonl(tmp_path / "tq.jsonl", records)
    raw = read_dataset(path)
    offsets, values = qsft_turn_rewards(raw, path, rescale=True)
    returns = np.add.reduceat(values, offsets[:-1])
    np.testing.assert_allclose(returns, [0.0, 13 / 17, 1.0, 8 / 17])
    with pytest.raises(RwftError, match="rescale-rewards"):
        qsft_turn_rewards(raw, path, rescale=False)


def test_an_agent_token_at_position_0_is_not_an_action(tmp_path):
    """No logit predicts the first token: the behaviour cache has figures for the agent tokens from position 1
    on, each from the logits one position before (not the last position's, as ``pos - 1`` wrapped)."""
    import datasets
    import pyarrow as pa

    from rwft.presets import load_model, resolve_model
    from rwft.train.qsft_behaviour import _write_cache

    rows = {"input_ids": [[5, 6, 7, 8, 9, 10], [3, 4, 5]], "turn_index": [[0, 0, -1, -1, 1, 1], [-1, 0, 0]]}
    data = datasets.Dataset.from_dict({**rows, "length": [6, 3]})
    _write_cache(tmp_path / "c.arrow", data, Path(resolve_model("tiny")), 4)
    with pa.OSFile(str(tmp_path / "c.arrow")) as f:
        cache = pa.ipc.open_stream(f).read_all().to_pylist()
    model = load_model("tiny").eval()
    for ids, ti, got in zip(rows["input_ids"], rows["turn_index"], cache, strict=True):
        pos = [p for p, t in enumerate(ti) if t >= 0 and p > 0]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        want = [float(lp[p - 1, ids[p]]) for p in pos]
        assert len(got["phi_logp"]) == len(pos) and len(got["phi_ids"]) == 4 * len(pos)
        np.testing.assert_allclose(got["phi_logp"], want, atol=1e-5)


VOCAB = 2048  # the tiny preset's


def _hand_rows(k: int, seed: int = 0) -> list[dict]:
    """Collator rows made by hand: an agent token at position 0 (not an action), a turn left out (weight 0)
    between two agent turns, a one-turn row; behaviour figures random, a third of the logged tokens and some
    top-k entries below the support floor."""
    rng = np.random.default_rng(seed)
    shapes = [([0, 0, 0, -1, -1, 1, 1, 1, -1, -1, -1, -1, 3, 3], [0.1, 0.2, 0.3, 0.25]),
              ([-1, -1, -1, 0, 0, 0, -1, 1, 1], [0.0, 0.6]),
              ([-1, -1, 0, 0, 0, 0], [0.9])]
    rows = []
    for ti, rewards in shapes:
        m = sum(1 for p, t in enumerate(ti) if t >= 0 and p > 0)
        logp = np.log(rng.uniform(0.05, 0.9, m))
        logp[::3] = np.log(1e-5)
        top_lp = np.log(rng.uniform(2e-4, 0.5, (m, k)))
        rows.append({"input_ids": rng.integers(0, VOCAB, len(ti)), "turn_index": np.array(ti),
                     "turn_rewards": np.array(rewards, dtype=np.float32), "phi_logp": logp.astype(np.float32),
                     "phi_ids": np.stack([rng.choice(VOCAB, k, replace=False) for _ in range(m)]).ravel(),
                     "phi_lp": np.where(top_lp >= np.log(1e-3), top_lp, -np.inf).ravel().astype(np.float32)})
    return rows


def _value(lbar: torch.Tensor, logged: int, figure: tuple) -> float:
    """V of one state: max over {logged token, top-k} with pi_phi >= 1e-3 of min(1, p_bar / pi_phi), p_bar the
    target's full-vocabulary distribution ``lbar`` (log) at that state."""
    logp, top_ids, top_lp = figure
    support = [(logged, logp), *((int(a), float(lp)) for a, lp in zip(top_ids, top_lp, strict=True))]
    return max((min(1.0, math.exp(float(lbar[a]) - lp)) for a, lp in support if lp >= math.log(1e-3)), default=0.0)


def _dense_loss(model, target, rows: list[dict], gamma: float, lam: float, num_items: float
                ) -> tuple[float, list[float]]:
    """Q-SFT's loss of ``rows`` from its definition, one row and one position at a time: the next state found
    by walking the conversation, V = max over the support {logged, top-k} with pi_phi >= 1e-3 of
    min(1, p_bar / pi_phi) from the full-vocabulary softmax of ``target``, B = clip(max(Y, G), 0, 1) with
    Y = r + d [(1 - l) V' + l Y'] (l = 1 inside a turn, ``lam`` into the next) and G = r + d G', and the
    cross-entropy with a dense target vector (B on the logged token, (1 - B) / (V - 1) elsewhere). Returns the
    loss and every B."""
    total, targets = 0.0, []
    for r in rows:
        ids, ti, rewards = [int(x) for x in r["input_ids"]], [int(t) for t in r["turn_index"]], r["turn_rewards"]
        with torch.no_grad():
            lbar = torch.log_softmax(target(torch.tensor([ids])).logits[0].double(), -1)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        agent = [p for p in range(1, len(ids)) if ti[p] >= 0]
        k = len(r["phi_ids"]) // len(agent)
        figures = {p: (float(r["phi_logp"][j]), r["phi_ids"][j * k:(j + 1) * k], r["phi_lp"][j * k:(j + 1) * k])
                   for j, p in enumerate(agent)}
        y, g = {}, {}
        for p in reversed(agent):
            if p + 1 < len(ids) and ti[p + 1] == ti[p]:  # inside a turn: the next token, no reward or discount
                q, ret, disc, lp = p + 1, 0.0, 1.0, 1.0
            else:  # the turn's last token: the next agent turn present, rewards of the turns on the way
                later = [u for u in agent if u > p]
                stop = ti[later[0]] if later else len(rewards)
                q, disc, lp = (later[0] if later else None), gamma ** (stop - ti[p]), lam
                ret = sum(gamma ** (j - ti[p]) * float(rewards[j]) for j in range(ti[p], stop))
            if q is None:
                y[p] = g[p] = ret
            else:
                v = _value(lbar[q - 1], ids[q], figures[q])
                y[p] = ret + disc * ((1 - lp) * v + lp * y[q])
                g[p] = ret + disc * g[q]
        for p in agent:
            b = min(max(y[p], g[p], 0.0), 1.0)
            dense = torch.full((VOCAB,), (1 - b) / (VOCAB - 1), dtype=torch.float64)
            dense[ids[p]] = b
            total -= float((dense * logp[p - 1]).sum())
            targets.append(b)
    return total / num_items, targets


@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_the_trainers_loss_is_the_dense_loss_computed_by_hand(tmp_path, lam):
    """QTrainer.loss on a collated batch (right padding, top-k placed by QCollator) equals the loss computed
    densely from its definition; the target network differs from the model, so mixing them up shows too."""
    import copy

    from rwft.presets import load_model, load_tokenizer
    from rwft.train.qsft import QCollator, QTrainer

    torch.manual_seed(0)
    k, gamma = 3, 0.8
    model = load_model("tiny").eval()
    config = _config(Path("unused.jsonl"), tmp_path / "o", gamma=gamma, qsft_top_k=k, qsft_lambda=lam)
    trainer = QTrainer(model=model, args=config, data_collator=QCollator(0, gamma, k, lam),
                       processing_class=load_tokenizer("tiny"), tokens_per_conversation=1.0)
    trainer._target = {n: p.detach() + 0.02 * torch.randn_like(p) for n, p in model.named_parameters()}
    target = copy.deepcopy(model)
    target.load_state_dict(trainer._target, strict=False)
    rows = _hand_rows(k)
    want, want_b = _dense_loss(model, target, rows, gamma, lam, num_items=5.0)
    batch = trainer.data_collator(rows)
    loss, _, weights = trainer.loss(model, batch, torch.tensor(5.0))
    np.testing.assert_allclose(weights[batch["labels"] != -100].numpy(), want_b, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert len(want_b) == 16 and 0 < min(want_b) and max(want_b) < 1  # informative: no target clamped


WIN = ["Is it alive, something that grows and breathes?", "Is it a mammal with fur and four legs?",
       "Does it bark at strangers and fetch sticks?", "Is it a dog?"]
LOSS = ["Tell me something about it, anything at all.", "Tell me more about what it looks like, please.",
        "Tell me where people usually keep it at home.", "Is it a cat?"]


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> tuple[Path, Path]:
    """Eight four-turn games of about 50 agent tokens: four copies of a won script (reward 1) and four of a lost
    one (reward 0), the first agent token differing; and pi_0: the tiny preset after SFT on them. Q-SFT then
    starts where the twenty-questions comparison does: Q model, target and behaviour all pi_0, every ratio 1,
    V(s') = 1 at every state."""
    root = tmp_path_factory.mktemp("games")
    records = []
    for i in range(8):
        script, reward = (WIN, 1.0) if i % 2 == 0 else (LOSS, 0.0)
        messages = [{"role": "user", "content": "Guess the object I am thinking of."}]
        for text in script:
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Yes."}]
        records.append({"id": f"g{i}", "messages": messages[:-1], "reward": reward})
    data = write_jsonl(root / "games.jsonl", records)
    train(TrainConfig(data=str(data), output_dir=str(root / "pi0"), objective="sft", max_steps=30,
                      learning_rate=3e-3, per_device_train_batch_size=8, report_to="none", disable_tqdm=True,
                      save_steps=1000, seed=0))
    return data, root / "pi0"


def test_the_end_reward_reaches_the_first_token_within_five_steps(tmp_path, games):
    """Won and lost games differ only at their end in reward; after 5 optimizer steps (Polyak 0.05) the first
    agent token's target of a won game is above a lost one's by at least 0.5. One-step token targets move the
    end's value back about one token per target update, leaving both at V = 1 here."""
    from rwft.presets import load_model, load_tokenizer
    from rwft.train.qsft import make_trainer, prepare

    data, pi0 = games
    config = _config(data, tmp_path / "q", model=str(pi0), behaviour_model=str(pi0), max_steps=5, polyak=0.05,
                     gamma=1.0, per_device_train_batch_size=8, learning_rate=1e-3, save_steps=1000)
    tokenizer = load_tokenizer(str(pi0))
    prepared = prepare(config, tokenizer)
    trainer = make_trainer(config, load_model(str(pi0)), tokenizer, prepared, [])
    trainer.train()
    rows = [prepared.data[i] for i in range(len(prepared.data))]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        _, _, targets = trainer.loss(trainer.model, batch, None)
    first = {int(r["row"]): float(targets[i][batch["labels"][i] != -100][0]) for i, r in enumerate(rows)}
    assert sum(batch["labels"][0] != -100) >= 40  # about 50 agent tokens
    won, lost = [first[i] for i in range(0, 8, 2)], [first[i] for i in range(1, 8, 2)]
    assert min(won) - max(lost) >= 0.5, (won, lost)
