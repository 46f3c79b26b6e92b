import copy
import json
import random

import pytest

from conftest import scripted_mean_reward
from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.envs.tod import ask
from rwft.rollout.envs.tod_domain import (
    ACCEPT,
    ANY,
    BYE,
    CONSTRAINTS,
    DEFAULT_PEOPLE,
    ONE_PLACE,
    PLACE,
    SLOTS,
    TOOLS,
    UNKNOWN,
    meets,
    parse_tool_calls,
    resolve,
    run_tool,
    stated_slots,
)


def fresh(k=0, seed=0, args=()):
    env = make_env("tod", list(args))
    return env, env.start(env.tasks(k + 1, seed)[k])


def call(tool, **args):
    return tool_calls_text([{"name": tool, "arguments": args}])


def play(env, ep, skill=1.0, stride=0):
    while not ep.done:
        env.step(ep, env.scripted_action(ep, random.Random(stride + ep.agent_turns), skill))
    return env.outcome(ep)


def matching(ep):
    """A place meeting the goal's constraints, and one that does not (or None)."""
    db, goal = ep.task.data["db"], ep.task.data["goal"]
    good = next(p for p in db["places"] if meets(p, goal))
    bad = next((p for p in db["places"] if not meets(p, goal)), None)
    return good, bad


# ---------------------------------------------------------------- tools


@pytest.mark.parametrize("k", range(6))
def test_tools_run_on_the_episodes_copy_and_the_task_database_never_changes(k):
    env, ep = fresh(k)
    original = copy.deepcopy(ep.task.data["db"])
    out = play(env, ep)
    assert out["success"] and out["booked"] and ep.state["db"]["bookings"]
    assert ep.task.data["db"] == original and original["bookings"] == []
    again = env.start(ep.task)
    assert again.state["db"] == original and again.state["db"] is not ep.task.data["db"]


def test_tool_results():
    env, ep = fresh()
    db = copy.deepcopy(ep.task.data["db"])
    place = db["places"][0]
    assert run_tool(db, "search", {}) == ([p["name"] for p in db["places"]], True)
    names, ok = run_tool(db, "search", {s: place[s] for s in CONSTRAINTS})
    assert ok and place["name"] in names and all(
        all(p[s] == place[s] for s in CONSTRAINTS) for p in db["places"] if p["name"] in names)
    assert run_tool(db, "search", {"area": "mars"}) == ([], True)  # outside the vocabulary: valid, no match
    assert run_tool(db, "lookup", {"name": place["name"]}) == (place, True)
    assert run_tool(db, "lookup", {"name": "nowhere"})[0].keys() == {"error"}
    assert run_tool(db, "lookup", {}) == ({"error": "no place given and no search yet"}, True)
    assert run_tool(db, "book", {"name": place["name"], "people": 9}) == ({"error": "people must be 1 to 8"}, True)
    assert run_tool(db, "book", {"name": place["name"], "people": 3}) == (
        {"booked": place["name"], "people": 3}, True)
    assert db["bookings"] == [{"name": place["name"], "people": 3}]
    assert run_tool(db, "book", {"name": place["name"], "people": 3}) == ({"error": "already booked"}, True)


def test_arguments_left_out_take_the_dialogue_state():
    said = {"area": "north", "food": ANY, "people": 5}
    assert resolve("search", {}, said, None) == {"area": "north", "food": ANY}
    assert resolve("search", {"area": "west", "price": "cheap"}, said, "sun") == {
        "area": "west", "price": "cheap", "food": ANY}
    assert resolve("lookup", {}, said, "sun") == {"name": "sun"}
    assert resolve("lookup", {}, said, None) == {}
    assert resolve("book", {}, said, "sun") == {"name": "sun", "people": 5}
    assert resolve("book", {"name": "sky"}, {}, "sun") == {"name": "sky", "people": DEFAULT_PEOPLE}


@pytest.mark.parametrize("name,args", [
    ("fly", {}), ("search", {"name": "star"}), ("search", {"people": 2}), ("lookup", {"area": ANY}),
    ("book", {"name": "star", "people": "2"}), ("book", {"name": "star", "people": True}), ("search", {"area": 3}),
])
def test_invalid_calls_get_an_error_and_change_nothing(name, args):
    env, ep = fresh()
    db = copy.deepcopy(ep.task.data["db"])
    result, valid = run_tool(db, name, args)
    assert not valid and result.keys() == {"error"} and db == ep.task.data["db"]


