"""A policy served over HTTP: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp
server, a hosted API), with the stdlib only.

``POST {base_url}/chat/completions``; the requests of a batch run in threads. The API key is read from the
environment variable named by ``api_key_env`` and is never logged, written or put in an error.

``play`` keeps a server full: each episode runs in a thread of its own, turn after turn, so every live
episode's request is in flight at once and an episode's next turn goes out as soon as its reply is in,
without waiting for the rest of the batch (the collector's lockstep ``act`` waits for the slowest reply of
each turn). Each request keeps its (seed, context, sample, turn) seed, so the episodes are the same either way
when the server honours the seed. ``check_server`` and ``load_lora_adapter`` / ``unload_lora_adapter`` are
what ``rwft iterate --generator-url`` needs (vLLM's runtime LoRA endpoints).

**Tools.** An episode's ``tools`` (``--env tod``) are sent as the request's ``tools``, and its messages in
OpenAI's format: an assistant message's ``tool_calls`` (``arguments`` as a JSON string) and a tool result's
``tool_call_id`` and ``name``. A reply's ``tool_calls`` (a server that parses calls, such as vLLM with
``--enable-auto-tool-choice``) come back as the agent's text in rwft's form: its content, then one
``<tool_call>`` block per call (``data.chat_template.tool_calls_text``), which the environment parses and stores
as ``tool_calls`` again; a call whose arguments are not a JSON object stays as written and the environment
counts it invalid. A server that does not parse calls returns the blocks in its text, which reads the same.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError
from rwft.rollout.envs.base import Episode

Tools = list[dict[str, Any]] | None


class OpenAIPolicy:
    """An OpenAI-compatible chat-completions endpoint; the key comes only from ``$api_key_env``."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 256,
                 timeout: float = 120.0, retries: int = 3, workers: int = 8, max_in_flight: int = 256,
                 timeout_option: str = ""):
        """``timeout``: the deadline of one request, all its tries together (a hung server fails after it);
        ``timeout_option``: the command-line option that sets it, named in that error."""
        if not model:
            raise RwftError(f"--policy {base_url}: an HTTP endpoint needs --api-model (the served model's name)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.timeout_option = timeout_option
        self.retries = retries
        self.workers = workers
        self.max_in_flight = max_in_flight
        self.name = f"{model}@{self.base_url}"
        self.generated_tokens = 0
        self.loaded_adapter: str | None = None  # the LoRA adapter this process loaded for it (served_adapters)

    def chat(self, messages: list[dict[str, Any]], temperature: float, seed: int, max_tokens: int | None = None) -> str:
        """The reply to ``messages`` (see ``complete``)."""
        return self.complete(messages, temperature, seed, max_tokens)[0]

    def complete(self, messages: list[dict[str, Any]], temperature: float, seed: int,
                 max_tokens: int | None = None, tools: Tools = None) -> tuple[str, bool]:
        """The reply to ``messages`` (offered ``tools``, when given) as rwft's agent text (``reply_text``) and
        whether it stopped at ``max_tokens`` (finish_reason "length").

        Within ``timeout`` seconds in all, a failed connection, a timeout, a 408 / 429 / 5xx or a reply that is
        not a chat completion is tried again (up to ``retries`` more times); any other 4xx is the request's
        fault and raises at once, with the server's message."""
        body = {
            "model": self.model,
            "messages": [wire_message(m) for m in messages],
            "temperature": temperature,
            "seed": seed % (2**31),
            "max_tokens": max_tokens or self.max_new_tokens,
            **({"tools": tools} if tools else {}),
        }
        url = f"{self.base_url}/chat/completions"
        deadline = time.monotonic() + self.timeout
        last = ""
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                data = json.loads(_post(url, body, self.api_key_env, left))
                usage = data.get("usage") or {}
                self.generated_tokens += int(usage.get("completion_tokens") or 0)
                choice = data["choices"][0]
                return reply_text(choice["message"]), choice.get("finish_reason") == "length"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}: {server_message(e)}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    raise RwftError(f"{url}: {last}") from None  # the request itself is wrong: no retry
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a reply that is not a chat completion"
            if attempt < self.retries:
                time.sleep(max(0.0, min(8.0, 0.5 * 2**attempt, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            more = f"; a slow server may need a longer {self.timeout_option}" if self.timeout_option else ""
            raise RwftError(f"{url}: no answer within {self.timeout:g} s ({last or 'no reply'}){more}")
        raise RwftError(f"{url}: failed {self.retries + 1} times ({last})")

    def generate(self, conversations: list[list[dict[str, Any]]], temperatures: list[float], seeds: list[int],
                 max_new_tokens: int | None = None, tools: list[Tools] | None = None) -> list[str]:
        """The next assistant message of each conversation (offered its ``tools``, when given)."""
        return [text for text, _ in self._complete_all(conversations, temperatures, seeds, max_new_tokens, tools)]

    def _complete_all(self, conversations: list[list[dict[str, Any]]], temperatures: list[float], seeds: list[int],
                      max_new_tokens: int | None = None, tools: list[Tools] | None = None) -> list[tuple[str, bool]]:
        tools = tools or [None] * len(conversations)
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(conversations)))) as pool:
            futures = [
                pool.submit(self.complete, c, t, s, max_new_tokens, k)
                for c, t, s, k in zip(conversations, temperatures, seeds, tools, strict=True)
            ]
            return [f.result() for f in futures]

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        """The episodes' next turns; a turn cut at ``max_new_tokens`` is noted in ``mark_cut``'s list."""
        replies = self._complete_all([ep.messages for ep in episodes], temperatures, seeds,
                                     tools=[ep.tools for ep in episodes])
        for ep, (_, cut) in zip(episodes, replies, strict=True):
            mark_cut(ep, cut)
        return [text for text, _ in replies]

    def play(self, env: Any, episodes: list[Episode], temperatures: list[float], seed_of: Callable[[int, int], int],
             max_turns: int) -> None:
        """Play every episode to its end, each in its own thread (up to ``max_in_flight`` at once): episode k's
        turn t is sent with seed ``seed_of(k, t)`` as soon as its turn t - 1 is answered."""

        def one(k: int) -> None:
            ep, turn = episodes[k], 0
            while not ep.done:
                if turn >= max_turns:
                    raise RwftError(f"env {env.name}: an episode passed {max_turns} turns "
                                    "(its stopping rule is broken)")
                text, cut = self.complete(ep.messages, temperatures[k], seed_of(k, turn), tools=ep.tools)
                mark_cut(ep, cut)
                env.step(ep, text)
                turn += 1

        if not episodes:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_in_flight, len(episodes)))) as pool:
            for f in [pool.submit(one, k) for k in range(len(episodes))]:
                f.result()


