"""``rwft label --per-turn``: redistributed turn rewards, read back by the per-turn objective; resumable."""

from __future__ import annotations

import json
import math

import pytest

from conftest import write_jsonl
from rwft.data.io import load_conversations
from rwft.data.weighting import turn_weights
from rwft.errors import RwftError
from rwft.rollout.collect import CollectConfig, run_collect
from rwft.rollout.envs import make_env
from rwft.rollout.label import LabelConfig, run_label


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    path = tmp_path_factory.mktemp("20q") / "games.jsonl"
    run_collect(CollectConfig(env="twenty-questions", out=str(path), policy="scripted:mixed", contexts=5,
                              samples_per_context=2, env_args=["horizon=8"], progress=False))
    return path


def test_env_credit_sums_to_the_reward_and_gives_the_per_turn_weights(tmp_path, games):
    out = tmp_path / "credit.jsonl"
    run_label(LabelConfig(data=str(games), out=str(out), judge="env", per_turn=True, batch_size=3, progress=False))
    env = make_env("twenty-questions", ["horizon=8"])
    recs, originals = read(out), read(games)
    assert [r["reward"] for r in recs] == [r["reward"] for r in originals]  # the conversation's reward is kept
    convs = load_conversations(out)
    for gamma in (1.0, 0.5):
        weights = turn_weights(convs, "per-turn", gamma=gamma)
        for rec, w in zip(recs, weights, strict=True):
            agent = [i for i, m in enumerate(rec["messages"]) if m["role"] == "assistant"]
            assert all("reward" not in m for m in rec["messages"] if m["role"] != "assistant")
            credit = [rec["messages"][i]["reward"] for i in agent]
            assert math.fsum(credit) == pytest.approx(rec["reward"])
            prefix = [env.prefix_score(rec["messages"][: i + 1], rec["metadata"]) for i in agent[:-1]]
            assert rec["metadata"]["per_turn"]["prefix_scores"] == pytest.approx([*prefix, rec["reward"]])
            before = [0.0, *prefix]  # R(<=t-1)
            expected = [sum(gamma ** (k - t) * (([*prefix, rec["reward"]][k]) - before[k])
                            for k in range(t, len(agent))) for t in range(len(agent))]
            assert w == pytest.approx(expected)
            if gamma == 1.0:
                assert w == pytest.approx([rec["reward"] - b for b in before])
    assert any(len(r["metadata"]["per_turn"]["prefix_scores"]) > 2 for r in recs)
    # the collected -1 per turn is replaced: credits differ from it where progress was made
    assert any(m.get("reward") not in (None, -1.0) for r in recs for m in r["messages"])


def test_env_credit_reads_the_configured_agent_role(tmp_path, games):
    """The same games with the agent's messages under role 'agent' and --agent-role agent: the same prefix
    scores and credits (twenty-questions counts the prefix's agent turns by the configured role)."""
    renamed = [dict(r, messages=[dict(m, role="agent") if m["role"] == "assistant" else m for m in r["messages"]])
               for r in read(games)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_label(LabelConfig(data=str(games), out=str(a), judge="env", per_turn=True, progress=False))
    run_label(LabelConfig(data=str(write_jsonl(tmp_path / "agent.jsonl", renamed)), out=str(b), judge="env",
                          per_turn=True, agent_role="agent", progress=False))
    for x, y in zip(read(a), read(b), strict=True):
        assert y["metadata"]["per_turn"]["prefix_scores"] == pytest.approx(x["metadata"]["per_turn"]["prefix_scores"])
        assert [m.get("reward") for m in y["messages"]] == [m.get("reward") for m in x["messages"]]


def test_exact_prefix_credit_by_hand(tmp_path):
    conv = [{"role": "user", "content": "Pick one."}]
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "messages": conv + [{"role": "assistant", "content": "The answer is B."},
                                        {"role": "user", "content": "Sure?", "reward": 5.0},
                                        {"role": "assistant", "content": "The answer is A."},
                                        {"role": "user", "content": "Final?"},
                                        {"role": "assistant", "content": "The answer is A."}],
         "metadata": {"gold": "A"}},
        {"id": "b", "messages": conv + [{"role": "assistant", "content": "The answer is A."},
                                        {"role": "user", "content": "Sure?"},
                                        {"role": "assistant", "content": "The answer is C."}],
         "metadata": {"gold": "A"}},
    ])
    out = tmp_path / "o.jsonl"
    run_label(LabelConfig(data=str(data), out=str(out), per_turn=True, progress=False))
    a, b = read(out)
    credit = [[m["reward"] for m in r["messages"] if m["role"] == "assistant"] for r in (a, b)]
    assert credit == [[0.0, 1.0, 0.0], [1.0, -1.0]]
    assert (a["reward"], b["reward"]) == (1.0, 0.0)
    assert "reward" not in a["messages"][2]  # the old observation reward would have broken the sum
    assert a["metadata"]["per_turn"]["method"] == "redistribution"