@pytest.mark.parametrize("text,content,calls", [
    ("Hello.", "Hello.", []),
    ("Let me look.\n" + call("search", area="north"), "Let me look.",
     [{"name": "search", "arguments": {"area": "north"}}]),
    (call("lookup", name="sun") + "\n" + call("lookup", name="sky"), "",
     [{"name": "lookup", "arguments": {"name": "sun"}}, {"name": "lookup", "arguments": {"name": "sky"}}]),
    ('<tool_call>{"name": "search"}</tool_call> trailing', "", [{"name": "search", "arguments": {}}]),
    ('<tool_call>\n{"name": "search", "arguments": {}}', None, None),  # not closed
    ("<tool_call>{name: search}</tool_call>", None, None),  # not JSON
    ('<tool_call>["search"]</tool_call>', None, None),
    ('<tool_call>{"arguments": {}}</tool_call>', None, None),
    ('<tool_call>{"name": "search", "arguments": "area=north"}</tool_call>', None, None),
])
def test_parse_tool_calls(text, content, calls):
    got = parse_tool_calls(text)
    assert got == (content if calls is not None else text.strip(), calls)


# ---------------------------------------------------------------- the scripted user


@pytest.mark.parametrize("k", range(12))
def test_user_answers_follow_its_goal(k):
    env, ep = fresh(k, args=["any_rate=0.4"])
    goal = ep.task.data["goal"]
    assert stated_slots(ep.messages[-1]["content"]) == {s: goal[s] for s in ep.task.data["told"]}
    for slots in ([s] for s in SLOTS):
        env.step(ep, ask(slots))
        assert stated_slots(ep.messages[-1]["content"]) == {s: goal[s] for s in slots}
    env.step(ep, "Which area and how many people?")
    assert stated_slots(ep.messages[-1]["content"]) == {"area": goal["area"], "people": goal["people"]}
    env.step(ep, "Do you like music?")
    assert ep.messages[-1]["content"] == UNKNOWN and not ep.done


def test_user_rejects_wrong_offers_accepts_right_ones_and_leaves_after_a_booking():
    for k in range(20):
        env, ep = fresh(k, args=["any_rate=0"])
        good, bad = matching(ep)
        if bad is not None:
            break
    goal = ep.task.data["goal"]
    env.step(ep, f"How about {bad['name']}?")
    reply = ep.messages[-1]["content"]
    slot = next(s for s in CONSTRAINTS if bad[s] != goal[s])
    assert reply.startswith("No, ") and stated_slots(reply) == {slot: goal[slot]}
    env.step(ep, f"{good['name']} or {bad['name']}?")
    assert ep.messages[-1]["content"] == ONE_PLACE
    env.step(ep, f"How about {good['name']}?")
    assert ep.messages[-1]["content"] == ACCEPT
    env.step(ep, call("book", name=good["name"], people=goal["people"]))
    assert not ep.done and ep.messages[-1]["role"] == "tool"
    env.step(ep, "Done.")
    assert ep.done and ep.messages[-1]["content"] == BYE
    out = env.outcome(ep)
    assert out["inform"] and out["success"] and out["reward"] == 1.0


def test_name_placeholder_offers_the_first_place_of_the_last_search():
    env, ep = fresh(args=["any_rate=0"])
    env.step(ep, f"How about {PLACE}?")
    assert ep.messages[-1]["content"] == UNKNOWN  # no search yet: it names nothing
    env.step(ep, call("search", area=ANY, food=ANY, price=ANY))
    first = json.loads(ep.messages[-1]["content"])[0]
    first_place = next(p for p in ep.task.data["db"]["places"] if p["name"] == first)
    env.step(ep, f"How about {PLACE}?")
    assert ep.state["offered"] == [first]
    assert (ep.messages[-1]["content"] == ACCEPT) == meets(first_place, ep.task.data["goal"])


def test_dont_care_slots_are_said_and_met_by_any_value():
    for k in range(40):
        env, ep = fresh(k, args=["any_rate=0.5"])
        if ANY in ep.task.data["goal"].values():
            break
    goal = ep.task.data["goal"]
    slot = next(s for s in CONSTRAINTS if goal[s] == ANY)
    env.step(ep, ask([slot]))
    assert ep.messages[-1]["content"] == f"I want any {slot}."
    assert all(meets(dict(p, **{slot: v}), goal) for p in ep.task.data["db"]["places"] if meets(p, goal)
               for v in CONSTRAINTS[slot])


# ---------------------------------------------------------------- reward on hand-built episodes


