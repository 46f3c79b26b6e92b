import json

import pytest

from rwft.bootstrap import BootstrapConfig, reward_summary, run_bootstrap


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
    assert json.loads((out / "bootstrap.json").read_text())["pi0"] == p
    from rwft.presets import load_model

    assert load_model(str(out / "train")) is not None
