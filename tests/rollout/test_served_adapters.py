"""rwft eval / collect / compare through a served generator: a LoRA adapter directory is loaded into the server
under a name from its weights' digest and played by that name; the base plays as the served name; a full model
directory is refused. The server is test_http_policy's stub (vLLM's model list and LoRA endpoints)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from test_http_policy import Server

from rwft.cli import main, parse_config
from rwft.errors import RwftError
from rwft.eval.evaluate import EvalConfig, run_eval
from rwft.rollout import served_adapters
from rwft.rollout.served_adapters import served_policy

ENV_ARGS = ["source=requests", "difficulty=3", "unambiguous=0"]


def adapter(path: Path, weights: bytes) -> Path:
    """A PEFT adapter directory as the server sees it (its weights are opaque bytes to rwft)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def guess(body: dict) -> str:
    return ["Done: cat.", "Done: dog.", "Which one do you mean?"][body["seed"] % 3]


def loads(server: Server) -> list[dict]:
    return [b for p, b in server.posts if p.endswith("/load_lora_adapter")]


def lora_calls(server: Server) -> list[tuple[str, str]]:
    """The server's load / unload calls in order, as (load or unload, adapter name)."""
    return [(p.rsplit("/", 1)[1].split("_")[0], b["lora_name"]) for p, b in server.posts if p.endswith("_adapter")]


@pytest.fixture
def server():
    s = Server(guess, models=("pi0",))
    yield s
    s.close()


def eval_config(policy: str, out: Path, url: str, **kw) -> EvalConfig:
    return EvalConfig(policy=policy, env="clarify", env_args=ENV_ARGS, output=str(out), episodes=4, seeds=[7],
                      generator_url=url, served_model="pi0", similarity=False, quiet=True, **kw)


def test_eval_of_an_adapter_loads_it_by_digest_then_generates_with_that_name(server, tmp_path):
    run = adapter(tmp_path / "run", b"weights-a")
    result = run_eval(eval_config(str(run), tmp_path / "eval", server.url))
    name = "rwft-adapter-" + hashlib.sha256(b"weights-a").hexdigest()[:8]
    assert loads(server) == [{"lora_name": name, "lora_path": str(run.resolve())}]
    first_chat = next(i for i, (p, _) in enumerate(server.posts) if p.endswith("/chat/completions"))
    first_load = next(i for i, (p, _) in enumerate(server.posts) if p.endswith("/load_lora_adapter"))
    assert first_load < first_chat
    assert len(server.chats()) >= 4 and {b["model"] for b in server.chats()} == {name}
    assert result["episodes"] == 4
    episodes = [json.loads(x) for x in (tmp_path / "eval" / "episodes-s7.jsonl").read_text().splitlines()]
    assert {e["metadata"]["policy"] for e in episodes} == {f"{name}@{server.url}"}


def test_the_name_follows_the_weights_not_the_directory(server, tmp_path):
    a = served_policy(str(adapter(tmp_path / "a", b"one")), server.url, "pi0")
    same = served_policy(str(adapter(tmp_path / "copy-of-a", b"one")), server.url, "pi0")
    other = served_policy(str(adapter(tmp_path / "b", b"two")), server.url, "pi0")
    assert a.model == same.model != other.model
    # a name not listed is dropped first (a server that does not list adapters; vLLM refuses a name twice); the same
    # weights, listed already, are played without loading them again
    assert lora_calls(server) == [("unload", a.model), ("load", a.model),
                                  ("unload", other.model), ("load", other.model)]
    assert (a.loaded_adapter, same.loaded_adapter, other.loaded_adapter) == (a.model, None, other.model)


def test_an_evaluation_unloads_the_adapter_it_loaded_once_its_episodes_are_played(server, tmp_path):
    run = adapter(tmp_path / "run", b"weights-a")
    result = run_eval(eval_config(str(run), tmp_path / "eval", server.url))
    name = served_adapters.adapter_name(run)
    assert lora_calls(server) == [("unload", name), ("load", name), ("unload", name)]
    last_chat = max(i for i, (p, _) in enumerate(server.posts) if p.endswith("/chat/completions"))
    assert server.posts[-1][0].endswith("/unload_lora_adapter") and len(server.posts) - 1 > last_chat
    assert result["episodes"] == 4 and server.models == ["pi0"]


def test_a_collection_unloads_the_adapter_it_loaded(server, tmp_path):
    run = adapter(tmp_path / "run", b"weights-a")
    assert main(["collect", "--env", "clarify", "--env-args", *ENV_ARGS, "--policy", str(run), "--contexts", "2",
                 "--samples-per-context", "1", "--out", str(tmp_path / "logs.jsonl"), "--generator-url", server.url,
                 "--served-model", "pi0", "--progress", "false"]) == 0
    name = served_adapters.adapter_name(run)
    assert lora_calls(server) == [("unload", name), ("load", name), ("unload", name)] and server.models == ["pi0"]


