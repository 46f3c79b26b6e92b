"""Messages as a model's chat template gets them, and the template's rendering (``data.encode`` uses both).

Rendering of tools, tool calls and tool results. A template *supports tools* when its source mentions
``tool_calls``; then messages (with ``tool_calls``, arguments given as JSON strings decoded to objects)
and the ``tools`` list go to ``apply_chat_template`` as they are. Otherwise this fallback is applied
before rendering:

- an agent message's tool calls become text appended to its content, Hermes/Qwen style, one block per
  call: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (joined by newlines, after
  the content and a newline when there is content);
- a ``tool`` message is rendered as its own ``tool`` turn if the template renders that role (it does not
  raise and its content appears); else consecutive tool messages become one ``user`` turn whose content is
  each result wrapped in ``<tool_response>\\n...\\n</tool_response>``, joined by newlines;
- the ``tools`` list goes into the system message as ``<tools>\\n`` + one JSON schema per line +
  ``\\n</tools>``: appended (after a blank line) to the first message if it is a system message, else in
  a new system message prepended.

The renderer calls the compiled template directly (a fraction of ``apply_chat_template``'s cost), once
checked equal to ``apply_chat_template`` for the template; template probes are cached per template.
"""

from __future__ import annotations

import json
from typing import Any

# ---------------------------------------------------------------------------- template probes

_PROBES: dict[tuple[str, str], bool] = {}
_TOOL_PROBE = "rwft-tool-probe-7f3a"


def _template(tokenizer) -> str:
    t = getattr(tokenizer, "chat_template", None)
    return t if isinstance(t, str) else json.dumps(t, sort_keys=True, default=str)


