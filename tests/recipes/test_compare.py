import json
from dataclasses import replace
from pathlib import Path

import pytest

from rwft.errors import RwftError
from rwft.recipes import compare


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """Replace training and evaluation by fast fakes that count their calls; can fail on demand."""
    calls = {"train": [], "eval": [], "fail": None}

    def train_cell(config, method, seed, data, pi0, cell):
        calls["train"].append((method, seed))
        if calls["fail"] == (method, seed):
            raise RuntimeError("killed")
        if method == "swift":
            raise RwftError("no conversation carries a non-zero weight")
        (cell / "model").mkdir(parents=True, exist_ok=True)
        (cell / "model" / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0 + seed}) + "\n")
        return str(cell / "model")

    def eval_cell(config, policy, seed, pi0, cell):
        calls["eval"].append(policy)
        reward = {"base": 0.1, "sft": 0.3, "refit": 0.5}[cell.name.split("-s")[0]] + 0.01 * seed
        return {"metrics": {"reward": {"mean": reward, "half": 0, "n": 1}, "distinct_2": 0.5}}

    monkeypatch.setattr(compare, "train_cell", train_cell)
    monkeypatch.setattr(compare, "eval_cell", eval_cell)
    data = tmp_path / "logs.jsonl"
    data.write_text("")
    return calls, data


def test_compare_is_resumable(fake_stages, tmp_path):
    calls, data = fake_stages
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "sft", "refit"],
                                seeds=[0, 1], perplexity=False)
    calls["fail"] = ("refit", 1)  # the run dies in the last cell
    with pytest.raises(RuntimeError):
        compare.run_compare(cfg)
    assert len(calls["train"]) == 6
    done = sorted(p.parent.name for p in (tmp_path / "cmp" / "cells").glob("*/result.json"))
    assert done == ["base-s0", "base-s1", "refit-s0", "sft-s0", "sft-s1"]
    calls["fail"] = None
    calls["train"].clear()
    files = compare.run_compare(cfg)
    assert calls["train"] == [("refit", 1)]  # only the unfinished cell is recomputed
    calls["train"].clear()
    compare.run_compare(cfg)
    assert calls["train"] == []  # a finished comparison recomputes nothing
    table = open(files["markdown"]).read()
    # refit rewards 0.50, 0.51: mean 0.505, s = 0.00707, half = t(0.975, 1) * s / sqrt(2) = 12.706 * 0.005 = 0.0635
    assert "| refit | 2 | 0.505 ± 0.064 |" in table
    result = json.loads((tmp_path / "cmp" / "cells" / "refit-s1" / "result.json").read_text())
    assert result["train_log"] == [{"step": 1, "loss": 2.0}] and result["train_time_s"] >= 0


def test_a_cell_whose_evaluation_failed_is_evaluated_again_not_retrained(fake_stages, monkeypatch, tmp_path):
    """The run dies in refit's evaluation (a served generator's deadline, say): the rerun evaluates the model that
    was trained, with the first training's cost, and trains nothing again."""
    calls, data = fake_stages
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "refit"], seeds=[0],
                                perplexity=False)
    evaluate = compare.eval_cell

    def dying_eval(config, policy, seed, pi0, cell):
        if cell.name == "refit-s0":
            raise RwftError("no answer within 120 s")
        return evaluate(config, policy, seed, pi0, cell)

    monkeypatch.setattr(compare, "eval_cell", dying_eval)
    with pytest.raises(RwftError, match="no answer"):
        compare.run_compare(cfg)
    cell = tmp_path / "cmp" / "cells" / "refit-s0"
    assert calls["train"] == [("base", 0), ("refit", 0)] and not (cell / "result.json").exists()
    first = json.loads((cell / "trained.json").read_text())
    monkeypatch.setattr(compare, "eval_cell", evaluate)
    compare.run_compare(cfg)
    assert calls["train"] == [("base", 0), ("refit", 0)]  # nothing trained again
    assert calls["eval"][-1] == str(cell / "model") and (cell / "model" / "train_log.jsonl").exists()
    result = json.loads((cell / "result.json").read_text())
    assert result["train_time_s"] == first["train_time_s"] and result["train_log"] == [{"step": 1, "loss": 1.0}]