def book_episode(people=None, place=None, reward="success"):
    """Ask everything, search, offer, book (the state's values, or the party size / place given), confirm."""
    env, ep = fresh(args=["any_rate=0", f"reward={reward}"])
    env.step(ep, ask(list(SLOTS)))
    env.step(ep, call("search"))
    env.step(ep, f"How about {PLACE}?")
    assert ep.messages[-1]["content"] == ACCEPT
    args = {**({} if people is None else {"people": people}), **({} if place is None else {"name": place})}
    env.step(ep, call("book", **args))
    env.step(ep, "Your table is booked.")
    assert ep.done
    return env, ep, env.outcome(ep)


def test_right_episode_succeeds():
    env, ep, out = book_episode()
    assert out == dict(out, reward=1.0, success=True, inform=True, slot_credit=1.0, booked=True, turns=5,
                       tool_calls=2, invalid_calls=0)
    goal = ep.task.data["goal"]
    [booked] = out["db"]["bookings"]
    place = next(p for p in out["db"]["places"] if p["name"] == booked["name"])
    assert booked["people"] == goal["people"] and meets(place, goal) and out["goal"] == goal
    assert ep.messages[-4]["tool_calls"][0]["function"] == {"name": "book", "arguments": "{}"}


@pytest.mark.parametrize("reward", ["success", "slots"])
def test_one_slot_wrong_fails_with_three_quarters_credit(reward):
    _, ep, out = book_episode(people=fresh()[1].task.data["goal"]["people"] % 6 + 1, reward=reward)
    assert not out["success"] and out["slot_credit"] == 0.75 and out["booked"]
    assert out["reward"] == (0.0 if reward == "success" else 0.75)


def test_wrong_place_loses_the_slots_it_gets_wrong():
    env, ep = fresh(args=["any_rate=0"])
    bad = matching(ep)[1]
    env, ep, out = book_episode(place=bad["name"], reward="slots")
    goal = ep.task.data["goal"]
    wrong = sum(bad[s] != goal[s] for s in CONSTRAINTS)
    assert wrong and not out["success"] and out["reward"] == pytest.approx((4 - wrong) / 4)


def test_booking_before_the_party_size_is_said_takes_the_default():
    env, ep = fresh(args=["told_rate=0", "any_rate=0"])
    env.step(ep, ask(["area", "food", "price"]))
    env.step(ep, call("search"))
    env.step(ep, call("book"))
    out = env.outcome(ep)
    assert out["db"]["bookings"][0]["people"] == DEFAULT_PEOPLE and not out["inform"]
    assert out["success"] == (ep.task.data["goal"]["people"] == DEFAULT_PEOPLE)


@pytest.mark.parametrize("reward", ["success", "slots"])
def test_missing_action_pays_nothing(reward):
    env, ep = fresh(args=[f"reward={reward}", "max_turns=4"])
    env.step(ep, ask(list(SLOTS)))
    env.step(ep, call("search"))
    env.step(ep, f"How about {PLACE}?")
    env.step(ep, "Enjoy your meal.")
    out = env.outcome(ep)
    assert ep.done and out["inform"] and not out["booked"]
    assert out["reward"] == 0.0 and out["slot_credit"] == 0.0 and not out["success"]


def test_malformed_call_ends_the_episode_as_one_invalid_call():
    env, ep = fresh()
    text = call("search", area="north").removesuffix("</tool_call>")
    env.step(ep, text)
    out = env.outcome(ep)
    assert ep.done and out["invalid_calls"] == 1 and out["tool_calls"] == 0 and out["reward"] == 0.0
    assert ep.messages[-1] == {"role": "assistant", "content": text}


def test_invalid_call_gets_an_error_result_and_the_episode_goes_on():
    env, ep = fresh(args=["any_rate=0"])
    env.step(ep, ask(list(SLOTS)))
    env.step(ep, "Checking.\n" + call("reserve", name="sun"))
    assert not ep.done and json.loads(ep.messages[-1]["content"]) == {"error": "unknown tool 'reserve'"}
    assistant = ep.messages[-2]
    assert assistant["content"] == "Checking." and assistant["tool_calls"] == [
        {"type": "function", "id": "call_0", "function": {"name": "reserve", "arguments": '{"name": "sun"}'}}]
    assert ep.messages[-1]["tool_call_id"] == "call_0"
    env.step(ep, call("search") + "\n" + call("book"))  # two calls in one turn
    assert [m["tool_call_id"] for m in ep.messages[-2:]] == ["call_1", "call_2"]
    env.step(ep, "Booked.")
    out = env.outcome(ep)
    assert out["success"] and out["invalid_calls"] == 1 and out["tool_calls"] == 3 and not out["inform"]


