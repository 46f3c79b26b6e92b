"""turn_index marks exactly each agent message's tokens, on several chat templates; tools; truncation policy."""

from __future__ import annotations

import copy

import pytest

from conftest import sample_records
from rwft.data.encode import Encoded, agent_mask, encode_batch, encode_conversation
from rwft.errors import RwftError
from rwft.presets import load_tokenizer

BIG = 10**9

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN_STYLE = (  # ChatML with a default system turn and newline handling like Qwen2's
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5's tool-calling template, trimmed to what matters: tools in the system turn, tool calls rendered
# after the content, consecutive tool results grouped into one user turn of <tool_response> blocks.
QWEN_TOOLS = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen.' }}{%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first)
          or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
# ChatML that refuses any role but system/user/assistant (tool results must become user turns)
STRICT_CHATML = (
    "{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NO_GENERATION_PROMPT = (  # ChatML that ignores add_generation_prompt: the content-search fallback applies
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
)
KINDS = ["tiny", "smollm2", "llama3", "qwen", "qwen-tools"]


def _tokenizer(kind: str):
    if kind == "smollm2":
        return load_tokenizer("smollm2-135m")
    tok = load_tokenizer("tiny")
    if kind == "llama3":
        tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>",
                                                             "<|end_header_id|>", "<|eot_id|>"]})
        tok.chat_template = LLAMA3_TEMPLATE
    elif kind == "qwen":
        tok.chat_template = QWEN_STYLE
    elif kind == "qwen-tools":
        tok.chat_template = QWEN_TOOLS
    elif kind == "strict":
        tok.chat_template = STRICT_CHATML
    elif kind == "no-gen":
        tok.chat_template = NO_GENERATION_PROMPT
    return tok


def _eot(kind: str) -> str:
    return "<|eot_id|>" if kind == "llama3" else "<|im_end|>"


def _turn_texts(tok, enc: Encoded) -> dict[int, str]:
    """Decoded tokens of each turn index >= 0 (each turn's tokens must be contiguous)."""
    out: dict[int, list[int]] = {}
    for t, (tid, k) in enumerate(zip(enc.input_ids, enc.turn_index, strict=True)):
        if k < 0:
            continue
        if k in out:
            assert enc.turn_index[t - 1] == k, f"turn {k}'s tokens are not contiguous"
        out.setdefault(k, []).append(tid)
    return {k: tok.decode(ids, skip_special_tokens=False) for k, ids in out.items()}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_CONV = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [  # arguments as OpenAI sends them: a JSON string
        {"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": "OBSERVATION-sunny-21C", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "Let me check again.", "tool_calls": [  # content and a call; dict arguments
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "OBSERVATION-still-sunny", "name": "get_weather"},
    {"role": "tool", "content": "OBSERVATION-second-result"},
    {"role": "assistant", "content": "It is sunny and 21C in Paris."},
]
TOOL_WANT = [CALL, "Let me check again.\n" + CALL, "It is sunny and 21C in Paris."]


@pytest.mark.parametrize("kind", KINDS)
def test_turn_tokens_decode_to_exactly_the_agent_messages(kind):
    tok = _tokenizer(kind)
    for rec in sample_records(6):
        messages = rec["messages"]
        agent = [m["content"] for m in messages if m["role"] == "assistant"]
        enc = encode_conversation(tok, messages, BIG)
        assert len(enc.turn_index) == len(enc.input_ids) and not enc.truncated
        assert _turn_texts(tok, enc) == {k: a + _eot(kind) for k, a in enumerate(agent)}
        assert agent_mask(enc) == [k >= 0 for k in enc.turn_index]
        # the ids are the template's own rendering (apply_chat_template), tokenized once
        text = tok.apply_chat_template(messages, tokenize=False)
        assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]


def test_null_keys_as_arrow_writes_them_change_nothing():
    tok = _tokenizer("qwen-tools")
    keys = ("tool_calls", "tool_call_id", "name", "weight", "reward")
    filled = [{**{k: None for k in keys}, **m} for m in copy.deepcopy(TOOL_CONV)]
    for m in filled:
        for call in m["tool_calls"] or []:
            call.setdefault("id", None)
    assert encode_conversation(tok, filled, BIG, tools=TOOLS) == encode_conversation(tok, TOOL_CONV, BIG, tools=TOOLS)


