"""Tokenize a conversation with the model's chat template and mark exactly the agent's tokens.

transformers can return an assistant mask only for templates with ``{% generation %}`` markers, which
most templates (SmolLM2's, Llama's, Qwen's) lack, so this module finds the agent's text itself:

1. Render the whole conversation once and tokenize it with character offsets.
2. For each agent message i, render the conversation up to message i and up to i + 1; both must be
   prefixes of the whole rendering (templates that rewrite earlier turns are refused with a clear
   error). The agent's span starts where its content starts inside that segment and ends at the end
   of the segment with trailing whitespace removed, so it covers the content and the end-of-turn token
   (the model learns to stop) but not the role header.
3. A token belongs to the agent iff its characters overlap the span.

Truncation policy (``max_length``): the leading messages up to the first agent turn (the task) are
always kept; whole exchanges (an agent turn and the observations after it) are dropped from the
oldest until the rest fits. If even the task plus the last agent turn does not fit, the conversation
is dropped. Both cases are counted and reported by ``rwft validate`` and ``rwft train``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rwft.data.conversation import Conversation
from rwft.errors import RwftError


@dataclass
class Encoded:
    """Token ids with the weight of each token (0 outside agent turns) and the agent mask."""

    input_ids: list[int]
    agent_mask: list[bool]
    token_weights: list[float]
    truncated: bool  # some oldest exchanges were dropped to fit max_length


def render(tokenizer, messages: list[dict]) -> str:
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(msgs, tokenize=False)


def agent_spans(tokenizer, messages: list[dict], agent_role: str) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered text and (start, end, message index) character spans of each agent turn."""
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != agent_role:
            continue
        before = render(tokenizer, messages[:i]) if i > 0 else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(upto)):
            raise RwftError(
                "the chat template renders earlier turns differently once later turns are added; "
                "rwft cannot locate the agent's tokens for this template"
            )
        segment_end = len(upto.rstrip())
        content = m["content"].strip()
        if content:
            k = upto.find(content, len(before))
            if k < 0:
                raise RwftError(f"the chat template does not reproduce message {i}'s content verbatim")
            start = k
        else:  # an empty turn: only the end-of-turn marker is learned
            start = max(len(before), segment_end - 1)
        spans.append((start, segment_end, i))
    return full, spans


def encode(tokenizer, messages: list[dict], agent_role: str, turn_weights: list[float]) -> Encoded:
    """Tokenize without truncation; ``turn_weights`` has one weight per agent turn."""
    text, spans = agent_spans(tokenizer, messages, agent_role)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [False] * len(ids)
    weights = [0.0] * len(ids)
    t = 0
    for (start, end, _), w in zip(spans, turn_weights, strict=True):
        while t < len(ids) and offsets[t][1] <= start:
            t += 1
        while t < len(ids) and offsets[t][0] < end:
            if offsets[t][1] > offsets[t][0]:
                mask[t] = True
                weights[t] = w
            t += 1
    return Encoded(ids, mask, weights, truncated=False)


def encode_conversation(
    tokenizer, conv: Conversation, turn_weights: list[float], max_length: int, agent_role: str = "assistant"
) -> Encoded | None:
    """Encode under the truncation policy of this module; None when the conversation cannot fit."""
    messages, weights = conv.messages, list(turn_weights)
    first = next(i for i, m in enumerate(messages) if m["role"] == agent_role)
    head, body = messages[:first], messages[first:]
    truncated = False
    while True:
        enc = encode(tokenizer, head + body, agent_role, weights)
        if len(enc.input_ids) <= max_length:
            enc.truncated = truncated
            return enc
        # drop the oldest exchange: the first agent turn of the body and the observations after it
        nxt = next((j for j in range(1, len(body)) if body[j]["role"] == agent_role), None)
        if nxt is None:
            return None
        body, weights, truncated = body[nxt:], weights[1:], True
