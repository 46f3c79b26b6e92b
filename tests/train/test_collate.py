"""Weights travel with their tokens through length grouping, shuffling and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sample_records, write_jsonl
from rwft.data.dataset import prepare_training_data
from rwft.presets import load_tokenizer
from rwft.train.collate import LengthGroupedSampler, WeightedCollator


def test_weights_survive_grouping_and_padding(tmp_path, monkeypatch):
    tok = load_tokenizer("tiny")
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    records = sample_records(40)
    for k, r in enumerate(records):  # a reward unique to each conversation, to recognize it after batching
        r["reward"] = 1.0 + k
        r["messages"][0]["content"] += f" ({r['id']})"  # scripted samples can repeat: make each one unique
    path = write_jsonl(tmp_path / "d.jsonl", records)
    ds, stats = prepare_training_data(path, tok, objective="refit", max_length=1024)
    assert stats.kept == len(ds) == 40
    owner = {tuple(ds[i]["input_ids"].tolist()): records[i]["reward"] for i in range(40)}
    sampler = LengthGroupedSampler(ds["length"], 8, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(40))
    collate = WeightedCollator(tok.pad_token_id)
    padded = slots = 0
    for b in range(0, 40, 8):
        batch = collate(ds.__getitems__(order[b:b + 8]))  # how the DataLoader fetches a batch
        for ids, am, labels, w in zip(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                      batch["token_weights"], strict=True):
            n = int(am.sum())
            expected = owner[tuple(ids[:n].tolist())]
            agent = labels != -100
            assert agent.sum() > 0
            assert torch.all(w[agent] == expected) and torch.all(w[~agent] == 0)
            assert torch.all(labels[agent] == ids[agent]) and torch.all(labels[n:] == -100)
        padded += int((batch["attention_mask"] == 0).sum())
        slots += batch["attention_mask"].numel()
    assert padded / slots < 0.10


def test_each_agent_token_carries_its_turns_weight():
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "turn_index": [-1, 0, 0, -1, 1, 2], "turn_weights": [0.5, 0.0, 2.0]},
            {"input_ids": [1, 2, 3], "turn_index": np.array([-1, 0, 0]), "turn_weights": np.array([-1.5])}]
    batch = WeightedCollator(pad_token_id=99)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [1, 2, 3, 99, 99, 99]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["token_weights"].tolist() == [[0, 0.5, 0.5, 0, 0, 2.0], [0, -1.5, -1.5, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100, 10], [-100, 2, 3, -100, -100, -100]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["token_weights"].dtype == torch.float32


def test_span_penalties_lower_their_tokens_weight_in_trained_turns_only():
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "turn_index": [-1, 0, 0, -1, 1, 1], "turn_weights": [0.5, 0.0],
             "token_penalty": [0.0, 10.0, 0.0, 0.0, 5.0, 1.0]},  # turn 1 weighs 0: its spans change nothing
            {"input_ids": [1, 2, 3], "turn_index": [-1, 0, 0], "turn_weights": [-1.5], "token_penalty": []}]
    batch = WeightedCollator(pad_token_id=99, span_weight=0.1)(rows)
    want = torch.tensor([[0, -0.5, 0.5, 0, 0, 0], [0, -1.5, -1.5, 0, 0, 0]])
    torch.testing.assert_close(batch["token_weights"], want)
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100, -100], [-100, 2, 3, -100, -100, -100]]
    ignored = WeightedCollator(pad_token_id=99, span_weight=0.0)(rows)  # --span-weight 0: the plain weights
    assert ignored["token_weights"].tolist() == [[0, 0.5, 0.5, 0, 0, 0], [0, -1.5, -1.5, 0, 0, 0]]


def test_span_penalties_reach_the_batches_from_the_logs(tmp_path, monkeypatch):
    tok = load_tokenizer("tiny")
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    records = sample_records(6)
    for r in records:
        r["reward"] = 0.5
        agent = next(m for m in r["messages"] if m["role"] == "assistant")
        agent["spans"] = [{"start": 0, "end": min(4, len(agent["content"])), "severity": "critical"}]
    ds, _ = prepare_training_data(write_jsonl(tmp_path / "d.jsonl", records), tok, objective="refit")
    batch = WeightedCollator(tok.pad_token_id, span_weight=0.1)(ds.__getitems__(list(range(6))))
    w = batch["token_weights"][batch["labels"] != -100]
    assert sorted(w.unique().tolist()) == pytest.approx([-0.5, 0.5])  # 0.5 - 0.1 * 10 on the spans' tokens
    assert int((w < 0).sum()) >= 6  # at least one token per conversation


def test_zero_weight_conversations_are_dropped(tmp_path, monkeypatch):
    tok = load_tokenizer("tiny")
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "d.jsonl", sample_records(30))
    ds, stats = prepare_training_data(path, tok, objective="filtered", max_length=1024)  # top-1 of 3 per context
    assert stats.kept == len(ds) == 10 and stats.zero_weight == 20


def test_length_grouped_batches_stay_aligned_with_a_partial_batch():
    # 21 items in batches of 4: the partial batch must come last, or every later batch mixes two groups
    lengths = [10] * 4 + [100] * 4 + [20] * 4 + [200] * 4 + [50] * 5
    order = list(LengthGroupedSampler(lengths, 4, seed=0))
    assert sorted(order) == list(range(21))
    for b in range(0, 20, 4):
        assert max(lengths[i] for i in order[b:b + 4]) - min(lengths[i] for i in order[b:b + 4]) <= 30


def test_length_grouped_order_depends_on_seed_and_epoch_only():
    lengths = [5, 50, 7, 80, 9, 100, 3, 60] * 5
    a, b = LengthGroupedSampler(lengths, 4, seed=1), LengthGroupedSampler(lengths, 4, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(40))
    b.set_epoch(1)
    assert list(a) != list(b)


def test_length_grouped_sampler_is_fast_on_a_million_rows():
    import time

    lengths = np.random.default_rng(0).integers(20, 1024, 1_000_000)
    t = time.perf_counter()
    order = LengthGroupedSampler(lengths, 8, seed=3).order()
    assert time.perf_counter() - t < 2.0
    assert np.array_equal(np.sort(order), np.arange(1_000_000))
    spread = lengths[order[: 999_992].reshape(-1, 8)]
    assert np.mean(spread.max(1) - spread.min(1)) < 40  # batches hold similar lengths (random: about 700)


def test_sampler_reads_a_dataset_column_at_once():
    import datasets

    ds = datasets.Dataset.from_dict({"length": np.arange(100), "x": [[1]] * 100}).with_format("numpy")
    ds = ds.select(np.arange(0, 100, 3))
    s = LengthGroupedSampler(ds["length"], 4)
    assert s.lengths.tolist() == list(range(0, 100, 3))