@pytest.mark.parametrize("text", ["", "x" * 10000, "¿Mesa para dos?", None])
def test_odd_text_gets_a_fixed_reply_until_max_turns(text):
    env, ep = fresh(args=["max_turns=3"])
    while not ep.done:
        env.step(ep, text)
    out = env.outcome(ep)
    assert ep.agent_turns == 3 and out["reward"] == 0.0 and ep.messages[-1]["content"] == UNKNOWN


# ---------------------------------------------------------------- tasks, options and the scripted agent


def test_tasks_are_deterministic_and_seeded():
    env = make_env("tod")
    assert [t.data for t in env.tasks(5, 3)] == [t.data for t in env.tasks(5, 3)]
    assert [t.data for t in env.tasks(5, 3)] != [t.data for t in env.tasks(5, 4)]
    assert len({t.context_id for t in env.tasks(50, 0)}) == 50
    for t in env.tasks(50, 0):
        assert any(meets(p, t.data["goal"]) for p in t.data["db"]["places"])


@pytest.mark.parametrize("arg", ["source=tau2-telecom", "reward=turns", "places=11", "places=1", "any_rate=2",
                                 "max_turns=0"])
def test_bad_options(arg):
    with pytest.raises(RwftError, match=arg.split("=")[0]):
        make_env("tod", [arg])


def test_scripted_skill_orders_the_reward():
    env = make_env("tod")
    tasks = env.tasks(60, 0)
    best, mid, worst = (scripted_mean_reward(env, tasks, s, 100) for s in (1.0, 0.5, 0.0))
    assert best == 1.0 and best > mid > worst


def test_scripted_agent_acts_on_what_it_was_told():
    env, ep = fresh(args=["told_rate=0"])
    action = env.scripted_action(ep, random.Random(0), 1.0)
    assert action == ask(list(SLOTS))
    env.step(ep, action)
    assert ep.state["said"] == ep.task.data["goal"]
    assert env.scripted_action(ep, random.Random(0), 1.0) == call("search")


# ---------------------------------------------------------------- logs: rwft's data layer and the tiny preset


def test_collected_episode_loads_and_trains_the_calls_not_the_results(tmp_path):
    from rwft.data.encode import encode_conversation
    from rwft.data.io import load_conversations
    from rwft.presets import load_tokenizer
    from rwft.rollout.collect import CollectConfig, run_collect

    out = tmp_path / "tod.jsonl"
    run_collect(CollectConfig(env="tod", out=str(out), policy="scripted:mixed", contexts=4, samples_per_context=2,
                              quiet=True))
    convs = load_conversations(out)
    assert len(convs) == 8 and all(c.tools == TOOLS for c in convs)
    assert {k for c in convs for k in ("success", "inform", "tool_calls", "invalid_calls", "goal", "db")
            if k in c.metadata} == {"success", "inform", "tool_calls", "invalid_calls", "goal", "db"}
    tok = load_tokenizer("tiny")
    conv = next(c for c in convs if any(m["role"] == "tool" for m in c.messages))
    enc = encode_conversation(tok, conv.messages, max_length=10**6, tools=conv.tools)
    agent = tok.decode([t for t, k in zip(enc.input_ids, enc.turn_index, strict=True) if k >= 0])
    other = tok.decode([t for t, k in zip(enc.input_ids, enc.turn_index, strict=True) if k < 0])
    calls = [c for m in conv.messages for c in m.get("tool_calls", [])]
    assert calls and all(tool_calls_text([c]) in agent for c in calls)
    results = [m["content"] for m in conv.messages if m["role"] == "tool"]
    assert all(r in other and r not in agent for r in results)
    assert '"name": "search"' in other  # the tools' schemas are in the prompt, not trained
    assert sorted(set(enc.turn_index) - {-1}) == list(range(len(conv.agent_turns())))


def test_hf_policy_sees_the_calls_and_tools_as_training_renders_them():
    from rwft.data.chat_template import prepare_messages, renderer
    from rwft.rollout.hf_policy import HFPolicy

    env, ep = fresh()
    play(env, ep)
    policy = HFPolicy("tiny", max_new_tokens=4)
    cut = ep.messages[:-2]  # up to the tool result of the booking: the agent acts next
    ids = policy._render(cut, 10**6, ep.tools)
    msgs, _, _, tool_arg = prepare_messages(policy.tok, cut, "assistant", ep.tools)
    text = renderer(policy.tok, tool_arg, msgs)(msgs, True)
    assert policy.tok.decode(ids) == text and "<tool_call>" in text and "<tools>" in text
