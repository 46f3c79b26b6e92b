"""Loading: JSONL, Parquet, a datasets directory, TRL's formats; torn-line-safe appends."""

from __future__ import annotations

import datasets
import pytest

from conftest import sample_records, write_jsonl
from rwft.data.conversation import default_context_id, parse_conversation
from rwft.data.io import JsonlAppender, count_complete_lines, iter_conversations, load_conversations
from rwft.errors import RwftError


def test_jsonl_parquet_and_dataset_dir_load_the_same(tmp_path):
    records = sample_records(9)
    jsonl = write_jsonl(tmp_path / "a.jsonl", records)
    ds = datasets.Dataset.from_list(records)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "a_ds"))
    a = load_conversations(jsonl)
    for other in (tmp_path / "a.parquet", tmp_path / "a_ds"):
        b = load_conversations(other)
        assert [c.messages for c in b] == [c.messages for c in a]
        assert [c.reward for c in b] == [c.reward for c in a]
        assert [c.context_id for c in b] == [c.context_id for c in a]
        assert [c.metadata for c in b] == [c.metadata for c in a]


def test_trl_dataset_with_a_reward_column_loads_unchanged(tmp_path):
    # TRL's conversational "messages" format, and its prompt/completion format, each plus a reward column
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "reward": 1.0},
            {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "5"}],
             "reward": 0.0}]
    convs = [parse_conversation(r, "mem", i) for i, r in enumerate(rows)]
    assert convs[1].messages == rows[0]["messages"][:1] + rows[1]["completion"]
    assert convs[0].context_id == convs[1].context_id  # same prompt, same default context
    assert convs[0].id == "0" and convs[1].id == "1"


def test_default_context_id_hashes_the_messages_before_the_first_agent_turn():
    a = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]
    b = a[:2] + [{"role": "assistant", "content": "different"}]
    c = [{"role": "user", "content": "other"}, a[2]]
    assert default_context_id(a) == default_context_id(b) != default_context_id(c)


def test_turn_rewards_credit_the_latest_agent_turn():
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1", "reward": 0.5},
                        {"role": "user", "content": "good", "reward": 1.0}, {"role": "assistant", "content": "a2"}],
           "reward": 2.0}
    assert parse_conversation(rec, "m", 0).turn_rewards() == [1.5, 0.0]
    del rec["messages"][1]["reward"], rec["messages"][2]["reward"]
    assert parse_conversation(rec, "m", 0).turn_rewards() == [0.0, 2.0]  # no turn rewards: all on the last


def test_appender_cuts_a_torn_line_and_counts_whole_ones(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonlAppender(path) as w:
        w.write([{"a": 1}, {"a": 2}])
    with path.open("ab") as f:
        f.write(b'{"a": 3')  # a writer killed mid-line
    assert count_complete_lines(path) == 2
    with JsonlAppender(path) as w:
        w.write([{"a": 3}])
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_iter_conversations_streams_and_reports_the_line(tmp_path):
    records = sample_records(8)
    records[6]["messages"][1]["role"] = "robot"
    path = write_jsonl(tmp_path / "a.jsonl", records)
    it = iter_conversations(path)
    assert [next(it).id for _ in range(6)] == [r["id"] for r in records[:6]]  # read lazily, up to the bad one
    with pytest.raises(RwftError, match=r"a\.jsonl:7: field 'messages\[1\]\.role'"):
        next(it)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(RwftError, match="no conversations"):
        list(iter_conversations(tmp_path / "e.jsonl"))


def test_parquet_is_read_in_batches(tmp_path, monkeypatch):
    import rwft.data.io as io

    monkeypatch.setattr(io, "BATCH_ROWS", 4)
    records = sample_records(10)
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "a.parquet"))
    got = list(io.read_records(tmp_path / "a.parquet"))
    assert [w for w, _ in got][-1].endswith("a.parquet:row 9") and [r["id"] for _, r in got] == [
        r["id"] for r in records]
