"""Generated tokens/s of rwft's collection through a served policy vs a plain client at the same concurrency.

    bash scripts/vllm_cpu.sh &        # smollm2 on port 8011 (VLLM_DTYPE=float32 on a CPU without bf16)
    python bench/served_throughput.py --url http://127.0.0.1:8011/v1 --model smollm2 --concurrency 16 64

It starts no server: ``--url`` must answer ``GET /models`` listing ``--model`` (the served name). For each
concurrency C it plays ``--batches`` x C multi-turn episodes (default mcqa source=arithmetic: three agent turns,
a teacher turn after each, so rwft's path pays its per-turn work; clarify source=requests is mostly one turn
with an untrained model) three times:

1. recording (untimed, warms the server): ``rwft collect``'s code path (``run_collect`` with ``--policy URL``
   and ``--batch-size C``, so C episodes in flight, each sending its next turn as soon as its reply is in)
   with every request body it sends recorded;
2. rwft, timed: the same collection again (the same seeds, so the same requests), judging and writing the
   JSONL included;
3. plain client, timed: the recorded request bodies (messages, temperature, seed, max_tokens) sent in the
   order rwft sent them by C asyncio workers over keep-alive HTTP/1.1 connections, each sending its next
   request as soon as its reply is in: C requests in flight until the list runs out, with no environment,
   no judging, no writing and no wait for a turn's reply before the next turn -- the server's own ceiling
   for these requests.

Tokens are the server's ``usage.completion_tokens`` in both paths. It prints each path's requests, generated
tokens, seconds and tokens/s, and the ratio rwft / plain (target >= 0.9); with ``--repeats`` > 1 the two
timed runs alternate in order and the medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
from unittest.mock import patch

from rwft.rollout import http_policy
from rwft.rollout.collect import CollectConfig, run_collect
from rwft.rollout.envs.base import make_env
from rwft.rollout.policies import make_policy


def check_up(url: str, model: str) -> None:
    """Exit with one line unless ``GET {url}/models`` answers and lists ``model``."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=10) as resp:
            names = [m.get("id") for m in json.loads(resp.read().decode()).get("data", [])]
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        sys.exit(f"served_throughput: no server at {url} ({getattr(e, 'reason', e)}); start one first, e.g. "
                 "`bash scripts/vllm_cpu.sh &` and wait until /v1/models answers")
    except (ValueError, AttributeError):
        sys.exit(f"served_throughput: {url}/models is not an OpenAI-compatible model list")
    if model not in names:
        sys.exit(f"served_throughput: {url} serves {names}, not --model {model!r}")


def collect(args: argparse.Namespace, concurrency: int, out: Path) -> dict[str, Any]:
    episodes = args.batches * concurrency
    if episodes % args.samples:
        sys.exit(f"served_throughput: --batches x --concurrency ({episodes}) must be a multiple of --samples")
    cfg = CollectConfig(
        env=args.env, env_args=args.env_args, policy=args.url, api_model=args.model, out=str(out),
        contexts=episodes // args.samples, samples_per_context=args.samples, temperatures=[args.temperature],
        batch_size=concurrency, max_new_tokens=args.max_new_tokens, seed=args.seed, progress=False, quiet=True,
        overwrite=True,
    )
    env = make_env(cfg.env, cfg.env_args)
    policy = make_policy(cfg.policy, env, cfg.max_new_tokens, cfg.api_model, cfg.api_key_env)
    policy.timeout = args.timeout  # the default 120 s deadline is too short for a loaded CPU server
    return run_collect(cfg, policy=policy)


