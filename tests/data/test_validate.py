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
