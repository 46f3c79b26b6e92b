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

**Error spans to token penalties.** An agent message's ``spans`` (``data.conversation``: character offsets
into its span text, the content then the calls as ``<tool_call>`` text) become ``Encoded.token_penalty``:
token t gets the largest ``SEVERITY_PENALTY`` of the spans whose characters its own (non-empty) characters
overlap, so a token a span cuts is in the span; 0 outside every span. The mapping goes through the
tokenizer's character offsets of the whole rendering: the message's rendered text is located inside its
turn's characters (verbatim, or stripped of surrounding whitespace, as templates that ``trim`` render it),
and a span offset is shifted by its position. Calls a template renders natively (its own format, not the
span text's) cannot be located character by character: a span reaching into the calls covers every token
from the end of the content to the end of the turn. Rendered text that is not found gives a clear error.

Truncation policy (``max_length``): the leading messages up to the first agent turn (the task) are
always kept; whole exchanges (an agent turn and the observations after it) are dropped from the
oldest until the rest fits. If even the task plus the last agent turn does not fit, the conversation
is dropped (None). Turn indices stay those of the original conversation. Both cases are counted and
reported by ``rwft validate`` and ``rwft train``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from rwft.data.chat_template import has_generation_prompt, prepare_messages, renderer
from rwft.data.conversation import span_text
from rwft.errors import RwftError

_BEG, _END = itemgetter(0), itemgetter(1)

SEVERITY_PENALTY = {"minor": 1.0, "major": 5.0, "critical": 10.0}
"""Penalty of a token in an error span of each severity: MQM's weights as xCOMET and the fine-grained MT reward
(Ramos et al., 2025) use them, so one critical error costs as much as ten minor ones and a judge's severities
keep the ratios translation evaluation settled on; ``rwft train --span-weight`` scales them into the weight."""


@dataclass
class Encoded:
    """Token ids and, per token, the index of the agent turn it belongs to (-1: not trained)."""

    input_ids: list[int]
    turn_index: list[int]  # index over ALL agent messages of the original conversation, or -1
    truncated: bool  # oldest exchanges were dropped to fit max_length
    token_penalty: list[float] = field(default_factory=list)  # per token (SEVERITY_PENALTY); [] without spans


def agent_mask(enc: Encoded) -> list[bool]:
    """True on the tokens that are trained (``turn_index >= 0``)."""
    return [k >= 0 for k in enc.turn_index]


# ---------------------------------------------------------------------------- encoding


def _rewrites_error() -> RwftError:
    return RwftError(
        "the chat template renders earlier turns differently once later turns are added; "
        "rwft cannot locate the agent's tokens for this template"
    )


Marks = dict[int, tuple[str, list[dict]]]  # agent ordinal -> (its span text, its error spans)


def _marks(messages: list[dict], agent_role: str) -> Marks:
    """The error spans of each agent message that has some, keyed by its agent ordinal."""
    agents = [m for m in messages if m["role"] == agent_role]
    return {k: (span_text(m), m["spans"]) for k, m in enumerate(agents) if m.get("spans")}


def _errors(full: str, start: int, end: int, content: str, marks: tuple[str, list[dict]], k: int):
    """One turn's error spans in the whole rendering's characters: [(start, end, penalty)] (module docstring).
    ``content``: the message's text as the template got it, rendered within ``full[start:end]``."""
    text, spans = marks
    pos = full.find(content, start, end) if content else start
    lo, hi = pos, pos + len(content)
    if pos < 0:  # a template that trims the content
        core = content.strip()
        found = full.find(core, start, end) if core else -1
        if found < 0:
            raise RwftError(f"agent turn {k}: the chat template does not render the message's text as written; "
                            "its error spans cannot be located")
        lo, hi = found, found + len(core)
        pos = found - (len(content) - len(content.lstrip()))
    native_calls = len(text) > len(content)  # the calls were rendered by the template itself
    out = []
    for span in spans:
        a, b, p = span["start"], span["end"], SEVERITY_PENALTY[span["severity"]]
        if a < len(content):
            out.append((max(lo, pos + a), min(hi, pos + min(b, len(content))), p))
        if native_calls and b > len(content):
            out.append((max(hi, pos + len(content)), end, p))
    return [(x, y, p) for x, y, p in out if x < y]


def _spans(tokenizer, msgs: list[dict], turn: list[int | None], excluded: set[int], tools, render=None,
           marks: Marks | None = None):
    """The whole rendering, each agent turn's character span and the error spans' characters with their
    penalties: (text, [(start, end, turn index or -1)], [(start, end, penalty)])."""
    render = render or renderer(tokenizer, tools, msgs)
    full = render(msgs, False)
    gen = has_generation_prompt(tokenizer)
    spans: list[tuple[int, int, int]] = []  # (start char, end char, turn index or -1)
    errors: list[tuple[int, int, float]] = []
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
        if marks and k in marks and k not in excluded:
            errors += _errors(full, start, end, msgs[j]["content"], marks[k], k)
    return full, spans, errors


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


def _penalties(offsets: list, index: list[int], errors: list[tuple[int, int, float]]) -> list[float]:
    """Per token, the largest penalty of the error spans its (non-empty) characters overlap, on agent tokens;
    [] without error spans."""
    if not errors:
        return []
    out = [0.0] * len(offsets)
    for a, b, p in errors:
        t = bisect_right(offsets, a, key=_END)  # first token ending after the span's start
        while t < len(offsets) and offsets[t][0] < b:
            if offsets[t][1] > offsets[t][0] and index[t] >= 0:
                out[t] = max(out[t], p)
            t += 1
    return out


def _index(ids: list[int], offsets, spans: list[tuple[int, int, int]], errors=()):
    """(Encoded, token index where each agent turn starts): a token belongs to the turn whose span its
    (non-empty) characters overlap; its penalty is that of the error spans it overlaps (``_penalties``)."""
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
    return Encoded(list(ids), index, truncated=False, token_penalty=_penalties(offsets, index, list(errors))), starts


def _encode(tokenizer, msgs: list[dict], turn: list[int | None], excluded: set[int], tools, marks: Marks):
    """Encode prepared messages without truncation: (Encoded, token index where each agent turn starts)."""
    full, spans, errors = _spans(tokenizer, msgs, turn, excluded, tools, marks=marks)
    [(ids, offsets)] = _tokenize(tokenizer, [full])
    return _index(ids, offsets, spans, errors)


def _truncate(tokenizer, msgs, turn, excluded, tool_arg, marks: Marks, enc: Encoded, starts: list[int],
              max_length: int):
    """The truncation policy, given the full encoding that does not fit."""
    agents = [j for j, k in enumerate(turn) if k is not None]
    if len(agents) < 2:
        return None
    head = msgs[: agents[0]]
    head_turn = turn[: agents[0]]

    def attempt(drop: int) -> Encoded:
        cut = agents[drop]
        out, _ = _encode(tokenizer, head + msgs[cut:], head_turn + turn[cut:], excluded, tool_arg, marks)
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
    marks = _marks(messages, agent_role)
    enc, starts = _encode(tokenizer, msgs, turn, excluded, tool_arg, marks)
    if len(enc.input_ids) <= max_length:
        return enc
    return _truncate(tokenizer, msgs, turn, excluded, tool_arg, marks, enc, starts, max_length)


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
        marks = _marks(messages, agent_role)
        if tool_arg is None:  # the common case: one renderer for the batch
            render = renderers.get("") or renderers.setdefault("", renderer(tokenizer, None, msgs, kwargs))
        else:
            render = renderer(tokenizer, tool_arg, msgs, kwargs)
        full, conv_spans, errors = _spans(tokenizer, msgs, turn, excluded, tool_arg, render, marks)
        prepared.append((msgs, turn, excluded, tool_arg, marks))
        texts.append(full)
        spans.append((conv_spans, errors))
    out: list[Encoded | None] = []
    for prep, (ids, offsets), (conv_spans, errors) in zip(prepared, _tokenize(tokenizer, texts), spans, strict=True):
        enc, starts = _index(ids, offsets, conv_spans, errors)
        out.append(enc if len(enc.input_ids) <= max_length else _truncate(tokenizer, *prep, enc, starts, max_length))
    return out
