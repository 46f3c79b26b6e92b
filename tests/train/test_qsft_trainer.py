"""rwft train --objective qsft: rewards checked, behaviour trained and cached, resume, batching invariance."""

from __future__ import annotations

import json
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
    import rwft.train.qsft as qsft

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