def test_rubric_prefixes_and_resume_equals_uninterrupted(tmp_path, games):
    """The stub grades a transcript by its number of agent turns (so each prefix gets its own score); a
    labelling run killed mid-file and rerun writes the same bytes as one run through."""
    from openai_stub import StubServer

    def reply(msgs, body):
        k = min(10, msgs[-1]["content"].count("[assistant]"))
        return "\n".join(f"{d}: {k}" for d in ("Overall", "Accuracy", "Reasoning", "Comprehensiveness",
                                                "Pedagogical value", "Confidence calibration"))

    server = StubServer(reply)
    try:
        cfg = dict(data=str(games), judge="rubric", judge_model=server.url, api_model="j", per_turn=True,
                   batch_size=3, progress=False)
        ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
        run_label(LabelConfig(out=str(ref), **cfg))
        run_label(LabelConfig(out=str(out), **cfg))
        lines = out.read_bytes().splitlines(keepends=True)
        out.write_bytes(b"".join(lines[:4]) + lines[4][:30])  # killed while writing record 5 (batch 2)
        n = len(server.requests)
        run_label(LabelConfig(out=str(out), **cfg))
        assert out.read_bytes() == ref.read_bytes()
        assert len(server.requests) > n  # the torn batch was judged again
    finally:
        server.close()
    for rec in read(ref):
        turns = sum(m["role"] == "assistant" for m in rec["messages"])
        credit = [m["reward"] for m in rec["messages"] if m["role"] == "assistant"]
        assert rec["reward"] == pytest.approx(min(10, turns) / 10)
        assert credit == pytest.approx([0.1 if t < 10 else 0.0 for t in range(turns)])
    with pytest.raises(RwftError, match="per_turn differ"):
        run_label(LabelConfig(data=str(games), out=str(ref), judge="rubric", judge_model="x", progress=False))


def test_env_that_cannot_score_prefixes_is_refused_before_writing(tmp_path):
    logs = tmp_path / "mcqa.jsonl"
    run_collect(CollectConfig(env="mcqa", out=str(logs), policy="scripted", contexts=1, samples_per_context=1,
                              progress=False))
    rec = read(logs)[0]
    rec["messages"] += [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    data = write_jsonl(tmp_path / "two.jsonl", [rec])
    out = tmp_path / "o.jsonl"
    with pytest.raises(RwftError, match="environment 'mcqa' cannot score a prefix"):
        run_label(LabelConfig(data=str(data), out=str(out), judge="env", per_turn=True, progress=False))
    assert not out.exists() and not (tmp_path / "o.jsonl.args.json").exists()
    del rec["metadata"]["env"]
    write_jsonl(data, [rec])
    with pytest.raises(RwftError, match="needs metadata.env"):
        run_label(LabelConfig(data=str(data), out=str(out), judge="env", per_turn=True, progress=False))


def test_a_prefix_the_judge_cannot_score_makes_the_reward_null(tmp_path, games):
    from openai_stub import StubServer

    def reply(msgs, body):  # fails on every transcript with exactly two agent turns
        k = msgs[-1]["content"].count("[assistant]")
        return "no idea" if k == 2 else "\n".join(f"{d}: 5" for d in (
            "Overall", "Accuracy", "Reasoning", "Comprehensiveness", "Pedagogical value", "Confidence calibration"))

    server = StubServer(reply)
    try:
        out = tmp_path / "o.jsonl"
        summary = run_label(LabelConfig(data=str(games), out=str(out), judge="rubric", judge_model=server.url,
                                        api_model="j", judge_retries=0, per_turn=True, progress=False))
    finally:
        server.close()
    recs, originals = read(out), read(games)
    for rec, orig in zip(recs, originals, strict=True):
        turns = sum(m["role"] == "assistant" for m in rec["messages"])
        if turns > 2:
            assert rec["reward"] is None and "prefix up to agent turn 2" in rec["metadata"]["judge_failure"]
            assert rec["messages"] == orig["messages"] and "per_turn" not in rec["metadata"]
        elif turns == 1:
            assert rec["reward"] == 0.5 and rec["messages"][1]["reward"] == 0.5
    assert summary["failures"] == sum(r["reward"] is None for r in recs) > 0
