"""Logs to an Arrow training dataset: weights from columns, the caches, errors before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import sample_records, write_jsonl
from rwft.data import dataset as D
from rwft.data.dataset import (
    column_turn_weights,
    encode_dataset,
    prepare_training_data,
    read_dataset,
    turn_weights,
)
from rwft.data.io import load_conversations
from rwft.errors import RwftError
from rwft.presets import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch, tok):  # tok first: the tiny preset stays in the shared cache
    root = tmp_path / "cache"
    monkeypatch.setenv("RWFT_CACHE", str(root))
    return root / "data"


def conv(ctx, reward, turns=1, turn_rewards=None, zero=()):
    msgs = [{"role": "user", "content": f"task {ctx}"}]
    for t in range(turns):
        a = {"role": "assistant", "content": f"answer {t} of {ctx} {reward}"}
        if turn_rewards is not None:
            a["reward"] = turn_rewards[t]
        if t in zero:
            a["weight"] = 0
        msgs += [a, {"role": "user", "content": f"feedback {t}"}]
    return {"context_id": ctx, "messages": msgs[:-1], "reward": reward}


HAND = [conv("a", 0.0, 2), conv("a", 1.0, 2), conv("a", 0.5, 2), conv("b", 0.3), conv("b", 0.3),
        conv("c", 0.7, 3, turn_rewards=[0.1, -0.2, 0.4]), conv("d", 0.9, 3, zero=(1,)), conv("d", 0.2),
        conv("e", 0.4), conv("a", 1.0, 1)]


@pytest.mark.parametrize("objective,kw", [
    ("sft", {}), ("refit", {}), ("swift", {}), ("filtered", {"top_k": 1}), ("filtered", {"top_k": 2}),
    ("filtered", {"threshold": 0.5}), ("per-turn", {"gamma": 1.0}), ("per-turn", {"gamma": 0.5}),
])
def test_weights_from_columns_equal_the_pure_functions(tmp_path, cache, objective, kw):
    path = write_jsonl(tmp_path / "hand.jsonl", HAND)
    expected = turn_weights(load_conversations(path), objective, **kw)
    offsets, values = column_turn_weights(read_dataset(path), objective, **kw)
    got = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(HAND))]
    assert [len(g) for g in got] == [len(e) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-12)


def test_hand_example_values(tmp_path, cache):
    path = write_jsonl(tmp_path / "hand.jsonl", HAND)
    ds = read_dataset(path)
    offsets, swift = column_turn_weights(ds, "swift")
    first = swift[offsets[:-1]]
    a = np.array([0.0, 1.0, 0.5, 1.0])  # context a: rows 0, 1, 2 and 9
    z = (a - a.mean()) / a.std()
    assert first[[0, 1, 2, 9]] == pytest.approx(z)
    assert first[[3, 4, 5, 8]].tolist() == [0, 0, 0, 0]  # all-equal context b, single-sample c and e
    offsets, top = column_turn_weights(ds, "filtered", top_k=1)
    assert top[offsets[:-1]][[0, 1, 2, 9]].tolist() == [0, 1, 0, 0]  # a tie: the earlier sample wins
    offsets, rtg = column_turn_weights(ds, "per-turn", gamma=0.5)
    assert rtg[offsets[5]:offsets[6]] == pytest.approx([0.1 + 0.5 * 0.0, -0.2 + 0.5 * 0.4, 0.4])
    offsets, w = column_turn_weights(ds, "refit")
    assert w[offsets[6]:offsets[7]].tolist() == pytest.approx([0.9, 0.0, 0.9])  # weight: 0 on turn 1


def test_refit_rejects_negative_rewards_and_bad_top_k(tmp_path, cache):
    path = write_jsonl(tmp_path / "neg.jsonl", [conv("a", -1.0), conv("a", 1.0)])
    with pytest.raises(RwftError, match="refit needs rewards >= 0"):
        column_turn_weights(read_dataset(path), "refit")
    with pytest.raises(RwftError, match="top_k must be >= 1"):
        column_turn_weights(read_dataset(path), "filtered", top_k=0)


def test_read_dataset_columns_and_formats(tmp_path, cache):
    import datasets

    records = sample_records(9)
    records[0]["metadata"] = {"k": [1, 2]}
    jsonl = write_jsonl(tmp_path / "a.jsonl", records)
    ds = read_dataset(jsonl)
    assert {"id", "context_id", "reward", "messages", "tools", "metadata"} <= set(ds.column_names)
    convs = load_conversations(jsonl)
    assert [json.loads(m) for m in ds["messages"]] == [c.messages for c in convs]
    assert json.loads(ds[0]["metadata"]) == {"k": [1, 2]} and ds[0]["tools"] is None
    hf = datasets.Dataset.from_list(records)
    hf.to_parquet(str(tmp_path / "a.parquet"))
    hf.save_to_disk(str(tmp_path / "a_ds"))
    for other in (tmp_path / "a.parquet", tmp_path / "a_ds"):
        o = read_dataset(other)
        assert o["messages"][:] == ds["messages"][:] and o["reward"][:] == ds["reward"][:]


def test_a_bad_line_names_file_and_line_and_leaves_no_cache(tmp_path, cache):
    records = sample_records(10)
    records[6]["reward"] = "high"
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(RwftError, match=r"bad\.jsonl:7: field 'reward'"):
        read_dataset(path)
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(RwftError, match=r"bad\.jsonl:7: field 'reward'"):
        prepare_training_data(path, load_tokenizer("tiny"), objective="swift")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_empty_file_and_nothing_left(tmp_path, cache, tok):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(RwftError, match="no conversations"):
        read_dataset(empty)
    same = write_jsonl(tmp_path / "s.jsonl", [conv("a", 0.5), conv("a", 0.5)])
    with pytest.raises(RwftError, match="no conversation carries a non-zero weight under --objective swift"):
        prepare_training_data(same, tok, objective="swift")


@pytest.fixture
def calls(monkeypatch):
    n = {"rows": 0}
    real = D._encode_batch

    def counting(batch, *a, **k):
        n["rows"] += len(batch["messages"])
        return real(batch, *a, **k)

    monkeypatch.setattr(D, "_encode_batch", counting)
    return n


def test_cache_hits_and_misses(tmp_path, cache, tok, calls):
    path = write_jsonl(tmp_path / "d.jsonl", sample_records(30))
    ds1, s1 = prepare_training_data(path, tok, objective="swift", max_length=1024)
    assert calls["rows"] == 30
    ds2, s2 = prepare_training_data(path, tok, objective="swift", max_length=1024)
    assert calls["rows"] == 30 and s1 == s2  # hit: no tokenization
    assert ds2["input_ids"][0].tolist() == ds1["input_ids"][0].tolist()
    ds3, s3 = prepare_training_data(path, tok, objective="refit", max_length=1024)
    assert calls["rows"] == 30  # another objective reuses the tokenization
    assert s3.kept != s1.kept or not np.array_equal(ds3["turn_weights"][0], ds1["turn_weights"][0])
    prepare_training_data(path, tok, objective="swift", max_length=512)
    assert calls["rows"] == 60  # another max_length
    other = load_tokenizer("tiny")
    other.chat_template = other.chat_template.replace("<|im_end|>", "<|im_end|> ")
    prepare_training_data(path, other, objective="swift", max_length=1024)
    assert calls["rows"] == 90  # another tokenizer (its chat template)
    write_jsonl(path, sample_records(31))
    _, s4 = prepare_training_data(path, tok, objective="swift", max_length=1024)
    assert calls["rows"] == 121 and s4.conversations == 31  # a changed file
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_prepared_rows_match_the_in_memory_path(tmp_path, cache, tok):
    path = write_jsonl(tmp_path / "d.jsonl", sample_records(60))
    convs = load_conversations(path)
    for objective in ("swift", "filtered", "per-turn"):
        ds, stats = prepare_training_data(path, tok, objective=objective, max_length=256)
        rows, ref = D.build_sequences(tok, convs, turn_weights(convs, objective), 256, "assistant")
        assert stats == ref
        assert len(ds) == len(rows) == stats.kept
        for r, row in zip(ds, rows, strict=True):
            assert r["input_ids"].tolist() == row["input_ids"] and r["turn_index"].tolist() == row["turn_index"]
            assert r["turn_weights"].tolist() == pytest.approx(row["turn_weights"])
            assert int(r["length"]) == row["length"]
            assert r["token_penalty"].tolist() == row["token_penalty"] == []  # no spans in these logs
        assert set(ds.column_names) == {"input_ids", "turn_index", "token_penalty", "turn_weights", "length"}


def test_several_processes_give_the_same_tokens(tmp_path, cache, tok):
    path = write_jsonl(tmp_path / "d.jsonl", sample_records(40))
    ds = read_dataset(path)
    one = encode_dataset(ds, tok, 1024, num_proc=1)
    for p in D.data_cache_dir().glob("encoded-*"):
        shutil.rmtree(p)
    two = encode_dataset(ds, tok, 1024, num_proc=2)
    assert len(list(D.data_cache_dir().glob("encoded-*/*.arrow"))) == 2
    assert one["input_ids"][:] == two["input_ids"][:] and one["turn_index"][:] == two["turn_index"][:]


def test_too_long_conversations_are_counted_and_dropped(tmp_path, cache, tok):
    records = [conv("a", 0.0), conv("a", 1.0)]
    records[1]["messages"][0]["content"] = "a very long task " * 200
    path = write_jsonl(tmp_path / "d.jsonl", records + [conv("b", 0.2), conv("b", 0.8)])
    ds, stats = prepare_training_data(path, tok, objective="refit", max_length=64)
    assert stats.too_long == 1 and stats.zero_weight == 1 and stats.kept == 2 and stats.dropped_ids == ["1"]
    assert len(ds) == 2


def test_batched_map_equals_one_conversation_at_a_time_with_truncation_tools_and_weight_zero(tmp_path, cache, tok):
    """The map tokenizes a batch at once (encode_batch); rows equal encode_conversation's, truncated and
    too-long ones included, with the turn counts and the map's timing in done.json."""
    from rwft.data.encode import encode_conversation

    records = sample_records(12)
    records[3]["messages"][0]["content"] = "a very long task " * 200  # too long
    records[5]["messages"][1]["weight"] = 0
    records[7]["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    lengths = sorted(len(encode_conversation(tok, r["messages"], 10**9).input_ids) for r in records)
    max_length = lengths[len(lengths) // 2]  # about half the conversations are truncated
    enc = encode_dataset(read_dataset(path), tok, max_length, num_proc=1)
    done = json.loads(next(cache.glob("encoded-*/done.json")).read_text())
    assert done["rows"] == 12 and done["cpu_seconds"] > 0
    truncated = 0
    for rec, row in zip(records, enc, strict=True):
        want = encode_conversation(tok, rec["messages"], max_length, tools=rec.get("tools"))
        n_turns = sum(m["role"] == "assistant" for m in rec["messages"])
        if want is None:
            assert row["too_long"] and row["input_ids"] == [] and row["turn_tokens"] == [0] * n_turns
            continue
        truncated += want.truncated
        assert (row["input_ids"], row["turn_index"], row["truncated"]) == (
            want.input_ids, want.turn_index, want.truncated)
        assert row["turn_tokens"] == [want.turn_index.count(k) for k in range(n_turns)]
        assert row["agent_tokens"] == sum(row["turn_tokens"]) and row["length"] == len(want.input_ids)
    assert truncated and enc["too_long"].count(True) == 1


def test_length_normalization_by_hand():
    from rwft.data.weighting import normalize_lengths, resolve_normalization

    # row 0: two turns of 3 and 5 tokens; row 1: four turns, the second weight 0 (7 tokens, not counted);
    # row 2: a turn truncation emptied (0 tokens); row 3: weight 0 everywhere
    w = np.array([1, 1, -2, 0, -2, -2, 0.5, 0, 0])
    offsets = np.array([0, 2, 6, 7, 9])
    n = np.array([3, 5, 2, 7, 2, 12, 0, 4, 4])
    assert normalize_lengths(w, offsets, n, "sum").tolist() == w.tolist()
    # trajectory: L = 8 and 16 weighted tokens, L_bar = 12: row 0 x 12/8, row 1 x 12/16
    assert normalize_lengths(w, offsets, n, "trajectory") == pytest.approx([1.5, 1.5, -1.5, 0, -1.5, -1.5, 0.5, 0, 0])
    # turn: weighted turns of 3, 5, 2, 2, 12 tokens, n_bar = 24 / 5 = 4.8
    assert normalize_lengths(w, offsets, n, "turn") == pytest.approx([1.6, 0.96, -4.8, 0, -4.8, -0.8, 0.5, 0, 0])
    # auto: sum_t w_t n_t = 3 + 5 - 4 - 4 - 24 < 0 gives trajectory; negative weights on the short turns only
    # (row 1 swapped to 12, 7, 2, 2 tokens: 3 + 5 - 4 - 4 - 4 = -4 ... then 2 tokens fewer: 3 + 5 - 4 - 2 - 2 > 0)
    assert resolve_normalization("auto", w, n) == "trajectory"
    assert resolve_normalization("auto", w, [3, 5, 2, 7, 1, 1, 0, 4, 4]) == "sum"
    assert resolve_normalization("auto", abs(w), n) == "sum" and resolve_normalization("turn", w, n) == "turn"
    with pytest.raises(RwftError, match="--length-normalization 'mean'"):
        resolve_normalization("mean", w, n)


@pytest.mark.parametrize("objective", ["swift", "per-turn", "sft"])
def test_prepared_weights_follow_the_length_normalization(tmp_path, cache, tok, objective):
    """Each mode's turn weights against the formula over the encoder's own turn counts (truncation included),
    and what the modes promise of the per-token weights the collator builds: under trajectory every kept
    conversation's tokens weigh w x L_bar in all, under turn every turn's w_t x n_bar, and the total weight
    of weight-1 data (sft) is the same in every mode."""
    from rwft.data.encode import encode_conversation
    from rwft.train.collate import WeightedCollator

    records = sample_records(40)
    for i, r in enumerate(records):  # turn rewards mostly negative, so per-turn's net weight is < 0
        for k, m in enumerate(x for x in r["messages"] if x["role"] == "assistant"):
            m["reward"] = -0.1 * (k + 1) if i % 2 else 0.05
    path = write_jsonl(tmp_path / "d.jsonl", records)
    base = turn_weights(load_conversations(path), objective)
    counts = []
    for r in records:
        enc = encode_conversation(tok, r["messages"], 200)
        counts.append([enc.turn_index.count(k) for k in range(len(base[len(counts)]))])
    live = [[c for c, w in zip(cs, ws, strict=True) if w != 0 and c > 0] for cs, ws in zip(counts, base, strict=True)]
    kept = [i for i in range(len(records)) if live[i]]
    l_bar = sum(sum(live[i]) for i in kept) / len(kept)
    n_bar = sum(sum(live[i]) for i in kept) / sum(len(live[i]) for i in kept)
    totals = {}
    for mode in ("sum", "trajectory", "turn"):
        ds, stats = prepare_training_data(path, tok, objective=objective, max_length=200, length_normalization=mode)
        assert stats.length_normalization == mode and stats.truncated > 0 and len(ds) == len(kept)
        for i, row in zip(kept, ds, strict=True):
            want = []
            for w, c in zip(base[i], counts[i], strict=True):
                live_turn = w != 0 and c > 0
                scale = {"sum": 1.0, "trajectory": l_bar / sum(live[i]), "turn": n_bar / c if live_turn else 1.0}
                want.append(w * scale[mode] if live_turn else w)
            assert row["turn_weights"].tolist() == pytest.approx(want, rel=1e-6)
        batch = WeightedCollator(tok.pad_token_id)([dict(r) for r in ds])
        tw = batch["token_weights"]
        totals[mode] = float(tw.sum())
        for j, i in enumerate(kept):
            w = [x for x, c in zip(base[i], counts[i], strict=True) if x != 0 and c > 0]
            if mode == "trajectory" and len(set(w)) == 1:  # a conversation-level weight
                assert float(tw[j].sum()) == pytest.approx(w[0] * l_bar, rel=1e-5)
            if mode == "turn":
                ti = np.asarray(ds[j]["turn_index"])
                for k, x in enumerate(base[i]):
                    if x != 0 and counts[i][k]:
                        assert float(tw[j, :len(ti)][ti == k].sum()) == pytest.approx(x * n_bar, rel=1e-5)
    if objective == "sft":
        assert totals["trajectory"] == pytest.approx(totals["sum"]) and totals["turn"] == pytest.approx(totals["sum"])
    _, auto = prepare_training_data(path, tok, objective=objective, max_length=200, length_normalization="auto")
    net = sum(w * c for i in kept for w, c in zip(base[i], counts[i], strict=True))
    assert auto.length_normalization == ("trajectory" if net < 0 else "sum")
    assert (net < 0) == (objective == "per-turn")  # both resolutions are checked
