"""Span judges: tod's rules on hand-built episodes, the rubric span judge's JSON form and failures, rwft label
--spans (the spans pass the data layer's checks, resume, only-missing)."""

from __future__ import annotations

import json

import pytest

from rwft.data.conversation import parse_conversation, span_text
from rwft.data.io import load_conversations
from rwft.errors import RwftError
from rwft.rollout.judges import JudgeItem
from rwft.rollout.label import LabelConfig, run_label
from rwft.rollout.span_judges import make_span_judge, parse_span_reply

GOAL = {"area": "north", "food": "fish", "price": "cheap", "people": 3}
DB = {"places": [{"name": "star", "area": "north", "food": "fish", "price": "cheap"},
                 {"name": "moon", "area": "south", "food": "meat", "price": "expensive"}], "bookings": []}


def _call(cid: str, name: str, args) -> dict:
    return {"type": "function", "id": cid,
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def _episode(booked_people: int = 2) -> list[dict]:
    return [
        {"role": "system", "content": "You book restaurant tables."},
        {"role": "user", "content": "Book a table. I want north area."},
        {"role": "assistant", "content": "How about moon? It is expensive."},  # a wrong offer, a wrong price
        {"role": "user", "content": "No, I want north area."},
        {"role": "assistant", "content": "", "tool_calls": [_call("call_0", "search", {"food": "meat"})]},
        {"role": "tool", "tool_call_id": "call_0", "name": "search", "content": '["moon"]'},
        {"role": "assistant", "content": "How about [name]?"},  # [name] is moon: a wrong offer
        {"role": "user", "content": "No, I want fish food."},
        {"role": "assistant", "content": "Booking.", "tool_calls": [_call("call_1", "book", {"name": "star"})]},
        {"role": "tool", "tool_call_id": "call_1", "name": "book",
         "content": json.dumps({"booked": "star", "people": booked_people})},
        {"role": "assistant", "content": "Your table is booked."},  # true by now
    ]


def _marked(messages: list[dict], spans: list[list[dict]]) -> list[list[tuple[str, str]]]:
    agents = [m for m in messages if m["role"] == "assistant"]
    return [[(span_text(m)[s["start"]:s["end"]], s["severity"]) for s in ss] for m, ss in zip(agents, spans,
                                                                                            strict=True)]


def test_tod_rules_mark_wrong_offers_values_and_a_booking_without_the_party_size():
    messages = _episode()
    [res] = make_span_judge("tod").judge([JudgeItem(messages, {"goal": GOAL, "db": DB}, "r1")])
    assert res.failure is None
    assert _marked(messages, res.spans) == [
        [("moon", "major"), ("expensive", "minor")],
        [('"meat"', "major")],
        [("[name]", "major")],
        [('"book"', "major")],  # booked before the party size was asked: the choice to book, not the call's format
        [],
    ]
    # the spans are what the data layer accepts
    parse_conversation({"messages": _with_spans(messages, res.spans), "reward": 1.0}, "x:1", 0)


def test_tod_rules_mark_a_premature_confirmation_and_invalid_calls_critical():
    messages = [
        {"role": "user", "content": "Book a table. I want 3 people."},
        {"role": "assistant", "content": "Your table is booked."},
        {"role": "user", "content": "I do not know."},
        {"role": "assistant", "content": "", "tool_calls": [_call("c0", "search", {"people": 2}),
                                                              _call("c1", "book", {"name": "star", "people": 4}),
                                                              _call("c2", "order", {"name": "star"})]},
    ]
    [res] = make_span_judge("tod").judge([JudgeItem(messages, {"goal": GOAL, "db": DB}, "r")])
    first_block = span_text(messages[3]).split("\n<tool_call>")[0]
    assert _marked(messages, res.spans) == [[("booked", "critical")],
                                            [(first_block, "critical"), ("4", "major"), ('"order"', "critical")]]


def test_tod_rules_need_the_episode_metadata():
    with pytest.raises(RwftError, match="record 7: span judge 'tod' needs metadata.goal and metadata.db"):
        make_span_judge("tod").judge([JudgeItem(_episode(), {}, "record 7")])


def _with_spans(messages, spans):
    out = [dict(m) for m in messages]
    agents = [m for m in out if m["role"] == "assistant"]
    for m, s in zip(agents, spans, strict=True):
        if s:
            m["spans"] = s
    return out


def test_span_reply_parsing():
    texts = ["The price is 20 euros, 20 in all.", "Booked."]
    reply = 'Sure: {"errors": [{"turn": 1, "quote": "20", "severity": "major"}, ' \
            '{"turn": 1, "quote": "20", "severity": "minor"}]}'
    assert parse_span_reply(reply, texts) == [[{"start": 13, "end": 15, "severity": "major"},
                                               {"start": 23, "end": 25, "severity": "minor"}], []]
    assert parse_span_reply('{"errors": []}', texts) == [[], []]
    for bad, why in [("no json", "not a JSON object"), ('{"errors": [{"turn": 3, "quote": "x", "severity": "minor"}]}',
                                                         "turn 3"),
                     ('{"errors": [{"turn": 2, "quote": "Nope", "severity": "minor"}]}', "not in assistant turn 2"),
                     ('{"errors": [{"turn": 2, "quote": "Booked", "severity": "bad"}]}', "severity")]:
        with pytest.raises(ValueError, match=why):
            parse_span_reply(bad, texts)


class _Backend:
    """Replies in turn from a list; records the temperatures it was asked for."""

    def __init__(self, replies: list[str]):
        self.replies, self.temps = list(replies), []

    def generate(self, conversations, temperatures, seeds):
        self.temps += temperatures
        return [self.replies.pop(0) for _ in conversations]


def test_rubric_spans_retry_then_count_failures():
    msgs = [{"role": "user", "content": "Price?"}, {"role": "assistant", "content": "It costs 20."}]
    good = '{"errors": [{"turn": 1, "quote": "20", "severity": "critical"}]}'
    backend = _Backend(["garbage", good, "garbage"])
    judge = make_span_judge("rubric", retries=1, backend=backend)
    a, b = judge.judge([JudgeItem(msgs, {}, "a"), JudgeItem(msgs, {}, "b")])
    assert backend.temps == [0.0, 0.0, 0.7]  # only "a" is asked again
    assert a.spans is None and "unparseable span reply after 2 tries" in a.failure
    assert b.spans == [[{"start": 9, "end": 11, "severity": "critical"}]] and b.failure is None


def _logs(tmp_path, n: int = 5):
    recs = []
    for i in range(n):
        recs.append({"id": f"r{i}", "messages": _episode(booked_people=2 + i % 2), "reward": 0.5,
                     "metadata": {"goal": GOAL, "db": DB}})
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_label_spans_writes_checked_spans_keeps_rewards_and_resumes(tmp_path):
    path = _logs(tmp_path)
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    summary = run_label(LabelConfig(data=str(path), out=str(ref), judge="tod", spans=True, batch_size=2,
                                    progress=False))
    assert summary["failures"] == 0
    convs = load_conversations(ref)  # the data layer's checks pass
    assert [c.reward for c in convs] == [0.5] * 5 and all(c.metadata["span_judge"] == "tod" for c in convs)
    assert all(len(c.messages[2]["spans"]) == 2 for c in convs)
    run_label(LabelConfig(data=str(path), out=str(out), judge="tod", spans=True, batch_size=2, progress=False))
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # killed mid-line
    assert run_label(LabelConfig(data=str(path), out=str(out), judge="tod", spans=True, batch_size=2,
                                 progress=False))["resumed_from"] == 3
    assert out.read_bytes() == ref.read_bytes()
    with pytest.raises(RwftError, match="span judge"):
        run_label(LabelConfig(data=str(path), out=str(tmp_path / "x.jsonl"), judge="exact", spans=True))
    with pytest.raises(RwftError, match="judge-model"):
        run_label(LabelConfig(data=str(path), out=str(tmp_path / "x.jsonl"), judge="rubric", spans=True))


def test_label_spans_with_a_served_rubric_counts_failures_and_only_missing_retries(tmp_path):
    from openai_stub import StubServer

    path = _logs(tmp_path, 4)
    state = {"n": 0, "fail": True}

    def reply(msgs, body):
        state["n"] += 1
        if state["fail"] and state["n"] % 2 == 1:
            return "I see no problem."
        return '{"errors": [{"turn": 1, "quote": "moon", "severity": "major"}]}'

    server = StubServer(reply)
    try:
        out, again = tmp_path / "rubric.jsonl", tmp_path / "again.jsonl"
        summary = run_label(LabelConfig(data=str(path), out=str(out), judge="rubric", spans=True,
                                        judge_model=server.url, api_model="j", judge_retries=0, batch_size=1,
                                        progress=False))
        got = load_conversations(out)
        failed = [c for c in got if c.metadata["span_failure"] is not None]
        assert summary["failures"] == len(failed) == 2
        assert all("spans" not in m for c in failed for m in c.messages)
        assert all(c.messages[2]["spans"] == [{"start": 10, "end": 14, "severity": "major"}]
                   for c in got if c not in failed)
        state["fail"], before = False, len(server.requests)
        summary = run_label(LabelConfig(data=str(out), out=str(again), judge="rubric", spans=True, only_missing=True,
                                        judge_model=server.url, api_model="j", progress=False))
        assert len(server.requests) - before == 2 and summary["failures"] == 0
    finally:
        server.close()