@pytest.mark.parametrize("kind", [*KINDS, "strict", "no-gen"])
def test_tool_calls_are_agent_tokens_and_tool_results_are_not(kind):
    tok = _tokenizer(kind)
    enc = encode_conversation(tok, TOOL_CONV, BIG, tools=TOOLS)
    assert _turn_texts(tok, enc) == {k: w + _eot(kind) for k, w in enumerate(TOOL_WANT)}
    text = tok.decode(enc.input_ids, skip_special_tokens=False)
    for obs in ("OBSERVATION-sunny-21C", "OBSERVATION-still-sunny", "OBSERVATION-second-result"):
        assert obs in text  # rendered, but in no agent turn
        assert all(obs not in t for t in _turn_texts(tok, enc).values())
    assert '"name": "get_weather", "description": "Weather of a city"' in text  # the tools reach the prompt


def test_tool_fallback_rendering_on_templates_without_tool_support():
    tok = _tokenizer("tiny")  # renders any role: a tool result is its own turn
    text = tok.decode(encode_conversation(tok, TOOL_CONV, BIG, tools=TOOLS).input_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n<tools>\n" + '{"type": "function", "function": {"name": "get_weather"')
    assert "<|im_start|>assistant\n" + CALL + "<|im_end|>" in text
    assert "<|im_start|>tool\nOBSERVATION-sunny-21C<|im_end|>" in text
    # an existing system message gets the tools block appended
    with_system = [{"role": "system", "content": "Be brief."}, *TOOL_CONV]
    text = tok.decode(encode_conversation(tok, with_system, BIG, tools=TOOLS).input_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n<tools>\n")
    # a template that rejects the tool role: consecutive results become one user turn of <tool_response> blocks
    strict = _tokenizer("strict")
    text = strict.decode(encode_conversation(strict, TOOL_CONV, BIG).input_ids, skip_special_tokens=False)
    assert ("<|im_start|>user\n<tool_response>\nOBSERVATION-still-sunny\n</tool_response>\n"
            "<tool_response>\nOBSERVATION-second-result\n</tool_response><|im_end|>") in text


def test_native_tool_template_gets_the_calls_and_tools():
    tok = _tokenizer("qwen-tools")
    text = tok.decode(encode_conversation(tok, TOOL_CONV, BIG, tools=TOOLS).input_ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen.\n\n# Tools\n\n<tools>\n")
    assert "<|im_start|>user\n<tool_response>\nOBSERVATION-sunny-21C\n</tool_response><|im_end|>" in text


@pytest.mark.parametrize("kind", ["tiny", "llama3", "qwen-tools"])
def test_weight_zero_turn_is_not_trained_but_keeps_numbering(kind):
    tok = _tokenizer(kind)
    messages = [dict(m) for m in TOOL_CONV]
    messages[3]["weight"] = 0
    messages[6]["weight"] = 1
    enc = encode_conversation(tok, messages, BIG, tools=TOOLS)
    assert _turn_texts(tok, enc) == {0: TOOL_WANT[0] + _eot(kind), 2: TOOL_WANT[2] + _eot(kind)}
    full = encode_conversation(tok, TOOL_CONV, BIG, tools=TOOLS)
    assert enc.input_ids == full.input_ids  # the weight changes nothing in what is rendered


def test_custom_agent_role_and_empty_agent_turn():
    tok = _tokenizer("tiny")
    messages = [{"role": "user", "content": "Pick a letter."}, {"role": "tutor", "content": ""},
                {"role": "user", "content": "Again."}, {"role": "tutor", "content": "B"}]
    enc = encode_conversation(tok, messages, BIG, agent_role="tutor")
    assert _turn_texts(tok, enc) == {0: "<|im_end|>", 1: "B<|im_end|>"}


def test_no_generation_prompt_fallback_finds_the_content():
    tok = _tokenizer("no-gen")
    messages = sample_records(1)[0]["messages"]
    agent = [m["content"] for m in messages if m["role"] == "assistant"]
    assert _turn_texts(tok, encode_conversation(tok, messages, BIG)) == {
        k: a + "<|im_end|>" for k, a in enumerate(agent)}
    empty = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
    assert _turn_texts(tok, encode_conversation(tok, empty, BIG)) == {0: "<|im_end|>"}


def test_templates_that_rewrite_earlier_turns_are_refused():
    tok = _tokenizer("tiny")
    tok.chat_template = "{{ messages | length }}" + NO_GENERATION_PROMPT  # the header changes with every turn
    with pytest.raises(RwftError, match="renders earlier turns differently"):
        encode_conversation(tok, sample_records(1)[0]["messages"], BIG)


def test_conversation_without_agent_turn_has_no_agent_tokens():
    tok = _tokenizer("tiny")
    enc = encode_conversation(tok, [{"role": "user", "content": "Hello"}], BIG)
    assert enc.input_ids and set(enc.turn_index) == {-1}


@pytest.mark.parametrize("kind", ["tiny", "qwen-tools"])
def test_truncation_drops_oldest_exchanges_keeps_the_task_and_the_turn_numbers(kind):
    tok = _tokenizer(kind)
    cases = [(sample_records(1)[0]["messages"], None), (TOOL_CONV, TOOLS)]
    for messages, tools in cases:
        agents = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        full = encode_conversation(tok, messages, BIG, tools=tools)
        head = messages[: agents[0]]
        # the exchanges kept at each number of drops, encoded without truncation
        variants = [encode_conversation(tok, head + messages[agents[d]:], BIG, tools=tools)
                    for d in range(len(agents))]
        for max_length in range(len(variants[-1].input_ids) - 3, len(full.input_ids) + 2):
            enc = encode_conversation(tok, messages, max_length, tools=tools)
            fits = [d for d, v in enumerate(variants) if len(v.input_ids) <= max_length]
            if not fits:
                assert enc is None
                continue
            d = fits[0]  # the fewest exchanges dropped
            assert enc is not None and enc.input_ids == variants[d].input_ids
            assert enc.truncated == (d > 0)
            # turn numbers are the original conversation's: dropping d turns leaves turns d, d+1, ...
            assert sorted(set(enc.turn_index) - {-1}) == list(range(d, len(agents)))
            want = {k + d: t for k, t in _turn_texts(tok, variants[d]).items()}
            assert _turn_texts(tok, enc) == want
            text = tok.decode(enc.input_ids)
            assert messages[0]["content"] in text  # the task is kept
    # far too short for the task plus the last agent turn: dropped
    assert encode_conversation(tok, sample_records(1)[0]["messages"], max_length=20) is None


class _PositionModel:
    """A fake LM under which -log p(token j) = j / 1000: agent_nll's total tells which positions it scored."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, input_ids):
        import math

        import torch

        ids = input_ids[0].tolist()
        logits = torch.full((len(ids), self.vocab), -1e4)
        for j in range(1, len(ids)):
            logits[j - 1, ids[j]] = 0.0
            logits[j - 1, (ids[j] + 1) % self.vocab] = math.log(math.expm1(j / 1000))
        return type("Out", (), {"logits": logits[None]})()


@pytest.mark.parametrize("kind", KINDS)
def test_perplexity_scores_exactly_the_tokens_with_a_turn_index(kind):
    from rwft.eval.metrics import agent_nll

    tok = _tokenizer(kind)
    messages = [dict(m) for m in TOOL_CONV]
    messages[3]["weight"] = 0
    for conv, tools in [(messages, TOOLS), (sample_records(1)[0]["messages"], None)]:
        enc = encode_conversation(tok, conv, BIG, tools=tools)
        trained = [j for j, k in enumerate(enc.turn_index) if k >= 0]
        total, count = agent_nll(_PositionModel(len(tok)), tok, conv, tools=tools)
        assert count == len(trained) and total == pytest.approx(sum(trained) / 1000, rel=1e-4)


@pytest.mark.parametrize("kind", ["tiny", "llama3", "qwen-tools", "strict", "no-gen"])
def test_encode_batch_equals_encode_conversation(kind):
    tok = _tokenizer(kind)
    weight0 = [dict(m) for m in TOOL_CONV]
    weight0[3]["weight"] = 0
    records = sample_records(6)
    too_long = copy.deepcopy(records[0]["messages"])
    too_long[0]["content"] = "a very long task " * 300
    batch = [(r["messages"], None) for r in records] + [
        (TOOL_CONV, TOOLS), (weight0, TOOLS), (TOOL_CONV, None), (too_long, None),
        ([{"role": "user", "content": "Hello"}], None)]
    lengths = sorted(len(encode_conversation(tok, m, BIG, tools=t).input_ids) for m, t in batch)
    for max_length in (BIG, lengths[len(lengths) // 2], lengths[2]):
        want = [encode_conversation(tok, m, max_length, tools=t) for m, t in batch]
        got = encode_batch(tok, [m for m, _ in batch], max_length, "assistant", [t for _, t in batch])
        assert got == want
        if max_length != BIG:
            assert any(e is not None and e.truncated for e in got)  # the mix holds truncated ...
            assert any(e is None for e in got)  # ... and dropped conversations
    assert encode_batch(tok, [], 100) == []
