import pytest

from rwft.data.conversation import Conversation
from rwft.data.pairs import build_pairs, choose_pair


def conv(cid: str, i: int, answers: list[str], reward: float) -> Conversation:
    msgs = [{"role": "system", "content": "be helpful"}, {"role": "user", "content": f"task {cid}"}]
    teacher = ["explain", "final answer?"]
    for k, a in enumerate(answers):
        msgs.append({"role": "assistant", "content": a, "reward": 0.0})
        if k < len(answers) - 1:
            msgs.append({"role": "user", "content": teacher[k]})
    return Conversation(msgs, reward, cid, f"{cid}/{i}")


DATA = [
    conv("a", 0, ["solve A1", "why A1", "The answer is A"], 0.9),
    conv("a", 1, ["solve A2", "why A2", "The answer is C"], 0.1),
    conv("a", 2, ["solve A3", "why A3", "The answer is B"], 0.5),
    conv("b", 0, ["same", "same", "The answer is D"], 0.4),  # all rewards equal: no gap
    conv("b", 1, ["other", "other", "The answer is D"], 0.4),
    conv("c", 0, ["lonely", "x", "The answer is A"], 1.0),  # one sample
    conv("d", 0, ["same", "why d0", "The answer is B"], 1.0),  # identical first turn
    conv("d", 1, ["same", "why d1", "The answer is C"], 0.0),
]


def test_final_answer_pairs_best_vs_worst():
    pairs, stats = build_pairs(DATA, level="final")
    assert stats.as_dict() == {
        "contexts": 4,
        "contexts_used": 2,
        "pairs": 2,
        "skipped_single_sample": 1,
        "skipped_no_gap": 1,
        "skipped_all_same_side": 0,
        "skipped_identical_turns": 0,
    }
    a = next(p for p in pairs if p["context_id"] == "a")
    assert a["chosen"] == [{"role": "assistant", "content": "The answer is A"}]
    assert a["rejected"] == [{"role": "assistant", "content": "The answer is C"}]  # the 0.1, not the 0.5
    # prompt = the better trajectory up to its final turn, without per-message reward keys
    assert a["prompt"] == [{"role": m["role"], "content": m["content"]} for m in DATA[0].messages[:-1]]
    assert a["prompt"][-1] == {"role": "user", "content": "final answer?"}
    assert (a["reward_chosen"], a["reward_rejected"]) == (0.9, 0.1)


def test_step_pairs_one_per_differing_turn():
    pairs, stats = build_pairs(DATA, level="step")
    a = [p for p in pairs if p["context_id"] == "a"]
    assert [p["turn"] for p in a] == [0, 1, 2]
    assert [p["chosen"][0]["content"] for p in a] == ["solve A1", "why A1", "The answer is A"]
    assert [p["rejected"][0]["content"] for p in a] == ["solve A2", "why A2", "The answer is C"]
    # the turn-t prompt ends with the observation before the agent's t-th turn, in the better trajectory
    assert [p["prompt"][-1]["content"] for p in a] == ["task a", "explain", "final answer?"]
    assert a[1]["prompt"][2] == {"role": "assistant", "content": "solve A1"}
    # context d: first turns identical -> skipped and counted; turns 2 and 3 kept
    d = [p for p in pairs if p["context_id"] == "d"]
    assert [p["turn"] for p in d] == [1, 2]
    assert stats.skipped_identical_turns == 1
    assert stats.pairs == 5
    # every pair is in TRL's conversational preference format
    for p in pairs:
        assert p["prompt"][-1]["role"] == "user"
        assert p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"
        assert p["chosen"] != p["rejected"]


def test_min_gap_skips_small_gaps():
    _, stats = build_pairs(DATA, level="final", min_gap=0.85)
    assert stats.skipped_no_gap == 2 and stats.pairs == 1  # a (gap .8) and b (0) skipped, d (gap 1) kept


def test_correct_vs_incorrect_is_seeded_and_skips_one_sided_groups():
    samples = [conv("m", i, ["s", "w", f"ans {i}"], r) for i, r in enumerate([1.0, 1.0, 0.0, 0.0, 1.0])]
    seen = set()
    for seed in range(20):
        better, worse = choose_pair(samples, "correct-incorrect", seed=seed)
        assert better.reward == 1.0 and worse.reward == 0.0
        assert choose_pair(samples, "correct-incorrect", seed=seed) == (better, worse)  # reproducible
        seen.add((better.id, worse.id))
    assert len(seen) > 2  # random, not always the same two
    all_right = [conv("r", i, ["s", "w", "a"], 1.0) for i in range(3)]
    assert choose_pair(all_right, "correct-incorrect") == "all_same_side"
    _, stats = build_pairs(samples + all_right, pairing="correct-incorrect")
    assert stats.skipped_all_same_side == 1 and stats.pairs == 1


def test_bad_options():
    with pytest.raises(ValueError):
        build_pairs(DATA, level="turn")
    with pytest.raises(ValueError):
        choose_pair(DATA[:2], pairing="random")
