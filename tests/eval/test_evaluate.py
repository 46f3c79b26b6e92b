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
