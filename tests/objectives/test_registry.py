"""The registry is the one list of objectives: what reads it, and adding one as the README shows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rwft.objectives import registry
from rwft.objectives.registry import OBJECTIVES, Objective


def test_every_reader_takes_its_names_from_the_registry():
    from rwft.recipes.compare import METHODS
    from rwft.train.trainers import TRAINERS
    from rwft.train.weighted import TRAIN_OBJECTIVES

    assert set(TRAIN_OBJECTIVES) == {o.name for o in OBJECTIVES.values() if o.trainer in TRAINERS}
    assert set(METHODS) == {"base"} | {o.row for o in OBJECTIVES.values() if o.offline}
    assert METHODS["star-gate"] is OBJECTIVES["filtered"]
    assert set(registry.names(online=True)) == {"refit", "swift", "dpo", "grpo"}
    for o in OBJECTIVES.values():  # each entry is runnable by something
        assert o.weights is not None or o.trainer in ("qsft", "dpo", "online"), o.name


def test_unknown_objectives_are_refused_with_the_known_names():
    with pytest.raises(ValueError, match="expected one of refit, swift, dpo, grpo"):
        registry.get("sft", online=True)


def awr_weights(rewards, groups):
    """The README's worked example: AWR, w_i = exp(r_i - mu(x_i)) with mu the context's mean reward."""
    r, g = np.asarray(rewards, float), np.unique(np.asarray(groups), return_inverse=True)[1]
    mu = np.bincount(g, weights=r) / np.bincount(g)
    return np.exp(r - mu[g])


def test_a_new_weight_function_is_one_entry(tmp_path, monkeypatch):
    from rwft.data.arrow import read_dataset
    from rwft.data.weighting import column_turn_weights

    monkeypatch.setitem(OBJECTIVES, "awr", Objective("awr", "exp(r - context mean)", weights=awr_weights))
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "u"}, {"role": "assistant", "content": "b"}],
             "reward": r, "context_id": c} for r, c in [(1.0, "x"), (0.0, "x"), (0.5, "y")]]
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    offsets, w = column_turn_weights(read_dataset(path), "awr")
    assert offsets.tolist() == [0, 2, 4, 6]  # each agent turn carries its conversation's weight
    assert w == pytest.approx([math.exp(0.5)] * 2 + [math.exp(-0.5)] * 2 + [1.0] * 2)


def test_rewards_outside_an_objectives_range_name_the_record(tmp_path, monkeypatch):
    from rwft.data.arrow import read_dataset
    from rwft.data.weighting import column_turn_weights
    from rwft.errors import RwftError

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "reward": r, "id": f"r{i}"} for i, r in enumerate([0.5, -2.0])]
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RwftError, match=r"logs.jsonl: conversation 2 \(id 'r1'\): reward -2: refit needs rewards >= 0"):
        column_turn_weights(read_dataset(path), "refit", source=str(path))
