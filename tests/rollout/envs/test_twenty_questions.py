
import pytest

from conftest import scripted_mean_reward
from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.envs.twenty_questions import ATTRIBUTES, OBJECTS, UNCLEAR, WIN, parse_turn


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Is it a dog?", ("guess", "dog")),
        ("my guess is the airplane", ("guess", "airplane")),
        ("Cats", ("guess", "cat")),
        ("Is it an animal?", ("ask", "animal")),
        ("Can it FLY?", ("ask", "flies")),
        ("Is it an animal that can fly?", ("unclear", None)),  # two properties at once
        ("Is it a dog or a cat?", ("unclear", None)),
        ("Is it bigger than a car?", ("unclear", None)),
        ("", ("unclear", None)),
        ("Est-ce un être vivant ?", ("unclear", None)),
        ("这是动物吗", ("unclear", None)),
    ],
)
def test_parse_turn(text, expected):
    assert parse_turn(text) == expected


def test_every_object_is_distinguishable():
    sigs = [frozenset(v) for v in OBJECTS.values()]
    assert len(set(sigs)) == len(sigs)
    assert all(a in ATTRIBUTES for v in OBJECTS.values() for a in v)


def test_game_rewards_and_horizon():
    env = make_env("twenty-questions")
    ep = env.start(env.tasks(1, 0)[0])
    obj = ep.task.data["object"]
    wrong = next(o for o in OBJECTS if o != obj)
    env.step(ep, "Is it alive?")
    assert ep.messages[-1]["content"] == ("Yes." if "living" in OBJECTS[obj] else "No.")
    env.step(ep, f"Is it a {wrong}?")
    assert ep.messages[-1]["content"] == "No." and not ep.done
    env.step(ep, f"Is it a {obj}?")
    out = env.outcome(ep)
    assert ep.done and ep.messages[-1]["content"] == WIN
    assert out == dict(out, reward=-3.0, won=True, turns=3, guesses=2, message_rewards=[-1.0] * 3)


@pytest.mark.parametrize("text", ["", "z" * 100000, "¿Es un ser vivo?", "Tell me about it.", None])
def test_odd_agent_text_gets_fixed_reply_until_horizon(text):
    env = make_env("twenty-questions", ["horizon=20"])
    ep = env.start(env.tasks(1, 0)[0])
    while not ep.done:
        env.step(ep, text)
    out = env.outcome(ep)
    assert ep.agent_turns == 20 and out["reward"] == -20.0 and not out["won"]
    assert out["unclear_turns"] == 20 and ep.messages[-1]["content"] == UNCLEAR


def test_scripted_skill_orders_reward():
    env = make_env("twenty-questions")
    tasks = env.tasks(40, 0)

    def mean(skill):
        return scripted_mean_reward(env, tasks, skill, stride=1000)

    good, bad = mean(1.0), mean(0.0)
    assert -8 <= good and bad < good - 3


def test_good_play_guesses_the_last_few_candidates_in_turn():
    """At skill 1 every game is won; the first guess comes once at most GUESS_AT candidates are left,
    and they are guessed in turn (so a game takes the questions plus at most GUESS_AT guesses)."""
    import random

    from rwft.rollout.envs.base import Task
    from rwft.rollout.envs.twenty_questions import GUESS_AT

    env = make_env("twenty-questions")
    left_at_first_guess = []
    for obj in sorted(OBJECTS):
        ep = env.start(Task(f"t-{obj}", {"object": obj}))
        while not ep.done:
            env.step(ep, env.scripted_action(ep, random.Random(ep.agent_turns), 1.0))
        turns = [parse_turn(m["content"]) for m in ep.messages if m["role"] == "assistant"]
        asked = [a for k, a in turns if k == "ask"]
        first_guess = next(i for i, (k, _) in enumerate(turns) if k == "guess")
        assert all(k == "ask" for k, _ in turns[:first_guess]) and all(k == "guess" for k, _ in turns[first_guess:])
        cands = [o for o in OBJECTS if all((a in OBJECTS[o]) == (a in OBJECTS[obj]) for a in asked)]
        assert 1 <= len(cands) <= GUESS_AT and len(turns) - first_guess <= len(cands)
        assert env.outcome(ep)["won"]
        left_at_first_guess.append(len(cands))
    assert max(left_at_first_guess) > 1  # some games guess before a single candidate is left


def test_prefix_scores_of_a_hand_built_game():
    """Candidates left after each turn counted by hand from the table: 17 living objects, 4 of them mammals,
    3 once the cat is ruled out, 1 that barks. R(<=t) = -(t + log2 n_t + 1); at the win, the reward."""
    import math

    from rwft.rollout.envs.base import Task
    from rwft.rollout.envs.twenty_questions import remaining_candidates

    env = make_env("twenty-questions")
    ep = env.start(Task("t", {"object": "dog"}))
    turns = ["Is it alive?", "Tell me about it.", "Is it a mammal?", "Is it a cat?", "Does it bark?", "Is it a dog?"]
    scores, counts = [], []
    for text in turns:
        env.step(ep, text)
        prefix = ep.messages[:-1]  # up to the agent's turn, without the oracle's reply
        counts.append(len(remaining_candidates(prefix, "dog")))
        scores.append(env.prefix_score(prefix, env.outcome(ep)))
    assert counts == [17, 17, 4, 3, 1, 0]
    expected = [-(1 + math.log2(17) + 1), -(2 + math.log2(17) + 1), -6.0, -(4 + math.log2(3) + 1), -6.0, -6.0]
    assert scores == pytest.approx(expected)
    assert scores[-1] == env.outcome(ep)["reward"]
    # a turn that eliminates nothing costs exactly its turn
    assert scores[1] - scores[0] == pytest.approx(-1.0)
    short = make_env("twenty-questions", ["horizon=3"])
    assert short.prefix_score(ep.messages[:2], {"gold": "dog"}) == -3.0  # never below the loss's -horizon
    assert env.prefix_score(ep.messages[:2], {"gold": "unicorn"}) is None
    assert make_env("mcqa").prefix_score(ep.messages[:2], {"gold": "A"}) is None


def test_unit_reward_is_the_turns_reward_mapped_onto_0_1():
    """reward=unit: 1 - k / horizon for a win at turn k, 0 without a win, no per-message rewards; prefix
    scores mapped the same way (affine), so redistributed credits keep summing to the reward."""
    from rwft.rollout.envs.base import Task

    turns = make_env("twenty-questions", ["horizon=10"])
    unit = make_env("twenty-questions", ["horizon=10", "reward=unit"])
    for text_of_last in ("Is it a dog?", "Is it a cat?"):
        eps = [e.start(Task("t", {"object": "dog"})) for e in (turns, unit)]
        for env, ep in zip((turns, unit), eps, strict=True):
            for text in ("Is it alive?", "Is it a mammal?", text_of_last):
                env.step(ep, text)
        a, b = turns.outcome(eps[0]), unit.outcome(eps[1])
        assert b["reward"] == pytest.approx(1 + a["reward"] / 10) and "message_rewards" not in b
        assert 0 <= b["reward"] <= 1
        for t in range(1, 4):
            prefix = eps[1].messages[: 2 * t]
            assert unit.prefix_score(prefix, b) == pytest.approx(1 + turns.prefix_score(prefix, a) / 10)
    while not eps[1].done:
        unit.step(eps[1], "Is it a cat?")
    assert unit.outcome(eps[1])["reward"] == 0.0  # no win
    with pytest.raises(RwftError, match="reward=points"):
        make_env("twenty-questions", ["reward=points"])