def test_unknown_method_is_a_user_error(tmp_path):
    with pytest.raises(RwftError, match="unknown"):
        compare.CompareConfig(output=str(tmp_path), methods=["ppo"])


def test_untrainable_method_is_recorded_not_fatal(fake_stages, tmp_path):
    calls, data = fake_stages
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "swift"], seeds=[0],
                                perplexity=False)
    files = compare.run_compare(cfg)
    result = json.loads((tmp_path / "cmp" / "cells" / "swift-s0" / "result.json").read_text())
    assert "non-zero weight" in result["error"] and result["metrics"] == {}
    assert "| swift | 1 | - |" in open(files["markdown"]).read()


def test_dpo_gets_its_own_learning_rate_and_weighted_batches_are_random_by_default(monkeypatch, tmp_path):
    import rwft.train.dpo
    import rwft.train.trainers

    seen = {}
    monkeypatch.setattr(rwft.train.dpo, "run_dpo", lambda c: seen.setdefault("dpo", c))
    monkeypatch.setattr(rwft.train.trainers, "train", lambda c: seen.setdefault("train", c))
    cfg = compare.CompareConfig(output=str(tmp_path), learning_rate=2e-3, dpo_learning_rate=2e-4)
    compare.train_cell(cfg, "stepdpo", 0, "logs.jsonl", "pi0", tmp_path / "c1")
    compare.train_cell(cfg, "refit", 0, "logs.jsonl", "pi0", tmp_path / "c2")
    assert seen["dpo"].learning_rate == 2e-4 and seen["dpo"].level == "step"
    assert seen["train"].learning_rate == 2e-3 and seen["train"].group_by_length is False
    cfg = compare.CompareConfig(output=str(tmp_path), learning_rate=2e-3)
    seen.clear()
    compare.train_cell(cfg, "dpo", 0, "logs.jsonl", "pi0", tmp_path / "c3")
    assert seen["dpo"].learning_rate == 2e-3  # 0: the shared rate


def test_terminal_shows_one_line_per_cell_and_the_table(fake_stages, tmp_path, capfd):
    calls, data = fake_stages
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "refit", "swift"],
                                seeds=[1], perplexity=False)
    files = compare.run_compare(cfg)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("base seed 1: reward 0.110, eval ") and "trained" not in lines[0]
    assert lines[1].startswith("refit seed 1: reward 0.510, trained ") and ", eval " in lines[1]
    assert lines[2] == "swift seed 1: not trained (no conversation carries a non-zero weight)"
    assert "\n".join(lines[3:]) + "\n" == open(files["markdown"]).read()  # then the table, nothing else
    assert lines[3].startswith("| method |") and lines[-1] == f"plots and report: {tmp_path / 'cmp' / 'report'}"
    assert err == ""
    compare.run_compare(cfg)  # resumed: the same lines, marked
    assert capfd.readouterr().out.splitlines()[1].endswith("(done before)")


def test_inner_stages_run_quietly(monkeypatch, tmp_path):
    """Collection, bootstrap and evaluation are asked to print nothing unless --progress."""
    import rwft.eval.evaluate
    import rwft.recipes.bootstrap
    import rwft.rollout.collect
    from rwft.recipes.pi0_and_logs import collect_logs, make_pi0

    seen = {}
    monkeypatch.setattr(rwft.rollout.collect, "run_collect", lambda c: seen.setdefault("collect", c))
    monkeypatch.setattr(rwft.recipes.bootstrap, "run_bootstrap", lambda c: seen.setdefault("bootstrap", c))
    monkeypatch.setattr(rwft.eval.evaluate, "run_eval", lambda c: seen.setdefault("eval", c))
    for progress in (False, True):
        seen.clear()
        cfg = compare.CompareConfig(output=str(tmp_path), bootstrap_contexts=4, progress=progress)
        make_pi0(cfg, tmp_path)
        collect_logs(cfg, "pi0", tmp_path)
        compare.eval_cell(cfg, "pi0", 0, "pi0", tmp_path / "cell")
        assert {k: (c.quiet, c.progress) for k, c in seen.items()} == {k: (not progress, progress) for k in seen}
        assert len(seen) == 3


@pytest.mark.parametrize("kw", [dict(model="/no/such/model-dir"), dict(data="/no/such/logs.jsonl"),
                                dict(env_args=["nope=1"]), dict(eval_env_args=["nope=1"]),
                                dict(quality_judge="/no/such/judge")])