def record(args: argparse.Namespace, concurrency: int, out: Path,
           copy: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """rwft's collection and the request bodies it posted, in the order it posted them (``copy`` False: the
    bodies themselves, not copies -- enough to count them, and next to nothing added to the timed path)."""
    bodies: list[dict[str, Any]] = []
    post = http_policy._post

    def recording_post(url: str, body: dict[str, Any], *a: Any, **kw: Any) -> str:
        bodies.append(json.loads(json.dumps(body)) if copy else body)  # list.append: atomic across threads
        return post(url, body, *a, **kw)

    with patch.object(http_policy, "_post", recording_post):
        summary = collect(args, concurrency, out)
    return bodies, summary


class Connection:
    """One keep-alive HTTP/1.1 connection posting JSON (Content-Length or chunked replies)."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.tls = u.hostname or "127.0.0.1", u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        self.path = u.path.rstrip("/") + "/chat/completions"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        for attempt in range(2):  # a kept-alive connection the server has since closed is reopened once
            reused = self.writer is not None and not self.writer.is_closing()
            if not reused:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls or None)
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(head.encode() + payload)
                await self.writer.drain()
                status = (await self.reader.readline()).decode("latin-1").split()
            except ConnectionError:
                status = []
            if len(status) >= 2:
                break
            self.close()
            if not reused or attempt:
                raise RuntimeError(f"{self.host}:{self.port} closed the connection without a reply")
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            data = b"".join(parts)
        else:
            data = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close" or status[0] == "HTTP/1.0":
            self.close()
        if status[1] != "200":
            raise RuntimeError(f"HTTP {status[1]}: {data.decode('utf-8', 'replace')[:300]}")
        return json.loads(data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def replay(url: str, bodies: list[dict[str, Any]], concurrency: int, timeout: float) -> tuple[float, int]:
    """Send ``bodies`` in order, ``concurrency`` at a time; (seconds, generated tokens from ``usage``)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        conn = Connection(url)
        try:
            while not queue.empty():
                reply = await asyncio.wait_for(conn.post(queue.get_nowait()), timeout)
                tokens += int((reply.get("usage") or {}).get("completion_tokens") or 0)
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8011/v1", help="the server's OpenAI base URL (ends in /v1)")
    ap.add_argument("--model", default="smollm2", help="the served model's name")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], help="episodes / requests in flight")
    ap.add_argument("--batches", type=int, default=1, help="episodes per concurrency level = BATCHES x C")
    ap.add_argument("--env", default="mcqa")
    ap.add_argument("--env-args", nargs="*", default=["source=arithmetic"])
    ap.add_argument("--samples", type=int, default=4, help="samples per task")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a request may take (both paths)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each path (alternating order)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each figure as it comes, also into a log file
    args.url = args.url.rstrip("/")
    if args.batches < 1 or args.repeats < 1 or min(args.concurrency) < 1:
        sys.exit("served_throughput: --batches, --repeats and --concurrency must be positive")
    check_up(args.url, args.model)
    print(f"{args.env} {' '.join(args.env_args)}, {args.model} at {args.url}, {args.max_new_tokens} new tokens a "
          f"turn, temperature {args.temperature:g}")
    for c in args.concurrency:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "episodes.jsonl"
            t0 = time.perf_counter()
            bodies, rec = record(args, c, out)
            print(f"C={c:<3} recording run: {rec['episodes']} episodes, {len(bodies)} requests, "
                  f"{rec['generated_tokens']} tokens in {time.perf_counter() - t0:.1f} s (untimed warm-up)")
            runs: dict[str, list[tuple[float, int]]] = {"rwft": [], "plain": []}
            requests = {"rwft": 0, "plain": len(bodies)}
            for r in range(args.repeats):
                for name in (("rwft", "plain") if r % 2 == 0 else ("plain", "rwft")):
                    if name == "rwft":
                        sent, s = record(args, c, out, copy=False)
                        requests["rwft"] = len(sent)
                        runs[name].append((s["seconds"], int(s["generated_tokens"] or 0)))
                    else:
                        runs[name].append(asyncio.run(replay(args.url, bodies, c, args.timeout)))
        rates = {}
        for name, label in (("rwft", "rwft collect"), ("plain", "plain client")):
            secs = statistics.median(s for s, _ in runs[name])
            toks = statistics.median(t for _, t in runs[name])
            rates[name] = statistics.median(t / s for s, t in runs[name])
            print(f"C={c:<3} {label}: {requests[name]} requests, {toks:.0f} generated tokens in {secs:7.2f} s = "
                  f"{rates[name]:7.1f} tokens/s")
        print(f"C={c:<3} ratio rwft / plain: {rates['rwft'] / rates['plain']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
