"""Weights travel with their tokens through length grouping, shuffling and padding."""

from __future__ import annotations

import torch

from rwft.data.dataset import build_sequences, turn_weights
from rwft.data.io import load_conversations
from rwft.presets import load_tokenizer
from rwft.train.collate import LengthGroupedSampler, WeightedCollator


def test_weights_survive_grouping_and_padding(sample_path):
    tok = load_tokenizer("tiny")
    convs = load_conversations(sample_path)[:40]
    for c in convs:  # a reward unique to each conversation, to recognize it after batching
        c.reward = 1.0 + convs.index(c)
        c.messages[0]["content"] += f" ({c.id})"  # scripted samples can repeat: make each one unique
    weights = turn_weights(convs, "refit")
    rows, stats = build_sequences(tok, convs, weights, 1024, "assistant")
    assert stats.kept == 40
    owner = {tuple(r["input_ids"]): c.reward for r, c in zip(rows, convs, strict=True)}
    sampler = LengthGroupedSampler([len(r["input_ids"]) for r in rows], 8, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(40))
    collate = WeightedCollator(tok.pad_token_id)
    padded = slots = 0
    for b in range(0, 40, 8):
        batch = collate([rows[i] for i in order[b:b + 8]])
        for ids, am, labels, w in zip(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                      batch["token_weights"], strict=True):
            n = int(am.sum())
            expected = owner[tuple(ids[:n].tolist())]
            agent = labels != -100
            assert torch.all(w[agent] == expected) and torch.all(w[~agent] == 0)
            assert torch.all(labels[n:] == -100)
        padded += int((batch["attention_mask"] == 0).sum())
        slots += batch["attention_mask"].numel()
    assert padded / slots < 0.10


def test_zero_weight_conversations_are_dropped(sample_path):
    tok = load_tokenizer("tiny")
    convs = load_conversations(sample_path)[:30]
    weights = turn_weights(convs, "filtered")  # top-1 of each context of 3 samples
    rows, stats = build_sequences(tok, convs, weights, 1024, "assistant")
    assert stats.kept == len(rows) == 10 and stats.zero_weight == 20


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
