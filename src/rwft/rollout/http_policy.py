"""A policy served over HTTP: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp
server, a hosted API), with the stdlib only.

``POST {base_url}/chat/completions``; the requests of a batch run in threads. The API key is read from the
environment variable named by ``api_key_env`` and is never logged, written or put in an error.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rwft.errors import RwftError
from rwft.rollout.envs.base import Episode


class OpenAIPolicy:
    """An OpenAI-compatible chat-completions endpoint; the key comes only from ``$api_key_env``."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 256,
                 timeout: float = 120.0, retries: int = 3, workers: int = 8):
        if not model:
            raise RwftError(f"--policy {base_url}: an HTTP endpoint needs --api-model (the served model's name)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.retries = retries
        self.workers = workers
        self.name = f"{model}@{self.base_url}"
        self.generated_tokens = 0

    def chat(self, messages: list[dict[str, Any]], temperature: float, seed: int, max_tokens: int | None = None) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": temperature,
            "seed": seed % (2**31),
            "max_tokens": max_tokens or self.max_new_tokens,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        last = ""
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                usage = data.get("usage") or {}
                self.generated_tokens += int(usage.get("completion_tokens") or 0)
                return str(data["choices"][0]["message"].get("content") or "")
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code in (400, 401, 403, 404, 422):
                    break  # the request itself is wrong: retrying will not help
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a reply that is not a chat completion"
            if attempt < self.retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))
        raise RwftError(f"--policy {self.base_url}: request failed after {self.retries + 1} tries ({last})")

    def generate(self, conversations: list[list[dict[str, Any]]], temperatures: list[float], seeds: list[int],
                 max_new_tokens: int | None = None) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(conversations)))) as pool:
            futures = [
                pool.submit(self.chat, c, t, s, max_new_tokens)
                for c, t, s in zip(conversations, temperatures, seeds, strict=True)
            ]
            return [f.result() for f in futures]

    def act(self, episodes: list[Episode], temperatures: list[float], seeds: list[int]) -> list[str]:
        return self.generate([ep.messages for ep in episodes], temperatures, seeds)