def wire_message(m: dict[str, Any]) -> dict[str, Any]:
    """One rwft message as an OpenAI chat message: role and content, an assistant's ``tool_calls`` (``id``,
    ``type``, ``function`` with ``arguments`` as a JSON string) and a tool result's ``tool_call_id`` and ``name``;
    rwft's own keys (``weight``, ``spans``, ...) stay home."""
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        out["tool_calls"] = []
        for k, call in enumerate(m["tool_calls"]):
            fn = call.get("function", call)
            args = fn.get("arguments", {})
            out["tool_calls"].append({"id": call.get("id") or f"call_{k}", "type": "function", "function": {
                "name": fn.get("name"), "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if m["role"] == "tool":
        out.update({key: m[key] for key in ("tool_call_id", "name") if m.get(key) is not None})
    return out


def reply_text(message: dict[str, Any]) -> str:
    """A chat completion's message as rwft's agent text: its content, then its ``tool_calls`` as ``<tool_call>``
    blocks (``data.chat_template.tool_calls_text``: arguments that are a JSON object's string become the object)."""
    content = str(message.get("content") or "")
    calls = message.get("tool_calls") or []
    if not calls:
        return content
    blocks = tool_calls_text(calls)
    return content.rstrip() + "\n" + blocks if content.strip() else blocks


def mark_cut(episode: Episode, cut: bool) -> None:
    """Note in ``episode.state["cut_turns"]`` that its next agent turn (index ``agent_turns``) was cut at the
    token limit, when ``cut``: its end-of-turn marker was never generated (``rwft iterate`` does not train it)."""
    if cut:
        episode.state.setdefault("cut_turns", []).append(episode.agent_turns)


def _headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env)
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}


def _post(url: str, body: dict[str, Any], api_key_env: str, timeout: float = 120.0) -> str:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=_headers(api_key_env), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8", "replace")


def server_message(e: urllib.error.HTTPError) -> str:
    """The message of an error reply, on one line: OpenAI's ``error.message``, vLLM's ``message``, FastAPI's
    ``detail``, else the body's first 300 characters."""
    try:
        text = e.read().decode("utf-8", "replace") if e.fp else ""
    except OSError:
        text = ""
    try:
        data = json.loads(text)
        err = data.get("error") if isinstance(data, dict) else None
        msg = (err.get("message") if isinstance(err, dict) else err) or data.get("message") or data.get("detail")
        text = str(msg) if msg else text
    except (ValueError, AttributeError):
        pass
    return " ".join(text.split())[:300] or "(no message)"


def check_server(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 10.0) -> dict[str, Any]:
    """Raise a one-line RwftError unless ``GET {base_url}/models`` answers and lists ``model``; return its entry."""
    entries = model_list(base_url, api_key_env, timeout)
    names = [m.get("id") for m in entries]
    if model not in names:
        raise RwftError(f"--generator-url {base_url}: serves {names}, not --served-model {model!r}")
    return next(m for m in entries if m.get("id") == model)


def model_list(base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 10.0) -> list[dict[str, Any]]:
    """The entries of ``GET {base_url}/models`` (vLLM lists the LoRA adapters it has loaded there too); a one-line
    RwftError when the server does not answer with a model list."""
    url = f"{base_url.rstrip('/')}/models"
    req = urllib.request.Request(url, headers=_headers(api_key_env))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise RwftError(f"--generator-url {base_url}: {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise RwftError(f"--generator-url {base_url}: unreachable ({getattr(e, 'reason', e)})") from None
    except ValueError:
        raise RwftError(f"--generator-url {base_url}: {url} is not an OpenAI-compatible model list") from None
    entries = data.get("data", []) if isinstance(data, dict) else []
    return [m for m in entries if isinstance(m, dict)] if isinstance(entries, list) else []


def load_lora_adapter(base_url: str, name: str, path: str, api_key_env: str = "OPENAI_API_KEY",
                      timeout: float = 120.0) -> None:
    """Ask the server to load the PEFT adapter saved in ``path`` under ``name`` (vLLM: ``POST /v1/load_lora_adapter``,
    served with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)."""
    try:
        _post(f"{base_url.rstrip('/')}/load_lora_adapter", {"lora_name": name, "lora_path": path}, api_key_env,
              timeout)
    except urllib.error.HTTPError as e:
        raise RwftError(f"--generator-url {base_url}: loading adapter {name} from {path} failed: HTTP {e.code} "
                        f"{server_message(e)}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        raise RwftError(f"--generator-url {base_url}: unreachable while loading adapter {name} "
                        f"({getattr(e, 'reason', e)})") from None


def unload_lora_adapter(base_url: str, name: str, api_key_env: str = "OPENAI_API_KEY",
                        timeout: float = 120.0) -> str | None:
    """Drop an adapter the server no longer needs (``POST /v1/unload_lora_adapter``); never raises: returns why it
    failed, on one line (None when it did not)."""
    try:
        _post(f"{base_url.rstrip('/')}/unload_lora_adapter", {"lora_name": name}, api_key_env, timeout)
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {server_message(e)}"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        return f"unreachable ({getattr(e, 'reason', e)})"
    return None
