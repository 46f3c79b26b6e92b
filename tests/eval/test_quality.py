"""Judged language quality: scores per dimension, failures counted apart, the judge measured against exact match."""

from __future__ import annotations

import math

import pytest

from rwft.eval.quality import auc, judge_episodes, judge_trust, quality_metrics, trust_line


def record(answer: str, gold: str, i: int) -> dict:
    msgs = [{"role": "user", "content": f"Question {i}? A. x B. y"},
            {"role": "assistant", "content": f"The answer is {answer}."}]
    return {"context_id": f"c{i}", "messages": msgs, "metadata": {"gold": gold, "correct": answer == gold}}


def fake_judge(replies_seen: list):
    """Accuracy 9 when the transcript's answer equals the reference in the prompt, else 3; Overall 5 or 7;
    the prompt of question 3 always gets an unparseable reply."""

    def generate(conversations, temperatures, seeds):
        out = []
        for conv in conversations:
            text = conv[0]["content"]
            replies_seen.append(text)
            if "Question 3?" in text:
                out.append("I cannot grade this.")
                continue
            gold = text.split("The reference answer is: ")[1][0]
            right = f"The answer is {gold}." in text
            acc, overall = (9, 7) if right else (3, 5)
            out.append(f"Overall: {overall}\nAccuracy: {acc}\nReasoning: 4\nComprehensiveness: 4\n"
                       f"Pedagogical value: 2\nConfidence calibration: 6")
        return out

    return generate


def test_judged_means_failures_and_trust_by_hand():
    seen: list = []
    recs = [record("A", "A", 0), record("B", "A", 1), record("A", "A", 2), record("B", "B", 3), record("B", "A", 4)]
    rows = judge_episodes(recs, fake_judge(seen), retries=1)
    assert len(seen) == 5 + 1  # one retry, for the unparseable reply only
    assert rows[3]["scores"] is None and "unparseable" in rows[3]["failure"]
    assert [r["correct"] for r in rows] == [True, False, True, True, False]
    m = quality_metrics(rows)
    # parsed: 0 (right), 1 (wrong), 2 (right), 4 (wrong): accuracy (0.9 + 0.3 + 0.9 + 0.3) / 4 = 0.6
    assert m["judge_accuracy"] == pytest.approx(0.6) and m["judge_overall"] == pytest.approx(0.6)
    assert m["judge_pedagogical_value"] == pytest.approx(0.2) and m["judge_failure"] == pytest.approx(0.2)
    t = judge_trust(rows)
    assert t["failure"] == pytest.approx(0.2) and t["accuracy_auc"] == 1.0 and t["accuracy_r"] == pytest.approx(1.0)
    assert t["accuracy_right"] == pytest.approx(0.9) and t["accuracy_wrong"] == pytest.approx(0.3)
    assert t["overall_distinct"] == 2 and t["overall_std"] == pytest.approx(0.1)
    assert "20% replies unparseable" in trust_line(t, "j") and "AUC 1.00" in trust_line(t, "j")


def test_auc_counts_ties_half_and_needs_both_sides():
    assert auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert math.isnan(auc([0.5], []))
    t = judge_trust([{"correct": True, "scores": None, "failure": "x"}])
    assert t["failure"] == 1.0 and math.isnan(t["accuracy_auc"])
