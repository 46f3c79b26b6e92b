import json

import pytest

from rwft.eval.evaluate import EvalConfig, episode_metrics, outcome_values, run_eval


def rec(reward, correct, text, scores=None):
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}],
            "reward": reward, "metadata": {"correct": correct, "turns": 1, "seed": 5, "scores": scores or {}}}


def test_outcome_values_and_metrics_by_hand():
    records = [rec(1.0, True, "the answer is a", {"overall": 0.8}), rec(0.0, False, "the answer is b"),
               rec(0.5, False, "no idea")]
    v = outcome_values(records)
    assert v["reward"] == [1.0, 0.0, 0.5] and v["correct"] == [1.0, 0.0, 0.0]
    assert "seed" not in v  # bookkeeping fields are not metrics
    assert v["judge_overall"] == [0.8]
    m = episode_metrics(records)
    assert m["reward"]["mean"] == pytest.approx(0.5) and m["reward"]["n"] == 3
    assert m["correct"]["mean"] == pytest.approx(1 / 3)
    # unigrams: the answer is a the answer is b no idea -> 7 unique of 10
    assert m["distinct_1"] == pytest.approx(7 / 10)
    assert m["length"]["mean"] == pytest.approx((4 + 4 + 2) / 3)


def test_eval_scripted_policies_on_mcqa(tmp_path):
    good = run_eval(EvalConfig(policy="scripted:1", env="mcqa", output=str(tmp_path / "good"), episodes=6,
                               seeds=[1, 2], env_args=["source=arithmetic"]))
    bad = run_eval(EvalConfig(policy="scripted:0", env="mcqa", output=str(tmp_path / "bad"), episodes=6,
                              seeds=[1, 2], env_args=["source=arithmetic"]))
    assert good["episodes"] == 12 and set(good["per_seed"]) == {"1", "2"}
    assert good["metrics"]["correct"]["mean"] == 1.0 and good["metrics"]["reward"]["mean"] == 1.0
    assert bad["metrics"]["reward"]["mean"] < good["metrics"]["reward"]["mean"]
    saved = json.loads((tmp_path / "good" / "metrics.json").read_text())
    assert saved["metrics"]["reward"]["mean"] == 1.0
    assert (tmp_path / "good" / "episodes-s1.jsonl").read_text().count("\n") == 6
    assert len((tmp_path / "good" / "samples.jsonl").read_text().splitlines()) == 6  # 3 per seed


@pytest.mark.parametrize("kw", [dict(policy="/no/such/model-dir"), dict(ppl_model="/no/such/model-dir"),
                                dict(judge="rubric", judge_model="/no/such/model-dir"), dict(env_args=["nope=1"])])
def test_bad_inputs_leave_no_output_directory(tmp_path, kw):
    from rwft.errors import RwftError

    cfg = dict(policy="scripted:1", env="mcqa", output=str(tmp_path / "out"), episodes=2, seeds=[1])
    with pytest.raises(RwftError):
        run_eval(EvalConfig(**{**cfg, **kw}))
    assert not (tmp_path / "out").exists()


def test_one_progress_bar_and_quiet_prints_nothing(tmp_path, capfd):
    cfg = dict(policy="scripted:1", env="mcqa", episodes=3, seeds=[1, 2], env_args=["source=arithmetic"])
    run_eval(EvalConfig(output=str(tmp_path / "a"), **cfg))
    out, err = capfd.readouterr()
    assert out.startswith("rwft eval: scripted:1 on mcqa") and len(out.splitlines()) == 1
    assert "eval mcqa" in err and "collect" not in err and "6/6" in err  # one bar over both seeds
    run_eval(EvalConfig(output=str(tmp_path / "b"), quiet=True, **cfg))
    assert capfd.readouterr() == ("", "")


def test_eval_hands_the_judge_options_to_the_endpoints(tmp_path):
    """--api-model reaches the policy's and the judge's endpoint, --judge-retries the rubric judge (1 + retries
    requests for a reply that never parses, then reward null with the reason)."""
    from openai_stub import StubServer

    def reply(msgs, body):
        return "I refuse to grade." if "You are grading" in msgs[-1]["content"] else "The answer is A."

    server = StubServer(reply)
    try:
        run_eval(EvalConfig(policy=server.url, env="mcqa", output=str(tmp_path / "e"), episodes=2, seeds=[1],
                            judge="rubric", judge_model=server.url, api_model="m", judge_retries=1, quiet=True))
    finally:
        server.close()
    assert {body["model"] for _, body in server.requests} == {"m"}
    judged = [body for _, body in server.requests if "You are grading" in body["messages"][-1]["content"]]
    assert len(judged) == 2 * 2
    recs = [json.loads(x) for x in (tmp_path / "e" / "episodes-s1.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["reward"] is None and "after 2 tries" in r["metadata"]["judge_failure"]
                                  for r in recs)


def test_judge_options_defined_once_with_the_verbs_defaults():
    """collect, label and eval take the judge options from one mixin, each documented (the CLI help); label
    keeps its own default judge."""
    import dataclasses

    from rwft.cli import field_docs
    from rwft.rollout.collect import CollectConfig
    from rwft.rollout.judges import JudgeOptions
    from rwft.rollout.label import LabelConfig

    names = [f.name for f in dataclasses.fields(JudgeOptions)]
    assert names == ["judge", "judge_model", "judge_retries", "api_model", "api_key_env"]
    defaults = {}
    for cls in (CollectConfig, LabelConfig, EvalConfig):
        assert issubclass(cls, JudgeOptions) and set(names) <= set(field_docs(cls))
        defaults[cls.__name__] = {f.name: f.default for f in dataclasses.fields(cls) if f.name in names}
    assert defaults["CollectConfig"] == defaults["EvalConfig"] == {
        "judge": "env", "judge_model": "", "judge_retries": 2, "api_model": "", "api_key_env": "OPENAI_API_KEY"}
    assert defaults["LabelConfig"] == {**defaults["CollectConfig"], "judge": "exact"}


@pytest.mark.parametrize("kw,match", [(dict(judge_retries=-1), "--judge-retries"), (dict(batch_size=0), "--batch-size"),
                                      (dict(judge="rubric"), "--judge-model"), (dict(temperature=-1.0), "temperature")])
def test_options_checked_as_rwft_collect_checks_them(tmp_path, kw, match):
    from rwft.errors import RwftError

    with pytest.raises(RwftError, match=match):
        run_eval(EvalConfig(policy="scripted:1", env="mcqa", output=str(tmp_path / "out"), episodes=2, **kw))
    assert not (tmp_path / "out").exists()
