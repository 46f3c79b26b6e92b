"""Tokenize a conversation with the model's chat template and tell which agent turn each token belongs to.

``encode_conversation`` is the one routine that decides which tokens are the agent's: training weights
them (the collator gives token t the weight ``turn_weights[turn_index[t]]``, 0 where it is -1) and
perplexity (``rwft.eval.metrics``) scores exactly them.

**An agent turn's tokens** are what the model would generate for that message: everything after the
generation prompt (``messages[:i]`` rendered with ``add_generation_prompt=True``) up to and including
the end-of-turn marker, without the whitespace the template puts after it (ChatML's newline). That is
the content, or the rendered tool calls, plus the end-of-turn token (the model learns to stop), never
the role header. transformers can return an assistant mask only for templates with ``{% generation %}``
markers, which most templates lack, so the spans are found by rendering:

1. Render the whole conversation once and tokenize it once, with character offsets.
2. For each agent message i, render ``messages[:i]`` with the generation prompt and ``messages[:i+1]``
   without it; both must be prefixes of the whole rendering. The span is [end of the first, end of the
   second with trailing whitespace removed). A template that renders earlier turns differently once later
   ones are added is refused with a clear error (the agent's tokens cannot be located).
3. A token belongs to the turn whose span its characters overlap.

Cost per conversation: one tokenization and 1 + 2 x (agent turns) template renders (with the compiled
template, once checked equal to ``apply_chat_template``); a truncated conversation is encoded again
once or twice (the number of exchanges to drop is guessed from the full encoding, then checked).
``encode_batch`` gives the same results for a list of conversations with one batched tokenizer call for
all of them (the Rust encodings read directly); tokenization is then about two thirds of the cost.

Fallback rule, for templates with no generation prompt (``add_generation_prompt`` changes nothing) or whose
generation prompt is not how the turn itself is rendered: the span starts where the message's content
(stripped) first occurs in the text the message adds, and runs to the end of that text (trailing
whitespace removed); an empty message gives only its last token (the end-of-turn marker); content the
template does not reproduce verbatim gives the whole added text, role header included.

Tools, tool calls and tool results are rendered as ``data.chat_template`` says (natively by templates that
support tools, else by a documented fallback). Tool calls are agent tokens (trained); tool results are not.
An agent message with ``weight: 0`` (OpenAI's fine-tuning format) keeps its place in the turn numbering but
its tokens get -1.

Truncation policy (``max_length``): the leading messages up to the first agent turn (the task) are
always kept; whole exchanges (an agent turn and the observations after it) are dropped from the
oldest until the rest fits. If even the task plus the last agent turn does not fit, the conversation
is dropped (None). Turn indices stay those of the original conversation. Both cases are counted and
reported by ``rwft validate`` and ``rwft train``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from rwft.data.chat_template import has_generation_prompt, prepare_messages, renderer
from rwft.errors import RwftError

_BEG, _END = itemgetter(0), itemgetter(1)


@dataclass
class Encoded:
    """Token ids and, per token, the index of the agent turn it belongs to (-1: not trained)."""

    input_ids: list[int]
    turn_index: list[int]  # index over ALL agent messages of the original conversation, or -1
    truncated: bool  # oldest exchanges were dropped to fit max_length


def agent_mask(enc: Encoded) -> list[bool]:
    """True on the tokens that are trained (``turn_index >= 0``)."""
    return [k >= 0 for k in enc.turn_index]


# ---------------------------------------------------------------------------- encoding


def _rewrites_error() -> RwftError:
    return RwftError(
        "the chat template renders earlier turns differently once later turns are added; "
        "rwft cannot locate the agent's tokens for this template"
    )


def _spans(tokenizer, msgs: list[dict], turn: list[int | None], excluded: set[int], tools, render=None):
    """The whole rendering and each agent turn's character span: (text, [(start, end, turn index or -1)])."""
    render = render or renderer(tokenizer, tools, msgs)
    full = render(msgs, False)
    gen = has_generation_prompt(tokenizer)
    spans: list[tuple[int, int, int]] = []  # (start char, end char, turn index or -1)
    for j, k in enumerate(turn):
        if k is None:
            continue
        upto = render(msgs[: j + 1], False)
        if not full.startswith(upto):
            raise _rewrites_error()
        end = len(upto.rstrip())
        start = -1
        if gen:
            try:
                prompt = render(msgs[:j], True)
            except Exception:  # noqa: BLE001 - some templates cannot render an empty conversation
                prompt = None
            if prompt is not None and full.startswith(prompt) and len(prompt) <= end:
                start = len(prompt)
        if start < 0:  # the documented fallback: locate the content in the text the message adds
            before = render(msgs[:j], False) if j > 0 else ""
            if not full.startswith(before):
                raise _rewrites_error()
            content = msgs[j]["content"].strip()
            found = full.find(content, len(before), end) if content else -1
            start = found if found >= 0 else (max(len(before), end - 1) if not content else len(before))
        spans.append((start, end, -1 if k in excluded else k))
    return full, spans


def _tokenize(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text, as ``tokenizer(texts, add_special_tokens=False,
    return_offsets_mapping=True)`` gives them, in one batched call. With a fast tokenizer the Rust
    encodings are read directly (the wrapper's per-item conversion costs as much as a third of the
    tokenization), after a call through the wrapper on an empty text that applies its settings to the
    backend (truncation and padding off, special tokens not split)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        try:
            tokenizer("", add_special_tokens=False)
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            return [(e.ids, e.offsets) for e in encodings]
        except Exception:  # noqa: BLE001 - another transformers version: the public path
            pass
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))


