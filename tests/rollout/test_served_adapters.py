"""rwft eval / collect / compare through a served generator: a LoRA adapter directory is loaded into the server
under a name from its weights' digest and played by that name; the base plays as the served name; a full model
directory is refused. The server is test_http_policy's stub (vLLM's model list and LoRA endpoints)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_http_policy import Server

from rwft.cli import main
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
    assert [b["lora_name"] for b in loads(server)] == [a.model, a.model, other.model]
    unloads = [b["lora_name"] for p, b in server.posts if p.endswith("/unload_lora_adapter")]
    assert unloads == [a.model, a.model, other.model]  # a name loaded before is dropped first (vLLM refuses twice)


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
