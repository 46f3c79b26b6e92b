import hashlib
import json
import random

import pytest

from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError
from rwft.rollout.envs import make_env
from rwft.rollout.envs.tod_tau2 import DONE, LEAVE, YES, Tau2Env, first_person, run_tool, tools_of
from rwft.rollout.envs.tod_tau2_data import Db, check_arguments, domain, licence


def env_of(name, *args):
    return make_env("tod", [f"source=tau2-{name}", *args])


def task_by_id(env, tid):
    n = len(domain(env.domain)["splits"][env.options.split])
    return next(t for t in env.tasks(n, 0) if t.data["id"] == tid)


def play(env, ep, skill=1.0, seed=0):
    rng = random.Random(seed)
    while not ep.done:
        env.step(ep, env.scripted_action(ep, rng, skill))
    return env.outcome(ep)


def call(name, **args):
    return tool_calls_text([{"name": name, "arguments": args}])


def db_hash(name):
    return hashlib.sha256(json.dumps(domain(name)["db"], sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the wheel's data


@pytest.mark.parametrize("name,tasks,splits", [
    ("mock", 9, {"base": 9}),
    ("retail", 114, {"train": 74, "test": 40, "base": 114}),
    ("airline", 50, {"train": 30, "test": 20, "base": 50}),
])
def test_task_files_load_and_every_expected_action_fits_an_implemented_tool(name, tasks, splits):
    data = domain(name)
    assert len(data["tasks"]) == tasks
    assert {k: len(v) for k, v in data["splits"].items()} == splits
    schemas = {s["function"]["name"]: s["function"]["parameters"] for s in data["schemas"]}
    assert set(schemas) == set(tools_of(name)) == set(data["tools"])
    assert "policy" in data["policy"].lower()
    for task in data["tasks"].values():
        for action in (task["evaluation_criteria"] or {}).get("actions") or []:
            assert check_arguments(schemas[action["name"]], action["arguments"]) is None, (task["id"], action)
    assert "Sierra Research" in licence() and "MIT" in licence()


def test_an_unknown_source_or_split_or_a_user_url_without_model_is_refused():
    with pytest.raises(RwftError, match="tau2-airline"):
        make_env("tod", ["source=tau2-telecom"])
    with pytest.raises(RwftError, match="split=train: tau2-mock has base"):
        env_of("mock", "split=train")
    with pytest.raises(RwftError, match="user_model"):
        env_of("mock", "user_url=http://127.0.0.1:9/v1")
    assert isinstance(env_of("mock"), Tau2Env) and not isinstance(make_env("tod"), Tau2Env)


# ---------------------------------------------------------------- the expert and the reward


def test_the_expert_reaches_reward_1_on_every_mock_task_but_the_one_without_expected_actions():
    env = env_of("mock")
    missed = []
    for task in env.tasks(9, 0):
        out = play(env, env.start(task))
        assert out["goal"] == {"domain": "mock", "split": "base", "task_id": task.data["id"]}
        if out["reward"] != 1.0:
            missed.append(task.data["id"])
        else:
            assert out["success"] and out["stopped"] and out["invalid_calls"] == out["tool_errors"] == 0
    # its goal is only an env assertion (task_2 completed): there is no action to replay
    assert missed == ["update_task_with_history_and_env_assertions"]


@pytest.mark.parametrize("name,split", [("retail", "test"), ("airline", "train")])
def test_the_expert_reaches_reward_1_on_retail_and_airline_tasks(name, split):
    env = env_of(name, f"split={split}")
    for task in env.tasks(6, 1):
        ep = env.start(task)
        out = play(env, ep)
        assert out["reward"] == 1.0 and out["db_match"] and out["invalid_calls"] == 0, (task.context_id, out)
        assert out["end"] in ("user", "transfer") and out["turns"] <= 4
        if out["acted"]:
            assert out["db_changes"] and out["db_hash"] != Db(domain(name)["db"]).digest()


def test_a_wrong_action_gives_reward_0():
    env = env_of("mock")
    ep = env.start(task_by_id(env, "create_task_1"))
    env.step(ep, call("create_task", user_id="user_1", title="Unimportant Meeting"))
    assert json.loads(ep.messages[-1]["content"])["title"] == "Unimportant Meeting"
    env.step(ep, "Done, the task is created.")
    assert ep.messages[-1]["content"] == LEAVE and ep.done  # the user has nothing to add and leaves
    out = env.outcome(ep)
    assert out["reward"] == 0.0 and out["stopped"] and not out["db_match"] and out["acted"]
    assert out["slot_credit"] == 0.0
    right = env.start(ep.task)
    env.step(right, call("create_task", user_id="user_1", title="Important Meeting"))
    env.step(right, "Done, the task is created.")
    assert right.messages[-1]["content"] == DONE and env.outcome(right)["reward"] == 1.0


def test_a_retail_exchange_of_another_item_gives_reward_0_and_slots_give_partial_credit():
    env = env_of("retail", "reward=slots")
    task = task_by_id(env, "1")
    actions = domain("retail")["tasks"]["1"]["evaluation_criteria"]["actions"]
    ep = env.start(task)
    env.step(ep, tool_calls_text([{"name": a["name"], "arguments": a["arguments"]} for a in actions[:-1]]))
    gold = actions[-1]["arguments"]
    order = domain("retail")["db"]["orders"][gold["order_id"]]
    product = next(i["product_id"] for i in order["items"] if i["item_id"] == gold["item_ids"][0])
    other = next(v for v, d in domain("retail")["db"]["products"][product]["variants"].items()
                 if d["available"] and v not in gold["new_item_ids"] + gold["item_ids"])
    wrong = dict(gold, new_item_ids=[other])  # another keyboard, available: the tool accepts it
    env.step(ep, "Shall I proceed with the exchange?")
    assert ep.messages[-1]["content"] == YES
    env.step(ep, call("exchange_delivered_order_items", **wrong))
    while not ep.done:
        env.step(ep, "Your exchange is requested.")
    out = env.outcome(ep)
    assert not out["db_match"] and out["acted"] and out["reward"] == out["slot_credit"] == 4 / 5
    assert env_of("retail").outcome(ep)["reward"] == 0.0


def test_only_the_checks_of_the_tasks_reward_basis_count():
    env = env_of("mock")
    ep = env.start(task_by_id(env, "impossible_task_1"))  # basis DB and ACTION: transfer with any summary
    env.step(ep, call("transfer_to_human_agents", summary="wants to delete tasks"))
    out = env.outcome(ep)
    assert ep.done and out["end"] == "transfer" and out["reward"] == 1.0
    ep = env.start(ep.task)
    env.step(ep, "I cannot delete tasks.")
    assert env.outcome(ep)["reward"] == 0.0  # the user left; ACTION is not met


def test_mixed_skill_gives_rewards_that_differ():
    env = env_of("retail", "split=train")
    rewards = [play(env, env.start(t), skill=0.5, seed=k)["reward"] for k, t in enumerate(env.tasks(12, 0))]
    assert 0 < sum(rewards) < len(rewards)


# ---------------------------------------------------------------- the database copy


@pytest.mark.parametrize("name", ["retail", "airline"])
def test_tool_execution_never_changes_the_original_database(name):
    before = db_hash(name)
    env = env_of(name)
    tasks = env.tasks(8, 3)
    outs = [play(env, env.start(t)) for t in tasks]
    assert any(o["acted"] for o in outs)
    assert db_hash(name) == before
    again = env.start(tasks[0])
    assert again.state["db"].changes() == {} or tasks[0].data["init"]
    assert again.state["db"].digest() == env.start(tasks[0]).state["db"].digest()


def test_a_db_view_edits_its_own_copy():
    base = {"users": {"u": {"tasks": []}}}
    a = Db(base)
    a.edit("users", "u")["tasks"].append("t")
    b = a.copy()
    b.edit("users", "u")["tasks"].append("s")
    assert base["users"]["u"]["tasks"] == [] and a.get("users", "u")["tasks"] == ["t"]
    assert b.changes() == {"users": {"u": {"tasks": ["t", "s"]}}} and a.digest() != b.digest()
    a.edit("users", "u")["tasks"].clear()
    assert a.changes() == {} and a.digest() == Db(base).digest()


def test_airline_booking_checks_the_payment_and_changes_seats_only_in_the_copy():
    db = Db(domain("airline")["db"])
    user = next(u for u in db.values("users")
                if any(m["source"] == "credit_card" for m in u["payment_methods"].values()))
    card = next(k for k, m in user["payment_methods"].items() if m["source"] == "credit_card")
    flight = next(f for f in db.values("flights") if any(d["status"] == "available" for d in f["dates"].values()))
    date = next(d for d, v in flight["dates"].items() if v["status"] == "available")
    seats = flight["dates"][date]["available_seats"]["economy"]
    price = flight["dates"][date]["prices"]["economy"]
    args = {"user_id": user["user_id"], "origin": flight["origin"], "destination": flight["destination"],
            "flight_type": "one_way", "cabin": "economy", "flights": [{"flight_number": flight["flight_number"],
                                                                       "date": date}],
            "passengers": [{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}],
            "payment_methods": [{"payment_id": card, "amount": price + 1}], "total_baggages": 0,
            "nonfree_baggages": 0, "insurance": "no"}
    text, valid, error = run_tool("airline", db, "book_reservation", args)
    assert valid and error
    assert text == f"Error: Payment amount does not add up, total price is {price}, but paid {price + 1}"
    assert db.changes() == {}
    args["payment_methods"][0]["amount"] = price
    text, valid, error = run_tool("airline", db, "book_reservation", args)
    assert valid and not error and json.loads(text)["reservation_id"] == "HATHAT"
    assert db.get("flights", flight["flight_number"])["dates"][date]["available_seats"]["economy"] == seats - 1
    original = domain("airline")["db"]["flights"][flight["flight_number"]]["dates"][date]
    assert original["available_seats"]["economy"] == seats
    assert user["reservations"] != db.get("users", user["user_id"])["reservations"]


# ---------------------------------------------------------------- calls and records


def test_malformed_and_invalid_calls_are_counted_not_raised():
    env = env_of("retail")
    task = env.tasks(1, 0)[0]
    ep = env.start(task)
    env.step(ep, call("no_such_tool", x=1))
    assert ep.messages[-1]["content"] == "Error: Tool 'no_such_tool' not found." and not ep.done
    env.step(ep, call("get_order_details", order_id=7))  # breaks the schema, but runs (as in tau2)
    assert ep.messages[-1]["content"] == "Error: Order not found"
    env.step(ep, call("get_order_details", order="#W1"))  # tau2's Python call raises TypeError: same text
    assert ep.messages[-1]["content"] == \
        "Error: RetailTools.get_order_details() got an unexpected keyword argument 'order'"
    env.step(ep, call("modify_user_address", user_id="u", city="c"))
    assert ep.messages[-1]["content"] == "Error: RetailTools.modify_user_address() missing 5 required positional " \
        "arguments: 'address1', 'address2', 'state', 'country', and 'zip'"
    env.step(ep, call("get_order_details", order_id="#W0000000"))
    assert ep.messages[-1]["content"] == "Error: Order not found"
    env.step(ep, call("calculate", expression="2 +* 3"))
    out = env.outcome(ep)
    assert (out["invalid_calls"], out["tool_errors"], out["tool_calls"]) == (4, 6, 6) and not ep.done
    env.step(ep, '<tool_call>\n{"name": "get_order_details", "arguments": {"order_id": "#W1"}\n')
    out = env.outcome(ep)
    assert ep.done and out["end"] == "malformed" and out["invalid_calls"] == 5 and out["reward"] == 0.0
    assert "tool_calls" not in ep.messages[-1]


def test_a_call_that_breaks_the_schema_still_counts_for_action():
    env = env_of("mock")
    ep = env.start(task_by_id(env, "impossible_task_1"))  # basis DB and ACTION: transfer with any summary
    env.step(ep, call("transfer_to_human_agents", summary="wants all tasks deleted", note="urgent"))
    result = ep.messages[-1]["content"]
    assert not ep.done  # the transfer failed: the agent goes on
    while not ep.done:
        env.step(ep, "I cannot delete tasks.")
    out = env.outcome(ep)
    assert out["slot_credit"] == 1.0 and out["reward"] == 1.0  # tau2's ACTION reads every tool call
    assert out["end"] == "user" and out["invalid_calls"] == out["tool_errors"] == 1
    assert result == "Error: MockTools.transfer_to_human_agents() got an unexpected keyword argument 'note'"


def test_a_write_outside_the_enum_runs_and_fails_the_db_check():
    env = env_of("mock")
    ep = env.start(task_by_id(env, "impossible_task_1"))  # nothing to write
    env.step(ep, call("update_task_status", task_id="task_1", status="done"))  # tau2 writes it, unchecked
    assert json.loads(ep.messages[-1]["content"])["status"] == "done"
    assert ep.state["db"].get("tasks", "task_1")["status"] == "done"
    env.step(ep, call("transfer_to_human_agents", summary="wants all tasks deleted"))
    out = env.outcome(ep)
    assert out["end"] == "transfer" and out["invalid_calls"] == 1 and out["tool_errors"] == 0 and out["acted"]
    assert not out["db_match"] and out["slot_credit"] == 1.0 and out["reward"] == 0.0


def test_a_float_for_an_integer_runs_and_is_stored_as_tau2s_model_stores_it():
    env = env_of("airline")
    task = task_by_id(env, "27")  # get_user_details, then send_certificate(amount=150)
    ep = env.start(task)
    env.step(ep, tool_calls_text([{"name": "get_user_details", "arguments": {"user_id": "ethan_martin_2396"}},
                                  {"name": "send_certificate",
                                   "arguments": {"user_id": "ethan_martin_2396", "amount": 150.0}}]))
    assert ep.messages[-1]["content"] == \
        "Certificate certificate_3221322 added to user ethan_martin_2396 with amount 150.0."
    assert ep.state["db"].get("users", "ethan_martin_2396")["payment_methods"]["certificate_3221322"] == {
        "source": "certificate", "id": "certificate_3221322", "amount": 150.0}  # Certificate.amount: float
    while not ep.done:
        env.step(ep, "Done: a certificate of $150 is on your account.")
    out = env.outcome(ep)
    assert out["invalid_calls"] == 1 and out["tool_errors"] == 0
    assert out["db_match"] and out["slot_credit"] == 1.0 and out["reward"] == 1.0


def test_where_tau2_builds_a_model_its_validation_converts_or_refuses_the_arguments():
    db = Db(domain("retail")["db"])
    user = next(iter(db.keys("users")))
    address = {"address1": "1 Main St", "address2": "", "city": "X", "state": "CA", "country": "USA", "zip": 12345}
    text, valid, error = run_tool("retail", db, "modify_user_address", {"user_id": user, **address})
    assert not valid and error and "zip" in text and db.changes() == {}  # UserAddress.zip: str
    db = Db(domain("airline")["db"])
    res = next(r for r in db.values("reservations") if r["passengers"] and r.get("status") != "cancelled")
    people = [dict(p, seat="12A") for p in res["passengers"]]
    text, valid, error = run_tool("airline", db, "update_reservation_passengers",
                                  {"reservation_id": res["reservation_id"], "passengers": people})
    assert not valid and not error  # Passenger drops the field it does not have
    assert db.get("reservations", res["reservation_id"])["passengers"] == res["passengers"]
    text, valid, error = run_tool("airline", db, "update_reservation_passengers", {
        "reservation_id": res["reservation_id"], "passengers": [dict(p, dob=19900101) for p in people]})
    assert error and "dob" in text


def test_ten_tool_errors_end_the_episode_with_reward_0():
    env = env_of("retail")
    task = task_by_id(env, "1")
    actions = domain("retail")["tasks"]["1"]["evaluation_criteria"]["actions"]
    ep = env.start(task)
    bad = [{"name": "no_such_tool", "arguments": {}}, {"name": "get_order_details", "arguments": {"order": "#W1"}},
           *[{"name": "get_order_details", "arguments": {"order_id": f"#W000000{k}"}} for k in range(7)]]
    env.step(ep, tool_calls_text(bad))  # 9 errors, of every kind
    assert not ep.done and env.outcome(ep)["tool_errors"] == 9
    env.step(ep, tool_calls_text([{"name": a["name"], "arguments": a["arguments"]} for a in actions]))
    assert not ep.done and env.outcome(ep)["db_match"]  # the gold actions ran without error
    env.step(ep, call("get_order_details", order_id="#W0000009"))  # the tenth
    out = env.outcome(ep)
    assert ep.done and out["end"] == "too_many_errors" and out["tool_errors"] == 10
    assert out["db_match"] and out["slot_credit"] == 1.0 and not out["stopped"] and out["reward"] == 0.0


def test_a_turn_of_calls_is_stored_in_openai_format_and_history_is_not_trained():
    env = env_of("mock")
    ep = env.start(task_by_id(env, "update_task_with_message_history"))
    history = [m for m in ep.messages if m["role"] == "assistant"]
    assert history and all(m["weight"] == 0 for m in history)
    assert ep.state["db"].has("tasks", "task_2")  # the history's create_task ran
    assert ep.tools == domain("mock")["schemas"] and ep.messages[-1]["role"] == "user"
    env.step(ep, "Let me see.\n" + call("update_task_status", task_id="task_2", status="completed"))
    msg, result = ep.messages[-2], ep.messages[-1]
    assert msg["content"] == "Let me see."
    assert msg["tool_calls"] == [{"type": "function", "id": "call_0", "function": {
        "name": "update_task_status", "arguments": '{"task_id": "task_2", "status": "completed"}'}}]
    assert result["role"] == "tool" and result["tool_call_id"] == "call_0" and result["name"] == "update_task_status"
    assert json.loads(result["content"])["status"] == "completed"
    env.step(ep, "Task task_2 is completed.")
    assert env.outcome(ep)["reward"] == 1.0


def test_max_turns_ends_the_episode_with_reward_0():
    env = env_of("mock", "max_turns=2")
    ep = env.start(task_by_id(env, "create_task_1"))
    env.step(ep, call("get_users"))
    env.step(ep, call("create_task", user_id="user_1", title="Important Meeting"))
    out = env.outcome(ep)
    assert ep.done and out["end"] == "max_turns" and out["db_match"] and out["reward"] == 0.0


# ---------------------------------------------------------------- the users


def test_the_scripted_user_opens_with_its_reason_and_tells_what_it_knows_one_item_at_a_time():
    env = env_of("retail")
    task = task_by_id(env, "1")
    ins = domain("retail")["tasks"]["1"]["user_scenario"]["instructions"]
    ep = env.start(task)
    assert ep.messages[-1]["content"] == first_person(ins["reason_for_call"]).strip()
    assert ep.messages[-1]["content"].startswith("I received my order #W2378156")
    for expected in (first_person(ins["known_info"]), first_person(ins["task_instructions"]), LEAVE):
        env.step(ep, "Who are you?")
        assert ep.messages[-1]["content"] == expected
    assert ep.done and ep.messages[-5]["content"] == "I am Yusuf Rossi in zip code 19122."


def test_first_person():
    assert first_person("You are Raj. Your user id is r_1.") == "I am Raj. My user id is r_1."
    assert first_person("If the agent asks you, you do not know.") == "If the agent asks me, I do not know."


def test_an_llm_user_behind_a_url_plays_the_user_and_ends_the_episode():
    from openai_stub import StubServer

    replies = iter(["I want a task called Important Meeting.", "Thanks! ###STOP###"])
    server = StubServer(lambda messages, body: next(replies))
    try:
        env = env_of("mock", f"user_url={server.url}", "user_model=u")
        ep = env.start(task_by_id(env, "create_task_1"))
        assert ep.messages[-1] == {"role": "user", "content": "I want a task called Important Meeting."}
        env.step(ep, call("create_task", user_id="user_1", title="Important Meeting"))
        env.step(ep, "Created it.")
        assert ep.done and ep.messages[-1]["content"] == "Thanks! ###STOP###"
        assert env.outcome(ep)["reward"] == 1.0
        first, last = server.requests[0][1], server.requests[-1][1]
        assert "User Simulation Guidelines" in first["messages"][0]["content"]
        assert "Important Meeting" in first["messages"][0]["content"] and first["model"] == "u"
        assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "user"]
        assert last["messages"][-1]["content"] == "Created it." and last["temperature"] == 0.0
    finally:
        server.close()
