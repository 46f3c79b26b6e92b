import json

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
    import rwft.train.weighted

    seen = {}
    monkeypatch.setattr(rwft.train.dpo, "run_dpo", lambda c: seen.setdefault("dpo", c))
    monkeypatch.setattr(rwft.train.weighted, "train", lambda c: seen.setdefault("train", c))
    cfg = compare.CompareConfig(output=str(tmp_path), learning_rate=2e-3, dpo_learning_rate=2e-4)
    compare.train_cell(cfg, "stepdpo", 0, "logs.jsonl", "pi0", tmp_path / "c1")
    compare.train_cell(cfg, "refit", 0, "logs.jsonl", "pi0", tmp_path / "c2")
    assert seen["dpo"].learning_rate == 2e-4 and seen["dpo"].level == "step"
    assert seen["train"].learning_rate == 2e-3 and seen["train"].group_by_length is False
    cfg = compare.CompareConfig(output=str(tmp_path), learning_rate=2e-3)
    seen.clear()
    compare.train_cell(cfg, "dpo", 0, "logs.jsonl", "pi0", tmp_path / "c3")
    assert seen["dpo"].learning_rate == 2e-3  # 0: the shared rate
