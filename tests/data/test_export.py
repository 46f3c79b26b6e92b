"""Randomized rounding: counts are floor or ceil of s * r, with the right mean."""

from __future__ import annotations

import json
import random

import pytest

from conftest import write_jsonl
from rwft.data.export import ExportConfig, rounded_copies, run_export
from rwft.errors import RwftError


def test_rounded_copies_are_floor_or_ceil_with_mean_sr():
    rng = random.Random(0)
    for r in (0.0, 0.3, 1.0, 2.7):
        counts = [rounded_copies([r], 2.0, rng)[0] for _ in range(20000)]
        assert set(counts) <= {int(2 * r), int(2 * r) + 1}
        assert sum(counts) / len(counts) == pytest.approx(2 * r, abs=0.02)


def test_export_writes_plain_sft_lines(tmp_path, sample_path):
    out = tmp_path / "sft.jsonl"
    n = run_export(ExportConfig(data=str(sample_path), out=str(out), scale=3.0, seed=1))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == n > 0
    assert set(lines[0]) == {"id", "messages"}
    assert all(set(m) == {"role", "content"} for x in lines for m in x["messages"])


def test_export_refuses_negative_rewards(tmp_path):
    data = write_jsonl(tmp_path / "neg.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}], "reward": -1}])
    with pytest.raises(RwftError, match="rewards >= 0"):
        run_export(ExportConfig(data=str(data), out=str(tmp_path / "o.jsonl")))
    assert not (tmp_path / "o.jsonl").exists()