def test_an_adapter_the_server_already_lists_is_played_and_left_loaded(tmp_path):
    """Another process evaluating the same weights loaded it: this one neither reloads nor unloads it."""
    run = adapter(tmp_path / "run", b"weights-a")
    name = served_adapters.adapter_name(run)
    server = Server(guess, models=("pi0", name))
    try:
        result = run_eval(eval_config(str(run), tmp_path / "eval", server.url))
    finally:
        server.close()
    assert lora_calls(server) == [] and server.models == ["pi0", name]
    assert result["episodes"] == 4 and {b["model"] for b in server.chats()} == {name}


@pytest.mark.parametrize("verb", ["eval", "collect"])
def test_a_run_that_fails_still_unloads_its_adapter(verb, tmp_path):
    """The server refuses every chat request (HTTP 400): the run fails with that error, and the adapter it loaded is
    unloaded all the same."""
    server = Server(lambda body: (400, {"message": "prompt too long"}), models=("pi0",))
    run = adapter(tmp_path / "run", b"weights-a")
    try:
        with pytest.raises(RwftError, match="prompt too long"):
            if verb == "eval":
                run_eval(eval_config(str(run), tmp_path / "eval", server.url))
            else:
                from rwft.rollout.collect import CollectConfig, run_collect

                run_collect(CollectConfig(env="clarify", env_args=ENV_ARGS, policy=str(run), contexts=2,
                                          out=str(tmp_path / "logs.jsonl"), generator_url=server.url,
                                          served_model="pi0", quiet=True))
    finally:
        server.close()
    name = served_adapters.adapter_name(run)
    assert lora_calls(server) == [("unload", name), ("load", name), ("unload", name)] and server.models == ["pi0"]


def test_an_unload_that_fails_is_one_warning_and_the_evaluation_stands(server, tmp_path, caplog):
    server.unload_error = (500, {"message": "engine busy"})
    run = adapter(tmp_path / "run", b"weights-a")
    with caplog.at_level(logging.WARNING, logger="rwft"):
        result = run_eval(eval_config(str(run), tmp_path / "eval", server.url))
    assert result["episodes"] == 4 and (tmp_path / "eval" / "metrics.json").exists()
    name = served_adapters.adapter_name(run)
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert name in warning.getMessage() and "HTTP 500 engine busy" in warning.getMessage()


@pytest.mark.parametrize("through", ["generator-url", "http-policy"])
def test_the_request_timeout_bounds_each_request_and_its_error_names_the_option(through, tmp_path):
    """--request-timeout 0.5: a server that answers in 2 s fails the evaluation after 0.5 s with an error saying to
    raise --request-timeout; one that answers at once evaluates. Through --generator-url and an http(s):// --policy."""
    gate = threading.Event()
    slow = Server(lambda body: (gate.wait(2.0), guess(body))[1], models=("pi0",))
    fast = Server(guess, models=("pi0",))

    def config(url: str, out: Path) -> EvalConfig:
        if through == "generator-url":
            return eval_config("pi0", out, url, request_timeout=0.5)
        return EvalConfig(policy=url, api_model="pi0", env="clarify", env_args=ENV_ARGS, output=str(out), episodes=4,
                          seeds=[7], similarity=False, quiet=True, request_timeout=0.5)

    t0 = time.monotonic()
    try:
        with pytest.raises(RwftError, match=r"no answer within 0.5 s .*a slow server may need a longer "
                                            r"--request-timeout$"):
            run_eval(config(slow.url, tmp_path / "slow"))
        failed_after = time.monotonic() - t0
        result = run_eval(config(fast.url, tmp_path / "fast"))
    finally:
        gate.set()
        slow.close()
        fast.close()
    assert failed_after < 1.9 and result["episodes"] == 4


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_every_served_verb_takes_request_timeout_and_refuses_one_not_positive(bad, tmp_path, capsys):
    verbs = {"eval": ["--policy", "scripted", "--env", "clarify", "--output", str(tmp_path / "eval")],
             "collect": ["--env", "clarify", "--out", str(tmp_path / "logs.jsonl")],
             "compare": ["--output", str(tmp_path / "cmp")],
             "iterate": ["--output", str(tmp_path / "it"), "--policy", "tiny"]}
    for verb, args in verbs.items():
        assert parse_config(verb, [*args, "--request-timeout", "300"]).request_timeout == 300.0
        assert main([verb, *args, "--request-timeout", bad]) == 2, verb
        assert f"--request-timeout {float(bad)}: expected a positive number of seconds" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_a_full_model_directory_with_a_url_is_refused_before_anything_is_written(server, tmp_path):
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "eval"
    with pytest.raises(RwftError, match=r"full model directory .*--generator-url .*cannot load full weights"):
        run_eval(eval_config(str(model), out, server.url))
    assert not out.exists() and loads(server) == [] and server.chats() == []


def test_the_base_plays_as_the_served_name_without_loading(server, tmp_path):
    run_eval(eval_config("org/base-model", tmp_path / "eval", server.url))
    assert loads(server) == [] and {b["model"] for b in server.chats()} == {"pi0"}


