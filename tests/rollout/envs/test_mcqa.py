import random

import pytest

from conftest import scripted_mean_reward
from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.envs.base import MAX_ACTION_CHARS
from rwft.rollout.envs.mcqa import FINAL, UNCLEAR_OPTION, arithmetic_item, extract_choice

LABELS = ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is B.", "B"),
        ("the answer is (c)", "C"),
        ("**The answer is: D**", "D"),
        ('The answer is "D".', "D"),
        ("The answer is \u201cA\u201d.", "A"),
        ("The answer is 'c'", "C"),
        ("I first thought the answer is A, but the answer is C.", "C"),
        ("B", "B"),
        ("(A).", "A"),
        ("", None),
        ("La respuesta es B.", None),
        ("答案是 B", None),
        ("The answer is E.", None),  # not an option
        ("I am not sure which one.", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, LABELS) == expected


def play(env, actions):
    ep = env.start(env.tasks(1, seed=3)[0])
    for a in actions:
        assert not ep.done
        env.step(ep, a)
    return ep


def test_reasoning_protocol_three_teacher_turns():
    env = make_env("mcqa")
    ep = env.start(env.tasks(1, seed=0)[0])
    assert ep.messages[0]["role"] == "user" and "Options:" in ep.messages[0]["content"]
    gold = ep.task.data["answer"]
    env.step(ep, "Let me solve it.")
    assert "other options" in ep.messages[-1]["content"]
    env.step(ep, "The others are wrong.")
    assert ep.messages[-1]["content"] == FINAL
    env.step(ep, f"The answer is {gold}.")
    assert ep.done and ep.agent_turns == 3
    out = env.outcome(ep)
    assert out["reward"] == 1.0 and out["correct"] and out["gold"] == gold and out["turns"] == 3


@pytest.mark.parametrize(
    "final",
    ["", "x" * (MAX_ACTION_CHARS * 3), "Die Antwort ist vielleicht die zweite.", "I do not know.", None],
)
def test_odd_agent_text_has_defined_outcome(final):
    env = make_env("mcqa")
    ep = play(env, ["", "?", final])
    assert ep.done
    out = env.outcome(ep)
    assert out["reward"] == 0.0 and out["final_answer"] is None and out["correct"] is False
    assert all(len(m["content"]) <= MAX_ACTION_CHARS for m in ep.messages)
    if final and len(final) > MAX_ACTION_CHARS:
        assert ep.truncated_actions == 1


def test_wrong_answer_scores_zero():
    env = make_env("mcqa")
    ep = env.start(env.tasks(1, seed=1)[0])
    wrong = next(c["label"] for c in ep.task.data["choices"] if c["label"] != ep.task.data["answer"])
    for a in ["a", "b", f"The answer is {wrong}."]:
        env.step(ep, a)
    assert env.outcome(ep)["reward"] == 0.0 and env.outcome(ep)["final_answer"] == wrong


def test_clarifying_mode_teacher_reveals_the_named_option():
    env = make_env("mcqa", ["mode=clarifying"])
    ep = env.start(env.tasks(1, seed=2)[0])
    gold = ep.task.data["answer"]
    env.step(ep, f"Is option {gold} consistent with the question?")
    assert "is consistent" in ep.messages[-1]["content"]
    env.step(ep, f"The answer is {gold}.")
    assert ep.done and env.outcome(ep)["reward"] == 1.0 and env.outcome(ep)["clarify_option"] == gold
    for question in ["", "Which is right, option A or option B?", "¿Cuál es la respuesta?"]:
        ep = env.start(env.tasks(1, seed=2)[0])
        env.step(ep, question)
        assert ep.messages[-1]["content"].startswith(UNCLEAR_OPTION)
        env.step(ep, "")
        assert ep.done and env.outcome(ep)["reward"] == 0.0


def test_thinking_mode_prompt_and_flag():
    env = make_env("mcqa", ["thinking=true"])
    ep = env.start(env.tasks(1, seed=0)[0])
    assert "<thinking>" in ep.messages[0]["content"]
    for a in ["<thinking>because</thinking> A", "b", "The answer is A"]:
        env.step(ep, a)
    assert env.outcome(ep)["used_thinking"] is True


def test_arithmetic_generator_gold_is_the_value_and_choices_distinct():
    for d in range(1, 6):
        for i in range(30):
            item = arithmetic_item(random.Random(i), d, i)
            expr = item["question"][len("What is ") : -1]
            gold = next(c["text"] for c in item["choices"] if c["label"] == item["answer"])
            assert int(gold) == eval(expr)
            assert len({c["text"] for c in item["choices"]}) == 4
    easy = make_env("mcqa", ["source=arithmetic", "difficulty=1"]).tasks(5, 0)
    hard = make_env("mcqa", ["source=arithmetic", "difficulty=5"]).tasks(5, 0)
    assert max(len(t.data["question"]) for t in easy) < min(len(t.data["question"]) for t in hard)


def test_tasks_deterministic_and_seeded():
    env = make_env("mcqa", ["source=arc-challenge", "split=test"])
    a, b, c = env.tasks(5, 0), env.tasks(5, 0), env.tasks(5, 1)
    assert [t.context_id for t in a] == [t.context_id for t in b] != [t.context_id for t in c]
    assert len({t.context_id for t in a}) == 5


def test_scripted_skill_orders_reward():
    env = make_env("mcqa")
    tasks = env.tasks(60, 0)

    def mean_reward(skill):
        return scripted_mean_reward(env, tasks, skill, stride=10)

    assert mean_reward(1.0) == 1.0
    assert mean_reward(0.0) < 0.5


def test_bad_options_are_clear_errors():
    with pytest.raises(RwftError, match="source"):
        make_env("mcqa", ["source=nope"])
    with pytest.raises(RwftError, match="unknown option"):
        make_env("mcqa", ["colour=red"])
    with pytest.raises(RwftError, match="difficulty"):
        make_env("mcqa", ["difficulty=many"])
    with pytest.raises(RwftError, match="only 500"):
        make_env("mcqa", ["split=test"]).tasks(501, 0)
    with pytest.raises(RwftError, match="unknown environment"):
        make_env("chess")


def test_arithmetic_items_always_have_four_distinct_choices():
    import random

    from rwft.rollout.envs.mcqa import arithmetic_item

    for difficulty in (1, 2, 3):
        for i in range(3000):  # seed 1000 of difficulty 1 once collided down to three options
            item = arithmetic_item(random.Random(i), difficulty, i)
            texts = [c["text"] for c in item["choices"]]
            assert len(texts) == 4 == len(set(texts)), item