def _probe(tokenizer, name: str, fn) -> bool:
    key = (_template(tokenizer), name)
    if key not in _PROBES:
        try:
            _PROBES[key] = bool(fn())
        except Exception:  # noqa: BLE001 - any template failure means "no"
            _PROBES[key] = False
    return _PROBES[key]


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool calls itself (its source mentions ``tool_calls``)."""
    return "tool_calls" in _template(tokenizer)


def _renders_tool_role(tokenizer) -> bool:
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
            {"role": "tool", "content": _TOOL_PROBE}]
    return _probe(tokenizer, "tool-role", lambda: _TOOL_PROBE in _render(tokenizer, msgs, None, False))


def has_generation_prompt(tokenizer) -> bool:
    msgs = [{"role": "user", "content": "q"}]
    return _probe(tokenizer, "generation-prompt",
                  lambda: _render(tokenizer, msgs, None, True) != _render(tokenizer, msgs, None, False))


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


_FAST_OK: dict[str, bool] = {}
_COMPILED: dict[str, Any] = {}  # template -> (compiled template, its globals as a plain dict)


def _compiled(template: str):
    if template not in _COMPILED:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)
        _COMPILED[template] = (compiled, dict(compiled.globals))
    return _COMPILED[template]


def renderer(tokenizer, tools: list[dict] | None, probe: list[dict], kwargs: dict | None = None):
    """A function (messages, generation_prompt) -> text. It renders with the compiled template directly
    (a fraction of ``apply_chat_template``'s cost, which matters at one render per agent turn), once checked
    to give the same text as ``apply_chat_template`` for this template; else ``apply_chat_template``.
    ``kwargs``: the tokenizer's ``special_tokens_map`` when the caller already has it (a batch)."""

    def slow(msgs: list[dict], gen: bool) -> str:
        return _render(tokenizer, msgs, tools, gen)

    try:
        template = tokenizer.get_chat_template(None, tools)
        compiled, base = _compiled(template)
        kwargs = dict(tokenizer.special_tokens_map) if kwargs is None else kwargs
        env, root, name, blocks = compiled.environment, compiled.root_render_func, compiled.name, compiled.blocks
        context_class, concat = env.context_class, env.concat
    except Exception:  # noqa: BLE001 - another transformers or jinja version: the public path
        return slow

    def fast(msgs: list[dict], gen: bool) -> str:
        # Template.render(...) without re-reading the template's globals (a ChainMap) on every call: the
        # context jinja's new_context builds, with the globals copied once into a plain dict
        ctx = context_class(env, {**base, "messages": msgs, "tools": tools, "documents": None,
                                  "add_generation_prompt": gen, **kwargs}, name, blocks, globals=base)
        return concat(root(ctx))

    key = template + "\0" + json.dumps(kwargs, sort_keys=True, default=str)
    if key not in _FAST_OK:
        try:
            _FAST_OK[key] = all(fast(probe, g) == slow(probe, g) for g in (False, True))
        except Exception:  # noqa: BLE001 - this conversation cannot tell: check on the next one
            return slow
    return fast if _FAST_OK[key] else slow


# ---------------------------------------------------------------------------- preparing messages


def _arguments(args: Any) -> Any:
    """Tool-call arguments as an object when they are a JSON string of one (templates expect objects)."""
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return args
        return parsed if isinstance(parsed, dict) else args
    return args


def _function(call: dict) -> dict:
    fn = call.get("function", call)
    return {"name": fn.get("name"), "arguments": _arguments(fn.get("arguments", {}))}


def tool_calls_text(calls: list[dict]) -> str:
    """The fallback text of tool calls: one Hermes/Qwen ``<tool_call>`` block per call, joined by newlines."""
    return "\n".join(
        "<tool_call>\n" + json.dumps(_function(c), ensure_ascii=False) + "\n</tool_call>" for c in calls
    )


def prepare_messages(tokenizer, messages: list[dict], agent_role: str, tools: list[dict] | None):
    """Messages as the template gets them, the agent ordinal of each (None: not an agent message), the
    set of excluded ordinals (``weight: 0``) and the ``tools`` argument for the template."""
    native = supports_tools(tokenizer)
    out: list[dict] = []
    turn: list[int | None] = []
    excluded: set[int] = set()
    k = 0
    for m in messages:
        role = m["role"]
        msg: dict[str, Any] = {"role": role, "content": m.get("content") or ""}
        calls = m.get("tool_calls") or []
        if calls and native:
            msg["tool_calls"] = [
                {"type": "function", "function": _function(c), **({"id": c["id"]} if c.get("id") is not None else {})}
                for c in calls
            ]
        elif calls:
            text = tool_calls_text(calls)
            msg["content"] = msg["content"] + "\n" + text if msg["content"] else text
        if role == "tool":
            msg.update({key: m[key] for key in ("tool_call_id", "name") if m.get(key) is not None})
        out.append(msg)
        if role == agent_role:
            if m.get("weight", 1) == 0:
                excluded.add(k)
            turn.append(k)
            k += 1
        else:
            turn.append(None)
    if native:
        return out, turn, excluded, tools or None
    if tools:
        block = "<tools>\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools) + "\n</tools>"
        if out and out[0]["role"] == "system":
            first = out[0]["content"]
            out[0] = {**out[0], "content": first + "\n\n" + block if first else block}
        else:
            out.insert(0, {"role": "system", "content": block})
            turn.insert(0, None)
    if any(m["role"] == "tool" for m in out) and agent_role != "tool" and not _renders_tool_role(tokenizer):
        merged: list[dict] = []
        mturn: list[int | None] = []
        for msg, t in zip(out, turn, strict=True):
            if msg["role"] != "tool":
                merged.append(msg)
                mturn.append(t)
                continue
            wrapped = "<tool_response>\n" + msg["content"] + "\n</tool_response>"
            if merged and merged[-1].get("_tool_group"):
                merged[-1]["content"] += "\n" + wrapped
            else:
                merged.append({"role": "user", "content": wrapped, "_tool_group": True})
                mturn.append(None)
        out = [{k2: v for k2, v in m.items() if k2 != "_tool_group"} for m in merged]
        turn = mturn
    return out, turn, excluded, None
