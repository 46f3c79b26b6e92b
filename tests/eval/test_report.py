import csv
import math

import pytest

from rwft.eval import report


def results():
    out = []
    for seed, (base, refit) in enumerate([(0.2, 0.6), (0.3, 0.7), (0.1, 0.8)]):
        out.append({"method": "base", "seed": seed, "metrics": {"reward": base, "accuracy": 0.0},
                    "train_time_s": 0.0, "peak_memory_mb": 0.0,
                    "samples": [[{"role": "user", "content": "q <b>"}, {"role": "assistant", "content": "a & b"}]]})
        out.append({"method": "refit", "seed": seed, "metrics": {"reward": refit, "accuracy": float("nan")},
                    "train_time_s": 10.0 + seed, "peak_memory_mb": 500.0,
                    "train_log": [{"step": 1, "loss": 2.0 + seed}, {"step": 2, "loss": 1.0},
                                  {"step": 2, "train_runtime": 3}]})
    return out


def test_summary_equals_hand_computation():
    rows = report.summarize(results())
    assert [r["method"] for r in rows] == ["base", "refit"]
    refit = rows[1]
    # rewards 0.6, 0.7, 0.8: mean 0.7, s = 0.1, half = t(0.975, 2) * 0.1 / sqrt(3) = 4.3027 * 0.057735 = 0.24842
    assert refit["reward"]["mean"] == pytest.approx(0.7)
    assert refit["reward"]["half"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert refit["accuracy"]["n"] == 0  # NaN values are left out, not averaged in
    assert refit["train_time_s"]["mean"] == pytest.approx(11.0)
    assert refit["seeds"] == 3
    table = report.markdown_table(rows, ["reward", "accuracy"])
    assert "| refit | 3 | 0.700 ± 0.248 | - | 11.0 ± 2.5 | 500.0 ± 0.0 |" in table
    assert "| base | 3 | 0.200 ± 0.248 | 0.000 ± 0.000 |" in table


def test_write_report_files(tmp_path):
    files = report.write_report(results(), tmp_path, title="demo")
    for key in ("markdown", "csv", "html", "plot", "training_plot"):
        assert files[key].exists() and files[key].stat().st_size > 0, key
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(files["csv"].open()))
    assert rows[1]["method"] == "refit"
    assert float(rows[1]["reward_mean"]) == pytest.approx(0.7)
    assert float(rows[1]["reward_lo"]) == pytest.approx(0.7 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-5)
    page = files["html"].read_text()
    assert "q &lt;b&gt;" in page and "a &amp; b" in page  # conversations are escaped
    assert 'src="reward.png"' in page and 'src="training.png"' in page
    assert "(none recorded)" in page  # refit has no samples


def test_training_plot_skipped_without_logs(tmp_path):
    only_base = [r for r in results() if r["method"] == "base"]
    assert report.plot_training(only_base, tmp_path / "t.png") == []
    assert not (tmp_path / "t.png").exists()


def test_verdicts_need_non_overlapping_intervals():
    ci = lambda m, h: {"mean": m, "half": h, "n": 3, "low": m - h, "high": m + h}  # noqa: E731
    rows = [{"method": "base", "reward": ci(0.3, 0.05)}, {"method": "sft", "reward": ci(0.5, 0.2)},
            {"method": "dpo", "reward": ci(0.9, 0.01)}, {"method": "refit", "reward": ci(0.6, 0.1)}]
    lines = report.verdicts(rows)
    assert lines == ["refit beats base on reward: 0.600 ± 0.100 vs 0.300 ± 0.050",
                     "refit overlaps sft on reward: 0.600 ± 0.100 vs 0.500 ± 0.200",
                     "refit loses to dpo on reward: 0.600 ± 0.100 vs 0.900 ± 0.010"]
    assert report.verdicts(rows, ours=("swift",)) == []


def test_one_seed_uses_the_interval_over_evaluation_episodes():
    one = [{"method": "refit", "seed": 0, "metrics": {"reward": 0.5, "length": 3.0},
            "metrics_ci": {"reward": {"mean": 0.5, "half": 0.12, "n": 40}}}]
    row = report.summarize(one)[0]
    assert row["reward"]["half"] == 0.12 and row["reward"]["n"] == 40 and row["reward"]["lo"] == pytest.approx(0.38)
    assert row["length"]["half"] == 0.0 and row["length"]["n"] == 1  # no episode interval: the point itself
    two = one + [{"method": "refit", "seed": 1, "metrics": {"reward": 0.7}, "metrics_ci": one[0]["metrics_ci"]}]
    assert report.summarize(two)[0]["reward"]["n"] == 2  # several seeds: the interval between seeds
