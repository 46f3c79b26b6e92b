"""The dataset summary against counts made by hand."""

from __future__ import annotations

from conftest import write_jsonl
from rwft.data.validate import ValidateConfig, run_validate


def test_summary_counts(tmp_path, capsys):
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
