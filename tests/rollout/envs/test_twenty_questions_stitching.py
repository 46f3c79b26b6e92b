"""The scripted players for stitching (``--env-args player=...``) do what they are named for, and the stitched
optimum (skill 1) beats the best of their games."""

import json
import random
import statistics

import pytest

from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.envs.base import Task
from rwft.rollout.envs.twenty_questions import ATTRIBUTES, GUESS_AT, OBJECTS, parse_turn
from rwft.rollout.envs.twenty_questions_stitching import main, measure, stitched_reward


def play(player: str, obj: str, seed: int, skill: float = 1.0):
    env = make_env("twenty-questions", ["reward=unit", f"player={player}"])
    ep = env.start(Task(f"t-{obj}-{seed}", {"object": obj}))
    game = 3 * sorted(OBJECTS).index(obj) + seed  # turn t of each game seeded apart, as rwft collect does
    while not ep.done:
        env.step(ep, env.scripted_action(ep, random.Random(1000 * game + ep.agent_turns), skill))
    return ep, env.outcome(ep)


def turns_with_candidates(ep):
    """(kind, arg, candidates before the turn) per agent turn, the candidates recomputed from the table."""
    gold, cands, out = ep.task.data["object"], sorted(OBJECTS), []
    for m in ep.messages:
        if m["role"] != "assistant":
            continue
        kind, arg = parse_turn(m["content"])
        out.append((kind, arg, cands))
        if kind == "ask":
            cands = [o for o in cands if (arg in OBJECTS[o]) == (arg in OBJECTS[gold])]
        elif kind == "guess":
            cands = [o for o in cands if o != arg]
    return out


def imbalance(attr, cands):
    return abs(2 * sum(attr in OBJECTS[o] for o in cands) - len(cands))


GAMES = [(obj, seed) for obj in sorted(OBJECTS) for seed in range(3)]


def even_splits(ep) -> list[bool]:
    """Per question of the game: whether it splits the candidates left as evenly as any question not asked yet."""
    asked, out = [], []
    for kind, arg, cands in turns_with_candidates(ep):
        if kind == "ask":
            best = min(imbalance(a, cands) for a in ATTRIBUTES
                       if a not in asked and 0 < sum(a in OBJECTS[o] for o in cands) < len(cands))
            out.append(imbalance(arg, cands) == best)
            asked.append(arg)
    return out


def guesses_open(ep) -> list[bool]:
    """Per guess of the game: whether it names an object still consistent with the answers."""
    return [arg in cands for kind, arg, cands in turns_with_candidates(ep) if kind == "guess"]


def test_ask_well_asks_the_most_even_split_and_guess_well_does_not():
    even = {p: [e for obj, seed in GAMES for e in even_splits(play(p, obj, seed)[0])]
            for p in ("ask-well", "guess-well")}
    assert len(even["ask-well"]) >= 3 * len(GAMES)  # at least three questions a game
    assert all(even["ask-well"])  # every question of ask-well is a most even split
    assert statistics.fmean(even["guess-well"]) < 0.5  # guess-well's random questions mostly are not


def test_guess_well_guesses_open_candidates_and_ask_well_guesses_blindly():
    wrong, open_ = {"ask-well": [], "guess-well": []}, {"ask-well": [], "guess-well": []}
    for player in wrong:
        for obj, seed in GAMES:
            ep, out = play(player, obj, seed)
            assert out["player"] == player
            turns = turns_with_candidates(ep)
            first = next(i for i, (k, _, _) in enumerate(turns) if k == "guess")
            assert all(k == "ask" for k, _, _ in turns[:first]) and all(k == "guess" for k, _, _ in turns[first:])
            assert len(turns[first][2]) <= GUESS_AT or player == "guess-well"  # ask-well halves down to <= 3
            for _, arg, cands in turns[first:]:
                wrong[player].append(arg != obj)
                open_[player].append(arg in cands)
    assert all(open_["guess-well"]) and statistics.fmean(open_["ask-well"]) < 0.3
    assert statistics.fmean(wrong["ask-well"]) > 0.9 > 0.6 > statistics.fmean(wrong["guess-well"])


def test_the_stitched_optimum_beats_both_players_and_their_best_game():
    rewards = {p: [play(p, obj, seed)[1]["reward"] for obj, seed in GAMES] for p in ("ask-well", "guess-well")}
    env = make_env("twenty-questions", ["reward=unit"])
    stitched = [stitched_reward(env, obj) for obj in sorted(OBJECTS)]
    assert all(play("skill", obj, 0)[1]["reward"] == s for obj, s in zip(sorted(OBJECTS), stitched, strict=True))
    mean_stitched = statistics.fmean(stitched)
    assert mean_stitched > statistics.fmean(rewards["guess-well"]) + 0.15
    assert mean_stitched > statistics.fmean(rewards["ask-well"]) + 0.4
    # the best of one game of each player per object, what filtered BC could copy at best
    best = [max(rewards["ask-well"][3 * i], rewards["guess-well"][3 * i]) for i in range(len(OBJECTS))]
    assert mean_stitched > statistics.fmean(best) + 0.1


