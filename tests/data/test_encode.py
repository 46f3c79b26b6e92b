"""The agent mask selects exactly the agent's messages, on several chat templates; truncation policy."""

from __future__ import annotations

import copy

import pytest

from conftest import sample_records
from rwft.data.conversation import parse_conversation
from rwft.data.encode import encode, encode_conversation
from rwft.presets import load_tokenizer

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
    return tok


def _runs(ids, mask):
    runs, cur = [], []
    for t, m in zip(ids, mask, strict=True):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("kind", ["tiny", "smollm2", "llama3", "qwen"])
def test_masked_tokens_decode_to_exactly_the_agent_messages(kind):
    tok = _tokenizer(kind)
    eot = "<|eot_id|>" if kind == "llama3" else "<|im_end|>"
    for rec in sample_records(6):
        messages = rec["messages"]
        agent = [m["content"] for m in messages if m["role"] == "assistant"]
        enc = encode(tok, messages, "assistant", [1.0] * len(agent))
        runs = _runs(enc.input_ids, enc.agent_mask)
        assert [tok.decode(r, skip_special_tokens=False) for r in runs] == [a + eot for a in agent]


def test_each_turn_carries_its_own_weight():
    tok = _tokenizer("tiny")
    messages = sample_records(1)[0]["messages"]
    enc = encode(tok, messages, "assistant", [0.5, -1.0, 2.0])
    per_run = [set(r) for r in _runs(enc.token_weights, enc.agent_mask)]
    assert per_run == [{0.5}, {-1.0}, {2.0}]
    assert all(w == 0 for m, w in zip(enc.agent_mask, enc.token_weights, strict=True) if not m)


def test_custom_agent_role_and_empty_agent_turn():
    tok = _tokenizer("tiny")
    messages = [{"role": "user", "content": "Pick a letter."}, {"role": "tutor", "content": ""},
                {"role": "user", "content": "Again."}, {"role": "tutor", "content": "B"}]
    enc = encode(tok, messages, "tutor", [1.0, 1.0])
    runs = _runs(enc.input_ids, enc.agent_mask)
    assert [tok.decode(r) for r in runs] == ["<|im_end|>", "B<|im_end|>"]


def test_truncation_drops_oldest_exchanges_and_keeps_the_task():
    tok = _tokenizer("tiny")
    conv = parse_conversation(sample_records(1)[0], "x", 0)
    full = encode(tok, conv.messages, "assistant", [1.0, 2.0, 3.0])
    enc = encode_conversation(tok, conv, [1.0, 2.0, 3.0], max_length=len(full.input_ids) - 1)
    assert enc is not None and enc.truncated and len(enc.input_ids) < len(full.input_ids)
    text = tok.decode(enc.input_ids)
    assert conv.messages[0]["content"] in text  # the task is kept
    assert conv.messages[1]["content"] not in text  # the oldest agent turn went
    assert set(w for w in enc.token_weights if w) == {2.0, 3.0}  # weights of the kept turns stay theirs
    # too short for the task plus the last agent turn: dropped
    tiny = copy.deepcopy(conv)
    assert encode_conversation(tok, tiny, [1.0, 2.0, 3.0], max_length=20) is None
    # fits: untouched
    same = encode_conversation(tok, conv, [1.0, 2.0, 3.0], max_length=len(full.input_ids))
    assert same.input_ids == full.input_ids and not same.truncated