def _index(ids: list[int], offsets, spans: list[tuple[int, int, int]]):
    """(Encoded, token index where each agent turn starts): a token belongs to the turn whose span its
    (non-empty) characters overlap."""
    n = len(ids)
    offsets = offsets if isinstance(offsets, list) else list(offsets)
    index = [-1] * n
    starts = []
    for start, end, k in spans:
        t = bisect_right(offsets, start, key=_END)  # first token ending after the span's start
        starts.append(t)
        if k < 0:
            continue
        # the tokens from t on that start before the span's end: a slice when the starts ascend there and
        # no token is empty (the usual case), else token by token
        u = bisect_left(offsets, end, t, key=_BEG)
        if (u == n or offsets[u][0] >= end) and all(a < end and a < b for a, b in offsets[t:u]):
            index[t:u] = [k] * (u - t)
            continue
        while t < n and offsets[t][0] < end:
            if offsets[t][1] > offsets[t][0]:
                index[t] = k
            t += 1
    return Encoded(list(ids), index, truncated=False), starts


def _encode(tokenizer, msgs: list[dict], turn: list[int | None], excluded: set[int], tools):
    """Encode prepared messages without truncation: (Encoded, token index where each agent turn starts)."""
    full, spans = _spans(tokenizer, msgs, turn, excluded, tools)
    [(ids, offsets)] = _tokenize(tokenizer, [full])
    return _index(ids, offsets, spans)


def _truncate(tokenizer, msgs, turn, excluded, tool_arg, enc: Encoded, starts: list[int], max_length: int):
    """The truncation policy, given the full encoding that does not fit."""
    agents = [j for j, k in enumerate(turn) if k is not None]
    if len(agents) < 2:
        return None
    head = msgs[: agents[0]]
    head_turn = turn[: agents[0]]

    def attempt(drop: int) -> Encoded:
        cut = agents[drop]
        out, _ = _encode(tokenizer, head + msgs[cut:], head_turn + turn[cut:], excluded, tool_arg)
        out.truncated = True
        return out

    # the first guess: the fewest exchanges whose tokens in the full encoding free enough room
    n, last = len(enc.input_ids), len(agents) - 1
    drop = next((d for d in range(1, last + 1) if n - (starts[d] - starts[0]) <= max_length), last)
    best = attempt(drop)
    if len(best.input_ids) > max_length:  # too few dropped: drop more until it fits
        while len(best.input_ids) > max_length:
            if drop == last:
                return None
            drop += 1
            best = attempt(drop)
        return best
    while drop > 1:  # the guess may be too many (tokenization at the cut can differ): drop as few as fit
        fewer = attempt(drop - 1)
        if len(fewer.input_ids) > max_length:
            break
        best, drop = fewer, drop - 1
    return best


def encode_conversation(
    tokenizer,
    messages: list[dict],
    max_length: int,
    agent_role: str = "assistant",
    tools: list[dict] | None = None,
) -> Encoded | None:
    """Encode under the truncation policy of this module; None when the conversation cannot fit."""
    msgs, turn, excluded, tool_arg = prepare_messages(tokenizer, messages, agent_role, tools)
    enc, starts = _encode(tokenizer, msgs, turn, excluded, tool_arg)
    if len(enc.input_ids) <= max_length:
        return enc
    return _truncate(tokenizer, msgs, turn, excluded, tool_arg, enc, starts, max_length)


def encode_batch(
    tokenizer,
    conversations: list[list[dict]],
    max_length: int,
    agent_role: str = "assistant",
    tools: list[list[dict] | None] | None = None,
) -> list[Encoded | None]:
    """``encode_conversation`` of each conversation (with ``tools[i]``), the same results, faster: the
    whole renderings of all of them are tokenized in one batched call; only those longer than
    ``max_length`` go through the truncation policy one by one."""
    tools = tools if tools is not None else [None] * len(conversations)
    if len(tools) != len(conversations):
        raise ValueError("encode_batch: one tools entry per conversation")
    try:
        kwargs = dict(tokenizer.special_tokens_map)
    except Exception:  # noqa: BLE001 - renderer reads it itself
        kwargs = None
    renderers: dict[str, Any] = {}
    prepared, texts, spans = [], [], []
    for messages, conv_tools in zip(conversations, tools, strict=True):
        msgs, turn, excluded, tool_arg = prepare_messages(tokenizer, messages, agent_role, conv_tools)
        if tool_arg is None:  # the common case: one renderer for the batch
            render = renderers.get("") or renderers.setdefault("", renderer(tokenizer, None, msgs, kwargs))
        else:
            render = renderer(tokenizer, tool_arg, msgs, kwargs)
        full, conv_spans = _spans(tokenizer, msgs, turn, excluded, tool_arg, render)
        prepared.append((msgs, turn, excluded, tool_arg))
        texts.append(full)
        spans.append(conv_spans)
    out: list[Encoded | None] = []
    for prep, (ids, offsets), conv_spans in zip(prepared, _tokenize(tokenizer, texts), spans, strict=True):
        enc, starts = _index(ids, offsets, conv_spans)
        out.append(enc if len(enc.input_ids) <= max_length else _truncate(tokenizer, *prep, enc, starts, max_length))
    return out
