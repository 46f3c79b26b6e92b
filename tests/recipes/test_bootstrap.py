import json

import pytest

from rwft.errors import RwftError
from rwft.recipes.bootstrap import (
    DEFAULTS,
    ENV_DEFAULTS,
    BootstrapConfig,
    resolve_defaults,
    reward_summary,
    run_bootstrap,
    scripted_policy,
)


def test_reward_summary_by_hand():
    recs = [{"context_id": c, "reward": r} for c, r in [("a", 0.0), ("a", 1.0), ("b", 0.0), ("b", 0.0), ("c", None)]]
    s = reward_summary(recs)
    assert s["episodes"] == 4 and s["mean_reward"] == 0.25 and s["best_of_m_reward"] == 0.5
    assert s["min_reward"] == 0.0 and s["max_reward"] == 1.0 and s["std_reward"] == pytest.approx(0.4330127)


def test_bootstrap_end_to_end_small(tmp_path):
    out = tmp_path / "pi0"
    summary = run_bootstrap(BootstrapConfig(
        env="mcqa", env_args=["source=arithmetic", "difficulty=1"], output=str(out), contexts=6,
        samples_per_context=1, epochs=1, eval_contexts=2, best_of=2, max_new_tokens=4, progress=False,
    ))
    scripted = [json.loads(x) for x in (out / "scripted.jsonl").read_text().splitlines()]
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(scripted) == 6 and {r["metadata"]["policy"] for r in scripted} == {"scripted:mixed"}
    assert len(rollouts) == 4 and {r["metadata"]["policy"] for r in rollouts} == {str(out / "train")}
    assert not {r["context_id"] for r in rollouts} & {r["context_id"] for r in scripted}  # held-out tasks
    p = summary["pi0"]
    assert p["episodes"] == 4 and p["best_of_m_reward"] >= p["mean_reward"]
    written = json.loads((out / "bootstrap.json").read_text())
    assert written["scripted_policy"] == "scripted:mixed"
    assert written["config"]["batch_size"] == ENV_DEFAULTS["mcqa"]["batch_size"]  # unset: mcqa's default
    assert written["config"]["epochs"] == 1 and written["config"]["model"] == "tiny"  # given: kept
    assert json.loads((out / "bootstrap.json").read_text())["pi0"] == p
    from rwft.presets import load_model

    assert load_model(str(out / "train")) is not None


def test_unset_options_take_the_environment_defaults_and_given_ones_win():
    twenty = resolve_defaults(BootstrapConfig(env="twenty-questions"))
    assert {k: getattr(twenty, k) for k in DEFAULTS} == {**DEFAULTS, **ENV_DEFAULTS["twenty-questions"]}
    clarify = resolve_defaults(BootstrapConfig(env="clarify"))
    assert {k: getattr(clarify, k) for k in DEFAULTS} == DEFAULTS  # no defaults of its own
    # a given value wins, also when it equals the generic default
    given = resolve_defaults(BootstrapConfig(env="twenty-questions", batch_size=8, skill="mixed", contexts=7))
    assert (given.batch_size, given.skill, given.contexts) == (8, "mixed", 7)
    assert given.epochs == ENV_DEFAULTS["twenty-questions"]["epochs"]
    assert resolve_defaults(given) == given


@pytest.mark.parametrize("skill,spec", [("mixed", "scripted:mixed"), ("1", "scripted:1"), (0.9, "scripted:0.9"),
                                        ("0", "scripted:0")])
def test_scripted_policy(skill, spec):
    assert scripted_policy(skill) == spec


@pytest.mark.parametrize("skill", ["1.5", "-0.1", "good", ""])
def test_scripted_policy_rejects_bad_skills(skill):
    with pytest.raises(RwftError, match="--skill"):
        scripted_policy(skill)


def test_model_and_skill_reach_training_and_collection(tmp_path, monkeypatch):
    import rwft.train.trainers

    seen = {}

    def fake_train(cfg):
        seen["train"] = cfg
        raise RuntimeError("stop after collection")

    monkeypatch.setattr(rwft.train.trainers, "train", fake_train)
    out = tmp_path / "pi0"
    model = tmp_path / "some" / "model-dir"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="stop after collection"):
        run_bootstrap(BootstrapConfig(env="twenty-questions", output=str(out), model=str(model), contexts=3,
                                      samples_per_context=1, progress=False))
    cfg = seen["train"]
    assert cfg.model == str(model) and cfg.objective == "sft"
    assert cfg.per_device_train_batch_size == ENV_DEFAULTS["twenty-questions"]["batch_size"]
    scripted = [json.loads(x) for x in (out / "scripted.jsonl").read_text().splitlines()]
    assert len(scripted) == 3 and {r["metadata"]["policy"] for r in scripted} == {"scripted:1"}


@pytest.mark.parametrize("kw", [dict(model="/no/such/model-dir"), dict(env_args=["nope=1"]), dict(env="nope")])
def test_bad_inputs_leave_no_output_directory(tmp_path, kw):
    out = tmp_path / "pi0"
    with pytest.raises(RwftError):
        run_bootstrap(BootstrapConfig(**{"env": "mcqa", "output": str(out), "contexts": 2, **kw}))
    assert not out.exists()


def test_quiet_prints_nothing_of_its_own(tmp_path, monkeypatch, capfd):
    import rwft.train.trainers

    def fake_train(cfg):  # the training's own output is the trainer's (disable_tqdm); the rest must be silent
        import shutil

        from rwft.presets import resolve_model

        shutil.copytree(resolve_model("tiny"), cfg.output_dir)

    monkeypatch.setattr(rwft.train.trainers, "train", fake_train)
    run_bootstrap(BootstrapConfig(env="mcqa", env_args=["source=arithmetic"], output=str(tmp_path / "q"), contexts=2,
                                  eval_contexts=2, best_of=1, max_new_tokens=4, quiet=True))
    assert capfd.readouterr() == ("", "")
    assert "quiet" not in json.loads((tmp_path / "q" / "bootstrap.json").read_text())["config"]
