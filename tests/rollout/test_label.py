import json

import pytest

from rwft.errors import RwftError
from rwft.rollout.collect import CollectConfig, run_collect
from rwft.rollout.label import LabelConfig, run_label

GOOD = "Overall: 6\nAccuracy: 8\nReasoning: 5\nComprehensiveness: 4\nPedagogical value: 3\nConfidence calibration: 7"


@pytest.fixture
def logs(tmp_path):
    path = tmp_path / "logs.jsonl"
    run_collect(CollectConfig(env="mcqa", out=str(path), policy="scripted:mixed", contexts=5, progress=False))
    # strip the rewards: a user's own unlabeled logs
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for r in recs:
        del r["reward"]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, recs


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_exact_labels_match_collected_correctness(tmp_path, logs):
    path, recs = logs
    out = tmp_path / "labeled.jsonl"
    summary = run_label(LabelConfig(data=str(path), out=str(out), progress=False, batch_size=4))
    got = read(out)
    assert summary["failures"] == 0 and len(got) == len(recs)
    assert [r["reward"] for r in got] == [1.0 if r["metadata"]["correct"] else 0.0 for r in recs]
    assert [r["messages"] for r in got] == [r["messages"] for r in recs]
    assert all(r["metadata"]["judge"] == "exact" for r in got)


def test_label_resumes_after_a_torn_write(tmp_path, logs):
    path, _ = logs
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    run_label(LabelConfig(data=str(path), out=str(ref), progress=False, batch_size=4))
    run_label(LabelConfig(data=str(path), out=str(out), progress=False, batch_size=4))
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:6]) + lines[6][:11])
    run_label(LabelConfig(data=str(path), out=str(out), progress=False, batch_size=4))
    assert out.read_bytes() == ref.read_bytes()
    with pytest.raises(RwftError, match="judge differ"):
        run_label(LabelConfig(data=str(path), out=str(out), judge="env", progress=False, batch_size=4))


def test_unparseable_rubric_gives_null_reward_then_only_missing_retries(tmp_path, logs):
    from openai_stub import StubServer

    path, recs = logs
    replies = {"n": 0, "fail": True}

    def reply(msgs, body):
        replies["n"] += 1
        return "I refuse to grade." if replies["fail"] and replies["n"] % 4 == 1 else GOOD

    server = StubServer(reply)
    try:
        out = tmp_path / "rubric.jsonl"
        run_label(LabelConfig(data=str(path), out=str(out), judge="rubric", judge_model=server.url, api_model="j",
                              judge_retries=0, batch_size=1, progress=False))
        got = read(out)
        failed = [r for r in got if r["reward"] is None]
        assert failed and all("unparseable" in r["metadata"]["judge_failure"] for r in failed)
        assert all(r["reward"] == 0.6 and r["metadata"]["scores"]["accuracy"] == 0.8 for r in got if r not in failed)
        n_before = len(server.requests)
        out2 = tmp_path / "retried.jsonl"
        replies["fail"] = False  # every reply good from now on
        run_label(LabelConfig(data=str(out), out=str(out2), judge="rubric", judge_model=server.url, api_model="j",
                              only_missing=True, progress=False))
        assert len(server.requests) - n_before == len(failed)
        assert all(r["reward"] == 0.6 for r in read(out2))
    finally:
        server.close()


def test_label_errors(tmp_path, logs):
    path, _ = logs
    with pytest.raises(RwftError, match="judge-model"):
        run_label(LabelConfig(data=str(path), out=str(tmp_path / "o.jsonl"), judge="rubric"))
    with pytest.raises(RwftError, match="judge-retries"):
        run_label(LabelConfig(data=str(path), out=str(tmp_path / "o.jsonl"), judge_retries=-1))
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(RwftError, match="must differ"):
        run_label(LabelConfig(data=str(path), out=str(path)))
    with pytest.raises(RwftError, match="no such file"):
        run_label(LabelConfig(data=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "o.jsonl")))
    bad = tmp_path / "nogold.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                   + "\n")
    with pytest.raises(RwftError, match="metadata.gold"):
        run_label(LabelConfig(data=str(bad), out=str(tmp_path / "o2.jsonl"), progress=False))