def test_ask_or_guess_well_plays_one_player_per_game_and_draws_both():
    players = []
    for obj, seed in GAMES:
        ep, out = play("ask-or-guess-well", obj, seed)
        if out["player"] == "ask-well":
            assert all(even_splits(ep)) and not all(guesses_open(ep))
        else:
            assert out["player"] == "guess-well" and all(guesses_open(ep))
        players.append(out["player"])
    share = players.count("ask-well") / len(players)
    assert 0.35 < share < 0.65


def test_players_ignore_the_skill_and_the_option_is_checked():
    for obj, seed in GAMES[:12]:
        assert play("ask-well", obj, seed, 1.0)[0].messages == play("ask-well", obj, seed, 0.0)[0].messages
    with pytest.raises(RwftError, match="player=ask-badly"):
        make_env("twenty-questions", ["player=ask-badly"])


def record(context, gold, reward, player):
    return {"context_id": context, "reward": reward,
            "metadata": {"gold": gold, "player": player, "env_options": {"horizon": 20, "reward": "unit"}}}


def test_measure_of_a_hand_built_log(tmp_path, capsys):
    env = make_env("twenty-questions", ["reward=unit"])
    dog, cat = stitched_reward(env, "dog"), stitched_reward(env, "cat")
    rows = [record("a", "dog", 0.2, "ask-well"), record("a", "dog", 0.5, "guess-well"),
            record("b", "dog", dog, "ask-well"), record("c", "cat", 0.0, "ask-well"), record("c", "cat", 0.4, "x")]
    m = measure(rows)
    assert m["games"] == 5 and m["objects"] == 2
    assert m["best_per_object"] == pytest.approx((dog + 0.4) / 2)
    assert m["stitched_per_object"] == pytest.approx((dog + cat) / 2)
    assert m["best_of_m"] == pytest.approx((0.5 + dog + 0.4) / 3)
    assert m["stitched_per_context"] == pytest.approx((2 * dog + cat) / 3)
    assert m["objects_below"] == 1 and m["players"]["ask-well"] == pytest.approx((0.2 + dog) / 3)
    path = tmp_path / "logs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path)]) == 0
    assert "best logged below stitched on 1 of 2 objects" in capsys.readouterr().out
    with pytest.raises(RwftError, match="no twenty-questions games"):
        measure([record("a", "unicorn", 0.1, "x")])


def test_compare_collects_its_logs_from_a_scripted_player(tmp_path):
    from rwft.recipes.compare import CompareConfig
    from rwft.recipes.pi0_and_logs import collect_logs

    config = CompareConfig(output=str(tmp_path), env="twenty-questions", logs_policy="scripted",
                           env_args=["reward=unit", "player=ask-or-guess-well"], contexts=6, samples_per_context=2,
                           temperatures=[1.0])
    path = collect_logs(config, "no-such-pi0", tmp_path)
    rows = [json.loads(x) for x in open(path)]
    assert len(rows) == 12 and {r["metadata"]["policy"] for r in rows} == {"scripted:1"}
    assert {r["metadata"]["player"] for r in rows} == {"ask-well", "guess-well"}


def test_halves_scores_each_players_strong_half():
    from rwft.rollout.envs.twenty_questions_stitching import halves

    def rec(ep, out):
        return {"messages": ep.messages, "metadata": out}

    ask = halves([rec(*play("ask-well", obj, seed)) for obj, seed in GAMES])
    guess = halves([rec(*play("guess-well", obj, seed)) for obj, seed in GAMES])
    stitched = halves([rec(*play("skill", obj, 0)) for obj in OBJECTS])
    assert ask["even_questions"] == 1.0 and ask["open_guesses"] < 0.3
    assert guess["open_guesses"] == 1.0 and guess["even_questions"] < 0.5
    assert stitched == {"even_questions": 1.0, "open_guesses": 1.0}
    # by hand, hidden dog: alive (17 of 32 alive: the most even split), alive again (rules out nothing),
    # cat (open), bread (ruled out by "alive"), dog (open)
    texts = ["Is it alive?", "Is it alive?", "Is it a cat?", "Is it bread?", "Is it a dog?"]
    messages = [{"role": "assistant", "content": t} for t in texts]
    assert halves([{"messages": messages, "metadata": {"gold": "dog"}}]) == {
        "even_questions": 0.5, "open_guesses": pytest.approx(2 / 3)}
