"""Parsing one record: tool calls, tool results, tools, weights, TRL's text prompt/completion, ShareGPT."""

from __future__ import annotations

import json

import pytest

from rwft.data.conversation import parse_conversation
from rwft.data.encode import encode_conversation
from rwft.errors import RwftError
from rwft.presets import load_tokenizer

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _rec(*messages, **extra):
    return {"messages": list(messages), "reward": 1.0, **extra}


def _error(rec, **kw) -> str:
    with pytest.raises(RwftError) as e:
        parse_conversation(rec, "f.jsonl:7", 0, **kw)
    return str(e.value)


USER = {"role": "user", "content": "Weather in Paris?"}
CALL = {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


@pytest.mark.parametrize("content", [None, "", "MISSING"])
def test_assistant_tool_calls_with_null_missing_or_empty_content(content):
    msg = {"role": "assistant", "tool_calls": [CALL]}
    if content != "MISSING":
        msg["content"] = content
    conv = parse_conversation(_rec(USER, msg, {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                                   {"role": "assistant", "content": "Sunny."}, tools=TOOLS), "f", 0)
    assert conv.messages[1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert conv.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    assert conv.tools == TOOLS and conv.agent_turns() == [1, 3]
    assert conv.to_record()["tools"] == TOOLS
    again = parse_conversation(json.loads(json.dumps(conv.to_record())), "f", 0)  # round trip
    assert again.messages == conv.messages and again.tools == TOOLS


def test_tool_calls_flat_form_and_dict_arguments_are_stored_in_openai_shape():
    msg = {"role": "assistant", "content": "Checking.", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}
    conv = parse_conversation(_rec(USER, msg), "f", 0)
    assert conv.messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert conv.tools is None and "tools" not in conv.to_record()
    # null or empty tool_calls (as Arrow or some loggers write them) mean none
    plain = parse_conversation(_rec(USER, {"role": "assistant", "content": "a", "tool_calls": None}), "f", 0)
    assert plain.messages[1] == {"role": "assistant", "content": "a"}


@pytest.mark.parametrize("calls, field, says", [
    ("f(x)", "messages[1].tool_calls", "expected a list of tool calls"),
    (["f"], "messages[1].tool_calls[0]", "expected a tool call"),
    ([{"type": "code", "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0].type", "function"),
    ([{"type": "function"}], "messages[1].tool_calls[0]", "expected a tool call"),
    ([{"function": "f"}], "messages[1].tool_calls[0].function", "expected an object"),
    ([{"function": {"arguments": "{}"}}], "messages[1].tool_calls[0].function.name", "got missing"),
    ([{"function": {"name": "f"}}], "messages[1].tool_calls[0].function.arguments", "got missing"),
    ([{"function": {"name": "f", "arguments": 3}}], "messages[1].tool_calls[0].function.arguments", "got 3"),
    ([{"id": 5, "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0].id", "expected a string"),
])
def test_tool_call_shape_errors_name_the_field(calls, field, says):
    msg = _error(_rec(USER, {"role": "assistant", "content": None, "tool_calls": calls}))
    assert msg.startswith(f"f.jsonl:7: field '{field}': ") and says in msg


def test_tool_messages_and_tools_errors():
    assistant = {"role": "assistant", "content": "a"}
    assert "field 'messages[1].content': expected a string, got null" in _error(
        _rec(USER, {"role": "tool", "content": None}, assistant))
    assert "field 'messages[1].tool_call_id': expected a string" in _error(
        _rec(USER, {"role": "tool", "content": "x", "tool_call_id": 3}, assistant))
    assert "field 'messages[0].tool_calls': tool calls are only allowed on agent messages" in _error(
        _rec({"role": "user", "content": "q", "tool_calls": [CALL]}, assistant))
    assert "field 'tools': expected a list of tool schemas" in _error(_rec(USER, assistant, tools={"a": 1}))
    assert "field 'tools': expected a list of tool schemas, got a string that is not JSON" in _error(
        _rec(USER, assistant, tools="[oops"))
    # content is still required on a message without tool calls
    assert "field 'messages[1].content': expected a string, got missing" in _error(_rec(USER, {"role": "assistant"}))


def test_weight_zero_excludes_a_turn_and_other_values_are_errors():
    rec = _rec(USER, {"role": "assistant", "content": "first", "weight": 0}, {"role": "user", "content": "more"},
               {"role": "assistant", "content": "second", "weight": 1.0})
    conv = parse_conversation(rec, "f", 0)
    assert [m.get("weight") for m in conv.messages] == [None, 0, None, 1]
    tok = load_tokenizer("tiny")
    enc = encode_conversation(tok, conv.messages, 10**9)
    assert set(enc.turn_index) == {-1, 1}  # turn 0 is not trained; turn 1 keeps its number
    for bad in (0.5, 2, -1, "0", True, [1]):
        rec["messages"][1]["weight"] = bad
        assert _error(rec).startswith("f.jsonl:7: field 'messages[1].weight': expected 0 (leave this turn out")
    rec["messages"][1]["weight"] = None  # null = absent
    assert "weight" not in parse_conversation(rec, "f", 0).messages[1]


def test_trl_standard_prompt_completion_strings():
    conv = parse_conversation({"prompt": "The sky is", "completion": " blue.", "reward": 0.5}, "f", 3)
    assert conv.messages == [{"role": "user", "content": "The sky is"}, {"role": "assistant", "content": " blue."}]
    assert conv.reward == 0.5 and conv.id == "3"
    tutor = parse_conversation({"prompt": "q", "completion": "a", "reward": 1}, "f", 0, agent_role="tutor")
    assert tutor.agent_turns("tutor") == [1]
    msg = _error({"prompt": "text", "completion": [{"role": "assistant", "content": "a"}], "reward": 1})
    assert "field 'prompt': expected 'prompt' and 'completion' both strings or both lists" in msg
    assert "field 'completion': expected a string, got null" not in msg
    # the conversational prompt/completion lists name their own fields
    msg = _error({"prompt": [USER], "completion": [{"role": "assistant", "content": 5}], "reward": 1})
    assert "field 'completion[0].content': expected a string, got 5" in msg


def test_sharegpt_conversations():
    rec = {
        "system": "You are a weather bot.",
        "tools": json.dumps(TOOLS),  # LLaMA-Factory writes the tools as a JSON string
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny.", "weight": 0, "reward": 0.5},
            {"from": "human", "value": "Thanks"},
            {"from": "gpt", "value": "Welcome."},
        ],
        "reward": 1.0,
    }
    conv = parse_conversation(rec, "f", 0)
    assert conv.messages == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "weight": 0, "reward": 0.5},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome."},
    ]
    assert conv.tools == TOOLS and conv.turn_rewards() == [0.0, 0.5, 0.0]
    # errors name the ShareGPT fields
    bad = json.loads(json.dumps(rec))
    bad["conversations"][2]["from"] = "narrator"
    assert "field 'conversations[2].from': unknown speaker 'narrator'" in _error(bad)
    bad["conversations"][2] = {"from": "human", "value": None}
    assert "field 'conversations[2].value': expected a string, got null" in _error(bad)
    bad["conversations"][2] = {"from": "function_call", "value": "get_weather(Paris)"}
    assert "field 'conversations[2].value': expected a JSON tool call" in _error(bad)
    bad["conversations"][2] = {"from": "function_call", "value": '[{"name": "", "arguments": {}}]'}
    assert "field 'conversations[2].value[0].name': expected a non-empty string" in _error(bad)
    bad["conversations"][2] = {"from": "gpt", "value": "x", "weight": 3}
    assert "field 'conversations[2].weight': expected 0" in _error(bad)
    assert "field 'system': expected a string" in _error({**rec, "system": 3})
    assert "field 'conversations': expected a non-empty list" in _error({"conversations": [], "reward": 1})
    # the custom agent role takes the gpt side
    tutor = parse_conversation({"conversations": rec["conversations"][:2], "reward": 1}, "f", 0, agent_role="tutor")
    assert [m["role"] for m in tutor.messages] == ["user", "tutor"]


def test_missing_messages_names_the_accepted_formats():
    assert "field 'messages': missing (expected a list of {role, content}, TRL's prompt/completion, or ShareGPT" in (
        _error({"reward": 1}))