def test_bad_inputs_leave_no_output_directory(tmp_path, kw):
    out = tmp_path / "cmp"
    with pytest.raises(RwftError):
        compare.run_compare(compare.CompareConfig(output=str(out), methods=["base"], seeds=[0], **kw))
    assert not out.exists()


def test_methods_are_data_and_star_gate_d_trains_with_lora(monkeypatch, tmp_path):
    cfg = compare.CompareConfig(output=str(tmp_path), lora=True, lora_r=4, methods=["base", "star-gate-d"])
    c = compare.trainer_config(cfg, "star-gate-d", 0, "logs.jsonl", "pi0", str(tmp_path / "m"))
    assert c.objective == "star-gate-d" and c.lora and c.lora_r == 4 and c.merge_lora  # evaluation loads a model
    assert compare.trainer_config(cfg, "dpo", 0, "logs.jsonl", "pi0", str(tmp_path / "d")).level == "final"
    monkeypatch.setitem(compare.METHODS, "per-turn", replace(compare.METHODS["per-turn"], turn_credit=False))
    cfg = compare.CompareConfig(output=str(tmp_path), methods=["per-turn"])
    assert compare.trainer_config(cfg, "per-turn", 0, "logs.jsonl", "pi0", str(tmp_path / "p")).objective == "per-turn"
    assert compare.train_cell(cfg, "base", 0, "logs.jsonl", "pi0", tmp_path / "b") == "pi0"


def test_judged_quality_columns_once_per_cell_and_added_to_finished_cells(fake_stages, monkeypatch, tmp_path):
    import rwft.rollout.policies

    calls, data = fake_stages
    plain_eval = compare.eval_cell

    def eval_cell(config, policy, seed, pi0, cell):  # the fake evaluation, plus its episodes on disk
        (cell / "eval").mkdir(parents=True, exist_ok=True)
        good = cell.name.startswith("refit")
        recs = [{"id": f"c{i}/0", "context_id": f"c{i}", "reward": float(good),
                 "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is A."}],
                 "metadata": {"gold": "A", "correct": good or i == 0}} for i in range(4)]
        (cell / "eval" / f"episodes-s{config.eval_seed + seed}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in recs))
        ev = plain_eval(config, policy, seed, pi0, cell)
        (cell / "eval" / "metrics.json").write_text(json.dumps({"metrics": {
            "reward": dict(ev["metrics"]["reward"], half=0.2, n=4), "distinct_2": 0.5}}))
        return ev

    judged = []

    class Judge:
        def generate(self, conversations, temperatures, seeds):
            judged.extend(conversations)
            return ["Overall: 8\nAccuracy: 9\nReasoning: 7\nComprehensiveness: 6\nPedagogical value: 5\n"
                    "Confidence calibration: 4"] * len(conversations)

    monkeypatch.setattr(compare, "eval_cell", eval_cell)
    monkeypatch.setattr(rwft.rollout.policies, "make_policy", lambda spec, env, n, **kw: Judge())
    kw = dict(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "refit"], seeds=[0], perplexity=False)
    compare.run_compare(compare.CompareConfig(**kw))  # no judge: no judged columns
    assert not judged and "judge_overall" not in open(tmp_path / "cmp" / "report" / "table.md").read()
    files = compare.run_compare(compare.CompareConfig(**kw, quality_judge="tiny", quality_episodes=3))
    assert len(judged) == 6 and not calls["train"][2:]  # the finished cells are judged, not retrained
    table = open(files["markdown"]).read()
    assert "| judge_overall | judge_accuracy |" in table and "| 0.800 ± 0.000 | 0.900 ± 0.000 |" in table
    assert "judge tiny on 6 episodes: 0% replies unparseable" in table
    assert "| refit | 1 | 0.500 ± 0.200 |" in table and "one seed: each ± is the 95% interval over" in table
    result = json.loads((tmp_path / "cmp" / "cells" / "refit-s0" / "result.json").read_text())
    assert result["metrics"]["judge_confidence_calibration"] == pytest.approx(0.4)
    compare.run_compare(compare.CompareConfig(**kw, quality_judge="tiny", quality_episodes=3))
    assert len(judged) == 6  # judged once per cell (quality.jsonl)