def test_a_base_the_server_does_not_serve_is_refused_and_its_own_directory_is_the_base(monkeypatch, tmp_path):
    base, other = tmp_path / "base", tmp_path / "other"
    for d in (base, other):
        d.mkdir()
        (d / "config.json").write_text("{}")
    monkeypatch.setattr(served_adapters, "check_server", lambda *a: {"id": "pi0", "root": str(base)})
    with pytest.raises(RwftError, match=f"serves {base} as --served-model pi0, not org/base"):
        served_policy("org/base", "http://127.0.0.1:9/v1", "pi0")
    with pytest.raises(RwftError, match="a full model directory"):
        served_policy(str(other), "http://127.0.0.1:9/v1", "pi0")
    assert served_policy(str(base / "."), "http://127.0.0.1:9/v1", "pi0").model == "pi0"  # the same path
    assert served_policy("pi0", "http://127.0.0.1:9/v1", "pi0").model == "pi0"


def test_the_server_is_named_once_and_needs_its_base_name(server):
    with pytest.raises(RwftError, match="needs --served-model"):
        served_policy("org/base", server.url, "")
    with pytest.raises(RwftError, match="give the server once"):
        served_policy(server.url, server.url, "pi0")
    with pytest.raises(RwftError, match="not --served-model 'other'"):
        served_policy("org/base", server.url, "other")


def test_collect_through_the_server_resumes_through_a_restarted_one(server, tmp_path, capsys):
    """``rwft collect --policy ADAPTER --generator-url``: a kill leaves part of the file; the rerun through the server
    on another port (the URL is not among the file's arguments) finishes it with the same episodes."""
    run = adapter(tmp_path / "run", b"weights")
    out = tmp_path / "logs.jsonl"
    args = ["collect", "--env", "clarify", "--env-args", *ENV_ARGS, "--policy", str(run), "--contexts", "3",
            "--samples-per-context", "2", "--out", str(out), "--served-model", "pi0", "--progress", "false"]
    assert main([*args, "--generator-url", server.url]) == 0
    full = out.read_text().splitlines()
    assert len(full) == 6 and {b["model"] for b in server.chats()} == {loads(server)[0]["lora_name"]}
    out.write_text("\n".join(full[:4]) + "\n")
    restarted = Server(guess, models=("pi0",))
    try:
        assert main([*args, "--generator-url", restarted.url]) == 0
    finally:
        restarted.close()
    assert len(loads(restarted)) == 1
    again = out.read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "metadata"} for x in again]
    assert len(again) == 6 and strip == [{k: v for k, v in json.loads(x).items() if k != "metadata"} for x in full]
    assert main([*args[:-4], "--out", str(tmp_path / "x.jsonl"), "--generator-url", server.url]) == 2
    assert "needs --served-model" in capsys.readouterr().err


def test_compare_needs_lora_to_go_through_a_server(tmp_path):
    from rwft.recipes.compare import CompareConfig

    with pytest.raises(RwftError, match=r"--generator-url http://h/v1: needs --lora true"):
        CompareConfig(output=str(tmp_path), generator_url="http://h/v1", served_model="pi0")
    with pytest.raises(RwftError, match="no qsft"):
        CompareConfig(output=str(tmp_path), generator_url="http://h/v1", served_model="pi0", lora=True,
                      methods=["base", "qsft"])


def test_compare_collects_pi0_as_the_base_and_evaluates_each_unmerged_adapter(server, tmp_path):
    """pi_0's logs and the base cell play as the served base name; the sft cell's adapter (saved unmerged) is
    loaded by its digest name and its evaluation generates with it; perplexity under pi_0 stays in-process."""
    from rwft.recipes.compare import CompareConfig, run_compare

    out = tmp_path / "cmp"
    run_compare(CompareConfig(output=str(out), env="clarify", env_args=ENV_ARGS, model="tiny",
                              methods=["base", "sft"], seeds=[0], contexts=4, samples_per_context=2,
                              temperatures=[1.0], epochs=1, batch_size=4, max_new_tokens=8, eval_episodes=3,
                              lora=True, lora_r=4, generator_url=server.url, served_model="pi0"))
    model = out / "cells" / "sft-s0" / "model"
    assert (model / "adapter_config.json").exists() and not (model / "config.json").exists()
    (load,) = loads(server)
    assert load == {"lora_name": served_adapters.adapter_name(model), "lora_path": str(model.resolve())}
    names = [b["model"] for b in server.chats()]
    first_sft = names.index(load["lora_name"])
    assert set(names[:first_sft]) == {"pi0"} and set(names[first_sft:]) == {load["lora_name"]}
    logs = [json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()]
    assert len(logs) == 8 and {r["metadata"]["policy"] for r in logs} == {f"pi0@{server.url}"}
    for cell in ("base-s0", "sft-s0"):
        result = json.loads((out / "cells" / cell / "result.json").read_text())
        assert result["metrics"]["perplexity"] > 1.0
