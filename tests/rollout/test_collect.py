import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from rwft.errors import RwftError
from rwft.rollout.collect import CollectConfig, run_collect


def collect(tmp_path, name="out.jsonl", **kw):
    args = dict(env="mcqa", out=str(tmp_path / name), policy="scripted:mixed", contexts=6, samples_per_context=3,
                progress=False)
    args.update(kw)
    run_collect(CollectConfig(**args))
    return [json.loads(line) for line in open(args["out"], encoding="utf-8")]


def test_records_layout_and_metadata(tmp_path):
    recs = collect(tmp_path, temperatures=[0.5, 1.0])
    assert len(recs) == 18
    assert [r["id"] for r in recs[:3]] == [f"{recs[0]['context_id']}/{j}" for j in range(3)]
    assert len({r["context_id"] for r in recs}) == 6
    for k, r in enumerate(recs):
        md = r["metadata"]
        assert md["temperature"] == [0.5, 1.0][md["sample"] % 2] and md["sample"] == k % 3
        assert md["policy"] == "scripted:mixed" and md["env"] == "mcqa" and md["judge"] == "env"
        assert r["reward"] == md["scores"]["env"] == (1.0 if md["correct"] else 0.0)
        assert md["gold"] in "ABCDE" and md["turns"] == 3 and md["judge_failure"] is None
    rewards = {r["reward"] for r in recs}
    assert rewards == {0.0, 1.0}  # mixed skill spreads the reward


def test_same_args_same_episodes_other_seed_differs(tmp_path):
    a = collect(tmp_path, "a.jsonl", seed=1)
    b = collect(tmp_path, "b.jsonl", seed=1, batch_size=5)  # batching does not change a scripted episode
    c = collect(tmp_path, "c.jsonl", seed=2)
    assert a == b
    assert a != c


def test_resume_refuses_other_arguments(tmp_path):
    collect(tmp_path, seed=1)
    with pytest.raises(RwftError, match="seed"):
        collect(tmp_path, seed=2)
    (tmp_path / "foreign.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(RwftError, match="not written by"):
        collect(tmp_path, "foreign.jsonl")
    assert len(collect(tmp_path, seed=2, overwrite=True)) == 18


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(contexts=0), "--contexts"),
        (dict(temperatures=[]), "--temperatures"),
        (dict(temperatures=[-1.0]), "--temperatures"),
        (dict(env="nope"), "unknown environment"),
        (dict(policy="scripted:2"), "skill"),
        (dict(judge="bleu"), "unknown judge"),
        (dict(judge="rubric"), "judge-model"),
        (dict(env_args=["mode"]), "key=value"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(RwftError, match=match):
        collect(tmp_path, **kw)


@pytest.mark.parametrize("kw", [dict(policy="scripted:2"), dict(policy=None), dict(judge="rubric", judge_model=None)])
def test_inputs_load_before_the_output_is_touched(tmp_path, kw):
    """A policy or judge model that fails to load leaves no directory, and --overwrite deletes nothing."""
    bad = str(tmp_path / "no" / "such-model")
    kw = {k: bad if v is None else v for k, v in kw.items()}
    with pytest.raises(RwftError):
        collect(tmp_path, "sub/dir/out.jsonl", **kw)
    assert not (tmp_path / "sub").exists()
    first = collect(tmp_path, "keep.jsonl")
    with pytest.raises(RwftError):
        collect(tmp_path, "keep.jsonl", overwrite=True, **kw)
    assert [json.loads(x) for x in open(tmp_path / "keep.jsonl")] == first
    assert (tmp_path / "keep.jsonl.args.json").exists()


def test_quiet_prints_nothing(tmp_path, capfd):
    collect(tmp_path, progress=True, quiet=True)
    collect(tmp_path, progress=True, quiet=True)  # the rerun's "already holds" message too
    assert capfd.readouterr() == ("", "")
    collect(tmp_path, "loud.jsonl", progress=True)
    assert "collect mcqa" in capfd.readouterr().err  # a standalone collect keeps its bar


def test_rerun_of_complete_file_is_a_no_op(tmp_path):
    first = collect(tmp_path)
    mtime = os.path.getmtime(tmp_path / "out.jsonl")
    assert collect(tmp_path) == first
    assert os.path.getmtime(tmp_path / "out.jsonl") == mtime


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_file(tmp_path):
    args = ["collect", "--env", "mcqa", "--policy", "scripted:mixed", "--contexts", "400",
            "--samples-per-context", "3", "--batch-size", "7", "--seed", "5", "--no-progress"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = tmp_path / "ref.jsonl"
    subprocess.run([sys.executable, "-m", "rwft.cli", *args, "--out", str(ref)], check=True, env=env)
    out = tmp_path / "killed.jsonl"
    rng = random.Random(0)
    partial_kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, "-m", "rwft.cli", *args, "--out", str(out)], env=env)
        if attempt < 8:
            # wait until the file grows, then kill after a random extra delay (mid-batch or mid-write)
            deadline = time.time() + 20
            start_size = out.stat().st_size if out.exists() else 0
            while time.time() < deadline and (not out.exists() or out.stat().st_size == start_size):
                if proc.poll() is not None:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            lines = out.read_bytes().count(b"\n") if out.exists() else 0
            if proc.returncode == -signal.SIGKILL and 0 < lines < 1200:
                partial_kills += 1
        else:
            assert proc.wait(timeout=60) == 0
            break
    assert partial_kills >= 4, "the kills did not land mid-run"
    assert out.read_bytes() == ref.read_bytes()
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 1200 and len({r["id"] for r in recs}) == 1200


def test_torn_last_line_is_cut_and_rewritten(tmp_path):
    ref = collect(tmp_path, "ref.jsonl", batch_size=4)
    path = tmp_path / "torn.jsonl"
    collect(tmp_path, "torn.jsonl", batch_size=4)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:9]) + lines[9][:20])  # 9 whole lines and a torn tenth
    assert collect(tmp_path, "torn.jsonl", batch_size=4) == ref


def test_hf_policy_batched_equals_one_at_a_time(tmp_path):
    kw = dict(policy="tiny", contexts=2, samples_per_context=2, temperatures=[0.0, 1.0], max_new_tokens=6,
              env_args=["source=arithmetic"])
    batched = collect(tmp_path, "b.jsonl", batch_size=4, **kw)
    single = collect(tmp_path, "s.jsonl", batch_size=1, **kw)
    assert [r["messages"] for r in batched] == [r["messages"] for r in single]
    texts = [m["content"] for r in batched for m in r["messages"] if m["role"] == "assistant"]
    assert len(set(texts)) > 1
