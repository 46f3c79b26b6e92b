
import pytest

from conftest import scripted_mean_reward
from rwft.rollout.envs import make_env
from rwft.rollout.envs.clarify import VAGUE


def fresh(env, seed=0, k=0):
    return env.start(env.tasks(k + 1, seed)[k])


def intent_answer(ep):
    d = ep.task.data
    return d["interpretations"][d["intent"]]["answers"][0]


def other_answer(ep):
    d = ep.task.data
    gold = set(d["interpretations"][d["intent"]]["answers"])
    return next(a for i, it in enumerate(d["interpretations"]) for a in it["answers"]
                if i != d["intent"] and a not in gold)


@pytest.mark.parametrize("source", ["ambignq", "procedural"])
def test_asking_reveals_intent_and_answer_is_discounted(source):
    env = make_env("clarify", [f"source={source}", "unambiguous=0"])
    ep = fresh(env)
    env.step(ep, "Which of the possible meanings do you have in mind?")
    assert not ep.done and ep.messages[-1]["content"].startswith("I mean: ")
    env.step(ep, f"It is {intent_answer(ep)}.")
    out = env.outcome(ep)
    assert ep.done and out["correct"] and out["reward"] == pytest.approx(0.9) and out["asked"] == 1


def test_direct_right_answer_pays_one_wrong_or_hedged_pays_zero():
    env = make_env("clarify", ["source=procedural", "difficulty=3", "unambiguous=0"])
    ep = fresh(env)
    env.step(ep, intent_answer(ep))
    assert env.outcome(ep)["reward"] == 1.0
    ep = fresh(env)
    env.step(ep, other_answer(ep))
    assert env.outcome(ep)["reward"] == 0.0
    ep = fresh(env)
    env.step(ep, " or ".join(it["answers"][0] for it in ep.task.data["interpretations"]))
    assert env.outcome(ep)["hedged"] and env.outcome(ep)["reward"] == 0.0


@pytest.mark.parametrize("text", ["", "x" * 50000, "Je ne sais pas.", "Hmm.", "Dunno?", "我不知道"])
def test_odd_agent_text_has_defined_outcome(text):
    env = make_env("clarify", ["source=ambignq"])
    ep = fresh(env, k=3)
    for _ in range(5):
        if ep.done:
            break
        env.step(ep, text)
    assert ep.done and ep.agent_turns <= 3
    out = env.outcome(ep)
    assert out["reward"] == 0.0 and out["correct"] is False
    if text == "Dunno?":
        assert ep.messages[3]["content"] == VAGUE and out["asked"] == 3 and not out["answered"]


def test_asking_beats_guessing_for_the_scripted_agent():
    env = make_env("clarify", ["source=procedural", "difficulty=4", "unambiguous=0"])
    tasks = env.tasks(80, 0)

    def mean(skill):
        return scripted_mean_reward(env, tasks, skill, stride=100)

    assert mean(1.0) > 0.85 and mean(0.0) < 0.5


def test_intent_fixed_per_context_and_procedural_facts_in_system_prompt():
    env = make_env("clarify", ["source=procedural"])
    a, b = env.tasks(10, 4), env.tasks(10, 4)
    assert [t.data["intent"] for t in a] == [t.data["intent"] for t in b]
    ep = env.start(a[0])
    assert ep.messages[0]["role"] == "system" and "Facts:" in ep.messages[0]["content"]
    assert any(len(t.data["interpretations"]) > 1 for t in a)


def play(env, task, actions):
    ep = env.start(task)
    for a in actions:
        if ep.done:
            break
        env.step(ep, a)
    return ep, env.outcome(ep)


def test_requests_ask_then_confirm_or_name_the_intent():
    env = make_env("clarify", ["source=requests", "difficulty=3", "unambiguous=0"])
    task = env.tasks(1, 0)[0]
    d = task.data
    intent = d["interpretations"][d["intent"]]["answers"][0]
    other = next(it["answers"][0] for i, it in enumerate(d["interpretations"]) if i != d["intent"])
    assert [m["role"] for m in env.start(task).messages] == ["user"]  # no system turn
    ep, out = play(env, task, ["Which one do you mean?"])
    assert ep.messages[-1]["content"] == f"I mean: {intent}"
    for answer, reward in [("Done.", 0.9), (f"Done: {intent}.", 0.9), (f"Done: {other}.", 0.0),
                           (f"Done: {intent} and {other}.", 0.0), ("I don't know.", 0.0), ("", 0.0)]:
        assert play(env, task, ["Which one do you mean?", answer])[1]["reward"] == pytest.approx(reward), answer
    # without asking, "Done." carries out nothing: the intent is unknown; a named guess pays when right
    assert play(env, task, ["Done."])[1]["reward"] == 0.0
    assert play(env, task, [f"Done: {intent}."])[1]["reward"] == 1.0
    assert play(env, task, [f"Done: {other}."])[1]["reward"] == 0.0


def test_requests_unambiguous_needs_no_question():
    env = make_env("clarify", ["source=requests", "unambiguous=1"])
    task = env.tasks(1, 3)[0]
    assert len(task.data["interpretations"]) == 1 and " or " not in task.data["question"]
    assert play(env, task, ["Done."])[1]["reward"] == 1.0
    assert play(env, task, ["Which one do you mean?", "Done."])[1]["reward"] == pytest.approx(0.9)


def test_requests_scripted_mixture_spreads_in_reward():
    env = make_env("clarify", ["source=requests", "difficulty=3", "unambiguous=0"])
    tasks = env.tasks(200, 0)

    def mean(skill):
        return scripted_mean_reward(env, tasks, skill, stride=100)

    assert mean(1.0) == pytest.approx(0.9) and mean(0.0) < 0.4


def test_ambignq_open_book_lists_every_interpretation_with_its_answer():
    closed, opened = make_env("clarify"), make_env("clarify", ["open_book=true"])
    task_c, task_o = closed.tasks(3, 5)[2], opened.tasks(3, 5)[2]
    assert task_c.data["id"] == task_o.data["id"] and task_c.data["intent"] == task_o.data["intent"]
    assert "Facts:" not in closed.start(task_c).messages[0]["content"]
    system = opened.start(task_o).messages[0]["content"]
    for it in task_o.data["interpretations"]:
        assert it["question"].rstrip("?") in system and it["answers"][0] in system
    ep = opened.start(task_o)
    opened.step(ep, intent_answer(ep))  # the reward is unchanged: the intended answer, unhedged
    assert opened.outcome(ep)["reward"] == 1.0
