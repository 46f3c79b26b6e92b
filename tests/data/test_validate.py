"""The dataset summary against counts made by hand."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from rwft.data.validate import ValidateConfig, run_validate


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh data cache; the tiny tokenizer is loaded from the shared one first."""
    from rwft.presets import load_tokenizer

    tok = load_tokenizer("tiny")
    monkeypatch.setenv("RWFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("rwft.presets.load_tokenizer", lambda *a, **k: tok)
    return tmp_path / "cache"


def test_summary_counts(tmp_path, capsys, own_cache):
    def conv(ctx, reward, turns=1):
        msgs = [{"role": "user", "content": f"task {ctx}"}]
        for t in range(turns):
            msgs += [{"role": "assistant", "content": f"answer {t} " * 30}, {"role": "user", "content": "more"}]
        return {"context_id": ctx, "messages": msgs[:-1], "reward": reward}

    records = [conv("a", 0.0), conv("a", 1.0), conv("b", 0.5), conv("b", 0.5), conv("c", 0.2, turns=3)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    s = run_validate(ValidateConfig(data=str(path), max_length=200))
    assert s["conversations"] == 5 and s["contexts"] == 3 and s["agent_turns"] == 7
    assert s["single_sample_contexts"] == 1 and s["all_equal_reward_contexts"] == 1
    assert s["reward"]["min"] == 0.0 and s["reward"]["max"] == 1.0 and abs(s["reward"]["mean"] - 0.44) < 1e-12
    assert s["truncated_at_max_length"] == 1  # only the 3-turn conversation exceeds 200 tokens
    assert "contexts                 3" in capsys.readouterr().out


SAMPLE_SUMMARY = """  conversations            180
  contexts                 60 (samples per context: min 3, mean 3.00, max 3)
  agent turns              540
  with turn-level rewards  0
  single-sample contexts   0
  all-equal-reward contexts 9 (swift gives them weight 0)
  truncated at 256 tokens 8 (oldest exchanges dropped), 0 too long even so (dropped)
  tokens                   29494 (9105 agent) with tiny's template
  error spans              0 minor, 0 major, 0 critical in 0 conversations (0 tokens)
  reward                   mean 0.5067, std 0.4106, min 0, q1 0.2, median 0.3, q3 1, max 1, negative 0
  [   0.000,    0.100)     39 ###############################
  [   0.100,    0.200)      0
  [   0.200,    0.300)     51 ########################################
"""


def test_sample_data_prints_the_same_counts_as_before(sample_path, capsys, own_cache):
    # the text printed by the list-based validate of commit 17c1654 on the packaged sample
    s = run_validate(ValidateConfig(data=str(sample_path), max_length=256))
    out = "\n".join(line.rstrip() for line in capsys.readouterr().out.splitlines())
    assert SAMPLE_SUMMARY in out
    assert s["reward"]["q1"] == 0.2 and s["tokens"] == 29494 and s["agent_tokens"] == 9105
    s2 = run_validate(ValidateConfig(data=str(sample_path), max_length=256))  # from the caches
    assert s2 == s
    assert len(list((own_cache / "data").glob("encoded-*"))) == 1  # tokenized once


def test_length_correlations_by_hand():
    from rwft.data.validate import length_correlations

    c = length_correlations([1.0, 0.0, 0.5, 0.2], [1, 3, 2, 2])
    # ranks (ties averaged): reward 3, 0, 2, 1; length 0, 3, 1.5, 1.5
    assert c["spearman"] == pytest.approx(-4.5 / (5 * 4.5) ** 0.5)
    assert c["pearson"] == pytest.approx(-1.0 / (0.5675 * 2) ** 0.5)
    assert length_correlations([1.0, 1.0], [1, 2]) == {"pearson": 0.0, "spearman": 0.0}  # constant reward


def _games(long_is_bad: bool) -> list[dict]:
    """Per context, two short conversations and one of three agent turns; the long one scores lowest (or highest)."""
    def conv(ctx, reward, turns):
        msgs = [{"role": "user", "content": f"task {ctx}"}]
        for t in range(turns):
            msgs += [{"role": "assistant", "content": f"question {t} " * 5, "reward": -0.1},
                     {"role": "user", "content": "no"}]
        msgs[-2]["reward"] = reward
        return {"context_id": ctx, "messages": msgs[:-1], "reward": reward}

    return [c for k in range(4) for c in (conv(k, 0.8 + 0.05 * k, 1), conv(k, 0.7, 1),
                                         conv(k, 0.1 if long_is_bad else 0.95 + 0.01 * k, 3))]


@pytest.mark.parametrize("objective,warns", [
    ("", True),  # no objective: a warning for those with negative weights
    ("swift", True), ("per-turn", True),  # per-turn: the conversation reward on the last turn, -0.1 on the others
    ("refit", False),  # weights >= 0: nothing pushes down
])
def test_reward_falling_with_length_warns_where_the_objective_is_at_risk(tmp_path, capsys, own_cache, objective,
                                                                          warns):
    path = write_jsonl(tmp_path / "d.jsonl", _games(long_is_bad=True))
    s = run_validate(ValidateConfig(data=str(path), objective=objective))
    assert s["length_correlation"]["turns"]["spearman"] < -0.5 and s["length_correlation"]["turns"]["pearson"] < -0.5
    out = capsys.readouterr().out
    assert "reward vs length         Spearman" in out
    assert bool(s["warnings"]) == warns and ("warning: reward falls with length" in out) == warns
    if warns:
        assert "--objective refit or filtered" in s["warnings"][0]
        assert (objective or "swift") in s["warnings"][0]


def test_reward_rising_with_length_does_not_warn(tmp_path, capsys, own_cache):
    path = write_jsonl(tmp_path / "d.jsonl", _games(long_is_bad=False))
    s = run_validate(ValidateConfig(data=str(path), objective="swift"))
    assert s["length_correlation"]["agent_tokens"]["spearman"] > 0.5 and not s["warnings"]