def test_per_turn_trains_on_redistributed_credit_and_qsft_on_the_sft_cell(monkeypatch, tmp_path):
    """per-turn trains on OUTPUT/logs-per-turn.jsonl (labelled once by the environment's prefix scores, turn
    rewards summing to each reward); qsft on the plain logs, with the same seed's sft model as its behaviour."""
    from rwft.data.io import load_conversations
    from rwft.rollout.collect import CollectConfig, run_collect
    from rwft.train import trainers as weighted

    logs = tmp_path / "tq.jsonl"
    run_collect(CollectConfig(env="twenty-questions", out=str(logs), policy="scripted:mixed", contexts=4,
                              samples_per_context=2, env_args=["horizon=8", "reward=unit"], progress=False,
                              quiet=True))
    trained = []

    def fake_train(config, callbacks=None):
        trained.append(config)
        Path(config.output_dir).mkdir(parents=True)
        (Path(config.output_dir) / "config.json").write_text("{}")

    monkeypatch.setattr(weighted, "train", fake_train)
    monkeypatch.setattr(compare, "eval_cell", lambda *a: {"metrics": {"reward": {"mean": 0.5, "half": 0, "n": 1}}})
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), env="twenty-questions", data=str(logs), seeds=[0],
                                env_args=["horizon=8", "reward=unit"], methods=["sft", "per-turn", "qsft"],
                                perplexity=False, qsft_beta=2.5)
    compare.run_compare(cfg)
    by = {c.objective: c for c in trained}
    per_turn = tmp_path / "cmp" / "logs-per-turn.jsonl"
    assert by["per-turn"].data == str(per_turn) and by["sft"].data == by["qsft"].data == str(logs)
    assert by["qsft"].behaviour_model == str(tmp_path / "cmp" / "cells" / "sft-s0" / "model")
    assert by["qsft"].qsft_beta == 2.5
    for c in load_conversations(per_turn):
        credits = [m["reward"] for m in c.messages if m["role"] == "assistant"]
        assert sum(credits) == pytest.approx(c.reward) and len(credits) == len(c.agent_turns())


def test_an_http_quality_judge_needs_its_model_name_before_anything_is_written(tmp_path):
    cfg = compare.CompareConfig(output=str(tmp_path / "out"), env="clarify", env_args=["source=requests"],
                                bootstrap_contexts=10, quality_judge="http://127.0.0.1:9/v1")
    with pytest.raises(RwftError, match="needs --quality-api-model"):
        compare.check_inputs(cfg)
    assert not (tmp_path / "out").exists()
    compare.check_inputs(replace(cfg, quality_api_model="judge"))  # named: accepted


@pytest.fixture
def tod_logs(tmp_path):
    """Logs of --env tod played by the scripted agent of mixed skill (no model): some turns with errors."""
    from rwft.rollout.collect import CollectConfig, run_collect

    logs = tmp_path / "tod.jsonl"
    run_collect(CollectConfig(env="tod", out=str(logs), policy="scripted:mixed", contexts=6, samples_per_context=2,
                              env_args=["reward=slots"], progress=False, quiet=True))
    return logs


