import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rwft.errors import RwftError
from rwft.presets import load_model, load_tokenizer
from rwft.train.dpo import DpoConfig, run_dpo


def write_data(path, contexts=4):
    with path.open("w") as f:
        for c in range(contexts):
            for i, (answer, reward) in enumerate([("The answer is A", 1.0), ("I am not sure at all", 0.0)]):
                msgs = [
                    {"role": "user", "content": f"Question {c}: which option?"},
                    {"role": "assistant", "content": f"Let me think about question {c}."},
                    {"role": "user", "content": 'Give your final answer as "The answer is X".'},
                    {"role": "assistant", "content": answer},
                ]
                f.write(json.dumps({"context_id": f"q{c}", "id": f"q{c}/{i}", "messages": msgs, "reward": reward}))
                f.write("\n")


def completion_logp(model, tok, prompt, completion) -> float:
    """Sum of log p(completion tokens | prompt), tokenized as TRL does (prompt with generation prompt)."""
    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([list(full)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[len(p) - 1 :].sum())


def margins(model, ref, tok, pairs):
    out = []
    for p in pairs:
        dc = completion_logp(model, tok, p["prompt"], p["chosen"]) - completion_logp(ref, tok, p["prompt"], p["chosen"])
        dr = completion_logp(model, tok, p["prompt"], p["rejected"]) - completion_logp(
            ref, tok, p["prompt"], p["rejected"]
        )
        out.append(dc - dr)
    return out


def test_dpo_steps_increase_the_chosen_rejected_margin(tmp_path):
    data = tmp_path / "logs.jsonl"
    write_data(data)
    out = run_dpo(
        DpoConfig(
            data=str(data),
            output_dir=str(tmp_path / "run"),
            max_steps=6,
            per_device_train_batch_size=4,
            learning_rate=5e-4,
            beta=0.1,
            report_to="none",
            save_steps=100,
        )
    )
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 4 and json.loads((out / "pair_stats.json").read_text())["pairs"] == 4
    trained = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    ref, tok = load_model("tiny").eval(), load_tokenizer("tiny")
    m = margins(trained, ref, tok, pairs)
    # implicit reward margin beta * (log-ratio chosen - log-ratio rejected) starts at 0 and must grow
    assert all(x > 0.5 for x in m), m
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "rewards/margins" in r]
    assert len(steps) == 6 and steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]


def test_step_level_and_no_pairs_error(tmp_path):
    data = tmp_path / "same.jsonl"
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "reward": 0.5}
    data.write_text(json.dumps({**rec, "context_id": "x"}) + "\n" + json.dumps({**rec, "context_id": "x"}) + "\n")
    with pytest.raises(RwftError, match="no preference pairs"):
        run_dpo(DpoConfig(data=str(data), output_dir=str(tmp_path / "none"), max_steps=1, report_to="none"))
    assert not (tmp_path / "none").exists()  # nothing written on bad input
    with pytest.raises(RwftError, match="--beta"):
        DpoConfig(data="x", output_dir="y", beta=0)
