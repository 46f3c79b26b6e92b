"""rwft iterate end to end on the tiny preset: errors before writing, the step log, resume after SIGKILL."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rwft.cli import main
from rwft.errors import RwftError
from rwft.presets import resolve_model as load_model_dir
from rwft.rollout.envs.base import Environment, Episode, Task, register


class CharsEnv(Environment):
    """One turn; reward = the answer's length in characters / 30 (at most 1): the untrained tiny preset's samples
    differ in it, so every objective has a contrast to learn from (clarify's rewards are all 0 for it)."""

    name = "chars"

    def tasks(self, n, seed):
        return [Task(f"chars/{seed}/{i}", {"i": i}) for i in range(n)]

    def start(self, task):
        return Episode(task, [{"role": "user", "content": f"Tell me about option {task.data['i']}."}])

    def step(self, episode, action):
        self.add_agent_message(episode, action)
        episode.done = True

    def outcome(self, episode):
        return {"reward": min(len(episode.last_agent_text()) / 30, 1.0), "turns": 1}

    def scripted_action(self, episode, rng, skill):
        return "x" * int(30 * skill)


class DebtEnv(CharsEnv):
    """CharsEnv with rewards below 0 (minus the answer's length): Refit cannot take them."""

    name = "debt"

    def outcome(self, episode):
        return {"reward": -len(episode.last_agent_text()) / 30 - 0.1, "turns": 1}


register("chars", "test_iterate:CharsEnv")
register("debt", "test_iterate:DebtEnv")
BASE = ["--env", "chars", "--policy", "tiny",
        "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6", "--learning-rate", "1e-2",
        "--threads", "1", "--progress", "false"]


@pytest.mark.parametrize("args,message", [
    (["--objective", "ppo"], "--objective 'ppo'"),
    (["--sync-every", "0"], "--sync-every 0"),
    (["--sync-every", "often"], "--sync-every often"),
    (["--objective", "grpo", "--group-size", "1"], "--group-size 1"),
    (["--env", "clarify", "mcqa", "--env-weights", "1"], "--env-weights"),
    (["--sync-every", "never", "--sync-reference", "true"], "--sync-reference with --sync-every never"),
    (["--policy", ""], "--policy: give pi_0"),
    (["--objective", "grpo", "--span-judge", "rubric"], "--span-judge rubric: expected tod"),
    (["--objective", "grpo", "--span-judge", "tod"], "--span-judge tod: its rules read --env tod's episodes"),
    (["--env", "tod", "--objective", "dpo", "--span-judge", "tod"], "--span-judge with --objective dpo"),
    (["--env", "tod", "--objective", "grpo", "--span-judge", "tod", "--span-weight", "0"], "--span-weight 0"),
    (["--objective", "grpo", "--span-weight", "-1"], "--span-weight: expected a value >= 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["iterate", "--output", str(out), *BASE, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_rewards_outside_the_objectives_range_are_refused_before_anything_is_written(tmp_path, capsys):
    """Refit needs rewards >= 0 (its registry entry's range): the first batch is checked before the run directory
    is made, and the error names the episode, its reward and the way out."""
    out = tmp_path / "run"
    assert main(["iterate", "--output", str(out), *BASE, "--env", "debt", "--objective", "refit", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--objective refit needs rewards >= 0" in err and "has reward -" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_twenty_questions_dpo_pairs_wins_against_losses():
    """twenty-questions' reward is minus the turns (below any threshold): online DPO pairs on the game's win, so a
    group with a win and a loss gives a pair and the step trains."""
    from rwft.recipes.iterate import verdicts
    from rwft.rollout.collect import episode_records, run_episodes
    from rwft.rollout.envs.base import make_env
    from rwft.rollout.judges import make_judge
    from rwft.rollout.policies import ScriptedPolicy
    from rwft.train.online import Learner, LearnerConfig

    env = make_env("twenty-questions", ["horizon=6"])
    tasks = [t for t in env.tasks(4, 0) for _ in range(4)]
    samples = [j for _ in range(4) for j in range(4)]
    episodes = run_episodes(env, ScriptedPolicy(env, None), tasks, samples, [1.0] * 16, 0)
    records = episode_records(env, make_judge("env"), "scripted", episodes, samples, [1.0] * 16, 0)
    won = [r["metadata"]["correct"] for r in records]
    assert all(r["reward"] < 0.5 for r in records) and any(won) and not all(won)
    mixed = sum(0 < sum(won[4 * g: 4 * g + 4]) < 4 for g in range(4))  # groups with a win and a loss
    assert mixed > 0
    assert verdicts(records) == [float(w) for w in won]
    learner = Learner(LearnerConfig(policy="tiny", objective="dpo", learning_rate=1e-2))
    out = learner.step(records, random.Random(0), verdicts(records))
    assert out["pairs"] == mixed and out["skipped_groups"] == 4 - mixed and out["loss"] == out["loss"]
    groups = [r["context_id"] for r in records]
    pairs, _ = learner.pairs([r["reward"] for r in records], groups, verdicts(records), random.Random(0))
    assert all(won[c] and not won[j] and groups[c] == groups[j] for c, j in pairs)  # a win over a loss of one task


def test_the_in_process_generator_notes_the_turns_it_cut():
    """Generator (HFPolicy.from_model) marks a turn cut when it stopped at --max-new-tokens without the
    end-of-sequence token: here row 0 is made to end at its second token, row 1 runs to the limit."""
    from transformers import LogitsProcessor

    from rwft.presets import load_model, load_tokenizer
    from rwft.recipes.iterate import Generator

    tok = load_tokenizer("tiny")

    class EndRowZero(LogitsProcessor):
        def __init__(self, width):
            self.width = width

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - self.width == 1:
                scores[0] = float("-inf")
                scores[0, tok.eos_token_id] = 0.0
            return scores

    policy = Generator.from_model(load_model("tiny").eval(), tok, max_new_tokens=5)
    policy.logits_processors = [lambda ids, mask, cache: EndRowZero(ids.shape[1])]
    env = CharsEnv()
    episodes = [env.start(t) for t in env.tasks(2, 0)]
    texts = policy.act(episodes, [1.0, 1.0], [1, 2])
    assert policy.cut == [False, True]
    assert "cut_turns" not in episodes[0].state and episodes[1].state["cut_turns"] == [0]
    assert len(tok(texts[1], add_special_tokens=False).input_ids) >= 3  # it did run on


def test_steps_log_syncs_and_mixed_envs(tmp_path):
    out = tmp_path / "run"
    assert main(["iterate", "--output", str(out), *BASE, "--objective", "grpo", "--sync-every", "2", "--steps", "4",
                 "--env", "chars", "mcqa", "--env-args", "mcqa.source=arithmetic", "--env-weights", "1", "1"]) == 0
    rows = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["steps_since_sync"] for r in rows] == [0, 1, 0, 1]
    for r in rows:
        for k in ("reward/chars", "reward/mcqa", "entropy", "kl", "response_tokens", "generate_s", "train_s",
                  "sync_s", "loss"):
            assert k in r
        assert r["episodes"] == 4 and r["entropy"] > 0 and r["processes"] == 1
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0  # the trainer leaves the fixed reference
    eps = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == 16 and {e["metadata"]["env"] for e in eps} == {"chars", "mcqa"}
    assert (out / "curves.png").stat().st_size > 0 and (out / "model" / "config.json").exists()


def _cmd(out: Path) -> list[str]:
    """``python -c`` and the arguments of rwft (the subprocess registers the test environment first)."""
    return [sys.executable, "-c", "iterate", "--output", str(out), *BASE, "--objective", "dpo", "--sync-every", "2",
            "--sync-reference", "true", "--steps", "6"]


def _code(args: list[str]) -> str:
    return ("import sys; from rwft.rollout.envs.base import register; register('chars', 'test_iterate:CharsEnv'); "
            f"from rwft.cli import main; sys.exit(main({args!r}))")


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """Killed (SIGKILL) after a random number of steps plus a random delay, so perhaps mid-step or mid-checkpoint,
    then rerun: the model, the step log and the episodes equal those of an uninterrupted run."""
    whole = tmp_path / "whole"
    assert main(_cmd(whole)[2:]) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    rng = random.Random(int(time.time()))
    proc = subprocess.Popen(_cmd(cut)[:2] + [_code(_cmd(cut)[2:])], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target, log = rng.randint(1, 4), cut / "steps.jsonl"
    while proc.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < target):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed before it finished
    assert main(_cmd(cut)[2:]) == 0
    a, b = load_file(whole / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pi0 = load_file(Path(load_model_dir("tiny")) / "model.safetensors")
    assert not all(torch.equal(a[k], pi0[k]) for k in a)  # it trained
    la = [json.loads(x) for x in (whole / "steps.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (cut / "steps.jsonl").read_text().splitlines()]
    drop = ("generate_s", "train_s", "sync_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == \
        [{k: v for k, v in r.items() if k not in drop} for r in lb]
    ea, eb = ((d / "episodes.jsonl").read_text() for d in (whole, cut))
    assert ea == eb


TESTS = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """tests/iterate_probe.py under torchrun with two gloo processes on the CPU (its gradients, syncs and run)."""
    import socket

    out = tmp_path_factory.mktemp("two")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(str(TESTS / d) for d in ("", "train", "recipes"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(TESTS / "iterate_probe.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_give_the_one_process_gradient(two_processes, tmp_path):
    """One learner step's gradient on 3 tasks x 3 samples, split 1 / 2 tasks over two processes (DDP over gloo),
    equals the one-process gradient for GRPO, Swift (trajectory length normalization: the batch's mean length) and
    DPO; after the step and a sync both processes' generators hold the same weights (not compared with one process's
    step: Adam's first step, lr g / (|g| + eps), flips the entries whose gradient is rounding noise around 0)."""
    sys.path[:0] = [str(TESTS), str(TESTS / "train")]
    from iterate_probe import OBJECTIVES, gradients

    from rwft.presets import load_model

    pi0 = sum(float(v.double().abs().sum()) for v in load_model("tiny").state_dict().values())
    for name in OBJECTIVES:
        one = gradients(tmp_path, name)
        two = torch.load(two_processes / f"grads-{name}.pt")
        assert one.keys() == two.keys() and len(one) > 0
        assert max(float(g.abs().max()) for g in one.values()) > 1e-2  # far above the tolerance
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
        sums = [torch.load(two_processes / f"synced-{name}-{rank}.pt") for rank in (0, 1)]
        assert sums[0] == sums[1] and abs(sums[0] - pi0) > 1.0  # the same step taken on both, and synced


def test_two_processes_share_a_run_and_only_the_main_process_writes(two_processes):
    """rwft iterate (GRPO, 3 tasks x 2 samples, 2 steps) under two processes: one step line per step recording the
    processes, the episodes once each in the one-process order, and nothing but the run's own files."""
    from rwft.recipes.iterate import IterateConfig, check_processes
    from rwft.rollout.envs.base import stable_int

    run = two_processes / "run"
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "episodes.jsonl", "model", "rwft_config.yaml",
                                                     "state.pt", "steps.jsonl"]
    rows = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["processes"], r["episodes"]) for r in rows] == [(1, 2, 6), (2, 2, 6)]
    eps = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    expected = [(step + 1, t.context_id, j) for step in range(2)
                for t in CharsEnv().tasks(3, stable_int("iterate", 0, step, "chars") % 2**31) for j in range(2)]
    assert [(e["metadata"]["iterate_step"], e["context_id"], e["id"].rsplit("/", 1)[1]) for e in eps] == \
        [(s, c, str(j)) for s, c, j in expected]
    assert torch.load(run / "state.pt", weights_only=False)["step"] == 2
    config = IterateConfig(output="x", policy="tiny", prompts_per_step=1)
    with pytest.raises(RwftError, match="--prompts-per-step 1 for 2 processes"):
        check_processes(config, 2)
    with pytest.raises(RwftError, match="--generator-url with 2 processes"):
        check_processes(dataclasses.replace(config, prompts_per_step=2, generator_url="http://h/v1"), 2)


def test_served_generator_gets_each_synced_adapter(tmp_path):
    """--generator-url: episodes come from the server, and after each sync the trainer's adapter is saved, loaded
    there under a new name, and the next steps' requests name it; the in-process generator copy matches it."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
    from test_http_policy import Server

    server = Server(lambda body: "word " * (body["seed"] % 7))
    out = tmp_path / "run"
    try:
        assert main(["iterate", "--output", str(out), *BASE, "--objective", "grpo", "--sync-every", "2", "--steps", "4",
                     "--lora", "true", "--generator-url", server.url, "--served-model", "pi0"]) == 0
    finally:
        server.close()
    loads = [b for p, b in server.posts if p.endswith("/load_lora_adapter")]
    assert [Path(b["lora_path"]).name[:7] for b in loads] == ["step-2-", "step-4-"]
    assert all((Path(b["lora_path"]) / "adapter_config.json").exists() for b in loads)
    assert [b["lora_name"].rsplit("-", 2)[1:] for b in loads] == [Path(b["lora_path"]).name.split("-")[1:]
                                                                 for b in loads]  # the step and the digest
    names = [b["model"] for b in server.chats()]
    assert len(names) == 16 and names[:8] == ["pi0"] * 8 and set(names[8:]) == {loads[0]["lora_name"]}
    # each adapter is unloaded once it is replaced, and the last when the run is done: nothing is left on the server
    unloads = [b["lora_name"] for p, b in server.posts if p.endswith("/unload_lora_adapter")]
    assert unloads[-2:] == [b["lora_name"] for b in loads]
    rows = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert rows[-1]["kl"] > 0  # the adapter trained


def test_served_sync_never_loads_an_adapter_left_by_a_killed_run(tmp_path):
    """A run killed after saving its step-2 adapter but before its checkpoint leaves that directory behind; the
    rerun trains step 2 again (the server's samples may differ) and must load its own weights, under a name the
    server has not seen with other weights."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
    from test_http_policy import Server

    out = tmp_path / "run"
    for stale in ("step-2", "step-2-00000000"):  # what the killed run left (the old and the new naming)
        (out / "adapters" / stale).mkdir(parents=True)
        (out / "adapters" / stale / "adapter_config.json").write_text("{}")
    server = Server(lambda body: "word " * (body["seed"] % 7))
    try:
        assert main(["iterate", "--output", str(out), *BASE, "--objective", "grpo", "--sync-every", "2", "--steps",
                     "2", "--lora", "true", "--generator-url", server.url, "--served-model", "pi0"]) == 0
    finally:
        server.close()
    (load,) = [b for p, b in server.posts if p.endswith("/load_lora_adapter")]
    loaded = load_file(Path(load["lora_path"]) / "adapter_model.safetensors")
    final = load_file(out / "model" / "adapter_model.safetensors")  # the trainer after step 2, the sync
    assert loaded.keys() == final.keys() and all(torch.equal(loaded[k], final[k]) for k in final)
    assert not load["lora_name"].endswith("00000000")


def test_unreachable_server_and_full_weight_sync_are_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["iterate", "--output", str(out), *BASE, "--generator-url", "http://127.0.0.1:9/v1", "--served-model", "m"]
    assert main(args) == 2 and "add --lora" in capsys.readouterr().err
    assert main([*args, "--lora", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreachable" in err and len(err.splitlines()) == 1 and not out.exists()


def test_experiment_runs_each_cell_once_and_writes_the_table(tmp_path, monkeypatch):
    import rwft.eval.evaluate
    import rwft.recipes.iterate
    from rwft.recipes.sweep import SweepConfig, run_experiment

    seen = []

    def fake_iterate(cfg):
        seen.append((cfg.objective, cfg.sync_every, cfg.sync_reference, cfg.seed))
        run = Path(cfg.output)
        run.mkdir(parents=True)
        run.joinpath("steps.jsonl").write_text("".join(json.dumps(
            {"step": s, "loss": 0.5, "reward": 0.1 * s, "entropy": 1.0 / s, "response_tokens": 10 + s,
             "kl": 0.0}) + "\n" for s in range(1, 5)))

    monkeypatch.setattr(rwft.recipes.iterate, "run_iterate", fake_iterate)
    evaluated = []

    def fake_eval(cfg):
        evaluated.append((cfg.policy, cfg.seeds))
        return {"metrics": {"reward": 0.5 if cfg.policy == "runs/pi0" else cfg.seeds[0] / 1000}}

    monkeypatch.setattr(rwft.eval.evaluate, "run_eval", fake_eval)
    cfg = SweepConfig(output=str(tmp_path), policy="runs/pi0", methods=["off:dpo:never", "on:grpo:1:ref"],
                      seeds=[0, 1])
    table = run_experiment(cfg)
    assert seen == [("dpo", "never", False, 0), ("grpo", "1", True, 0), ("dpo", "never", False, 1),
                    ("grpo", "1", True, 1)]
    assert "| off | 2 | 1.000 ± " in table and "entropy_end" in table
    # pi_0 itself, once per seed on that seed's evaluation tasks: the row every cell is measured against
    assert [e for e in evaluated if e[0] == "runs/pi0"] == [("runs/pi0", [1000]), ("runs/pi0", [1001])]
    assert "| pi0 | 2 | 0.500 ± " in table
    result = json.loads((tmp_path / "cells" / "on-s1" / "result.json").read_text())
    assert result["metrics"]["tokens_end"] == 14 and result["metrics"]["entropy_end"] == 0.25  # last quarter
    assert (tmp_path / "report" / "curves.png").exists()
    run_experiment(cfg)
    assert len(seen) == 4 and len(evaluated) == 6  # finished cells, pi_0's too, are not rerun
    with pytest.raises(RwftError, match="NAME:OBJECTIVE:S"):
        SweepConfig(output=str(tmp_path), methods=["bad"]).cells()
    with pytest.raises(RwftError, match="the name pi0 is the row of pi_0 itself"):
        SweepConfig(output=str(tmp_path), methods=["pi0:grpo:1"]).cells()
    with pytest.raises(RwftError, match="--objective 'ppo'"):  # every cell checked before the first runs
        SweepConfig(output=str(tmp_path), methods=["on:grpo:1", "x:ppo:1"]).cells()


def test_span_judge_tod_labels_each_fresh_episode_and_grpo_trains_on_the_spans():
    """--span-judge tod: play writes the rule judge's spans on the agent messages of each episode (the same as
    rwft label --spans --judge tod gives) with metadata.span_judge; the learner's step sees them."""
    from rwft.recipes.iterate import IterateConfig, play
    from rwft.rollout.envs.base import make_env
    from rwft.rollout.judges import JudgeItem, make_judge
    from rwft.rollout.policies import ScriptedPolicy
    from rwft.rollout.span_judges import TodRules
    from rwft.train.online import Learner

    env = make_env("tod", [])
    config = IterateConfig(output="unused", env=["tod"], policy="tiny", objective="grpo", group_size=4,
                           span_judge="tod", max_length=2048)
    config.check()
    records = play(env, ScriptedPolicy(env, None), make_judge("env"), config, env.tasks(3, 0), 0, 7)
    assert len(records) == 12 and all(r["metadata"]["span_judge"] == "tod" and r.get("tools") for r in records)
    labelled = [r for r in records if any(m.get("spans") for m in r["messages"])]
    assert 0 < len(labelled) < len(records)  # the mixed-skill agent errs in some episodes, not all
    for r in records:
        plain = [{k: v for k, v in m.items() if k != "spans"} for m in r["messages"]]
        expect = TodRules().spans(JudgeItem(plain, r["metadata"], r["id"]))
        assert [m.get("spans", []) for m in r["messages"] if m["role"] == "assistant"] == expect
    learner = Learner(config)
    out = learner.step(records, random.Random(0), [None] * len(records))
    assert out["span_tokens"] > 0 and out["loss"] == out["loss"]


def test_sweep_cells_marked_spans_alone_get_the_span_judge(tmp_path):
    from rwft.recipes.sweep import SweepConfig

    cfg = SweepConfig(output=str(tmp_path), policy="pi0", env=["tod"], span_judge="tod",
                      methods=["grpo:grpo:1", "grpo+spans:grpo:1:spans", "dpo:dpo:1:ref"])
    cells = cfg.cells()
    assert [c[3:] for c in cells] == [(False, False), (False, True), (True, False)]
    judges = [cfg.cell("pi0", *c, 0, tmp_path).span_judge for c in cells]
    assert judges == ["", "tod", ""]
    with pytest.raises(RwftError, match="a :spans cell needs --span-judge"):
        SweepConfig(output=str(tmp_path), policy="pi0", env=["tod"], methods=["g:grpo:1:spans"]).cells()
    with pytest.raises(RwftError, match="NAME:OBJECTIVE:S, then :ref"):
        SweepConfig(output=str(tmp_path), policy="pi0", methods=["g:grpo:1:often"]).cells()
    with pytest.raises(RwftError, match="--span-judge with --objective dpo"):
        SweepConfig(output=str(tmp_path), policy="pi0", env=["tod"], span_judge="tod",
                    methods=["d:dpo:1:spans"]).cells()