def test_spans_methods_train_on_the_labelled_logs_and_plain_ones_without_spans(tod_logs, monkeypatch, tmp_path,
                                                                               capfd):
    """refit+spans and star-gate-d+spans train on OUTPUT/tod-spans.jsonl (labelled once by the tod rules, spans on
    its agent messages) with lambda --span-weight; refit on the plain logs with lambda 0; the rows say +spans."""
    from rwft.data.io import load_conversations
    from rwft.train import trainers

    trained = []

    def fake_train(config, callbacks=None):
        trained.append(config)
        Path(config.output_dir).mkdir(parents=True)

    monkeypatch.setattr(trainers, "train", fake_train)
    rewards = {"refit": 0.4, "refit+spans": 0.7, "star-gate-d+spans": 0.5}
    monkeypatch.setattr(compare, "eval_cell", lambda config, policy, seed, pi0, cell: {"metrics": {"reward": {
        "mean": rewards[cell.name.split("-s")[0]] + 0.01 * seed, "half": 0, "n": 1}}})
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), env="tod", env_args=["reward=slots"], data=str(tod_logs),
                                seeds=[0, 1], methods=["refit", "refit+spans", "star-gate-d+spans"], perplexity=False,
                                span_weight=0.3)
    files = compare.run_compare(cfg)
    labelled = tmp_path / "cmp" / "tod-spans.jsonl"
    by = {(c.objective, c.seed, c.span_weight): c.data for c in trained}
    assert by == {("refit", s, 0.0): str(tod_logs) for s in (0, 1)} | \
        {("refit", s, 0.3): str(labelled) for s in (0, 1)} | {("star-gate-d", s, 0.3): str(labelled) for s in (0, 1)}
    spans = [s for c in load_conversations(labelled) for m in c.messages for s in m.get("spans") or []]
    plain = [m for c in load_conversations(tod_logs) for m in c.messages if m.get("spans")]
    assert spans and not plain
    from rwft.recipes.spans_stage import span_counts

    counts = span_counts(labelled)
    assert sum(counts[k] for k in ("minor", "major", "critical")) == len(spans) and counts["all"] == 12
    table = open(files["markdown"]).read()
    assert "| refit+spans | 2 | 0.705 ± 0.064 |" in table and "| star-gate-d+spans | 2 |" in table
    assert "refit+spans beats refit on reward: 0.705 ± 0.064 vs 0.405 ± 0.064" in table.splitlines()
    assert not any(line.startswith("star-gate-d+spans ") for line in table.splitlines())  # no plain row to pair
    assert f"error spans (judge tod): {counts['minor']} minor, {counts['major']} major" in table
    stamp = labelled.stat().st_mtime_ns
    trained.clear()
    capfd.readouterr()
    compare.run_compare(cfg)  # resumed: labelled once, nothing retrained
    assert labelled.stat().st_mtime_ns == stamp and trained == []


@pytest.mark.parametrize("method", ["dpo+spans", "stepdpo+spans", "qsft+spans", "base+spans"])
def test_spans_are_refused_for_methods_without_token_weights(tmp_path, method):
    with pytest.raises(RwftError, match=f"{method.split('+')[0]} cannot train on error spans.*refit, swift"):
        compare.CompareConfig(output=str(tmp_path), env="tod", methods=["base", method])


def test_span_options_are_checked_before_anything_is_written(tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(RwftError, match="span-weight 0.0"):
        compare.CompareConfig(output=str(out), env="tod", methods=["refit+spans"], span_weight=0.0)
    with pytest.raises(RwftError, match="unknown"):
        compare.CompareConfig(output=str(out), env="tod", methods=["refit+spanz"])
    for kw, match in [(dict(env="clarify", env_args=["source=requests"]), "judges episodes of --env tod"),
                      (dict(env="tod", env_args=[], span_judge="rubric"), "needs --judge-model"),
                      (dict(env="tod", env_args=[], span_judge="nope"), "expected a span judge"),
                      (dict(env="tod", env_args=[], span_judge="rubric", span_judge_model="http://127.0.0.1:9/v1"),
                       "needs --span-api-model")]:
        with pytest.raises(RwftError, match=match):
            compare.run_compare(compare.CompareConfig(output=str(out), methods=["base", "swift+spans"], seeds=[0],
                                                      bootstrap_contexts=4, **kw))
        assert not out.exists()


def test_the_report_gives_each_method_paired_against_base(fake_stages, monkeypatch, tmp_path):
    calls, data = fake_stages

    def eval_cell(config, policy, seed, pi0, cell):  # two episodes a cell; refit wins the second
        reward = 1.0 if cell.name.startswith("refit") else 0.0
        rows = [{"id": "a/0", "reward": 0.0, "messages": []}, {"id": "b/0", "reward": reward, "messages": []}]
        (cell / "eval").mkdir(parents=True, exist_ok=True)
        (cell / "eval" / f"episodes-s{1000 + seed}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"metrics": {"reward": {"mean": reward / 2, "half": 0, "n": 1}}}

    monkeypatch.setattr(compare, "eval_cell", eval_cell)
    cfg = compare.CompareConfig(output=str(tmp_path / "cmp"), data=str(data), methods=["base", "sft", "refit"],
                                seeds=[0, 1], perplexity=False)
    table = open(compare.run_compare(cfg)["markdown"]).read()
    assert "sft - base on reward, paired: +0.000 ± 0.000 over 4 evaluation episodes (4 word for word" in table
    assert "refit - base on reward, paired: +0.500 ± " in table
