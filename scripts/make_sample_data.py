"""Write src/rwft/data/sample_conversations.jsonl: a small logged dataset for demos and tests.

Each OpenBookQA test question becomes one context with three sampled conversations in the paper's
reasoning protocol (a scripted teacher asks the agent to solve, to explain why the other options are
wrong, and to give the final answer as "The answer is X"). The agent's replies are scripted with
mixed quality (right or wrong answer, with or without an explanation), and the reward is a
rule-based grade in [0, 1]. Deterministic: rerunning rewrites the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "rwft" / "assets"
N_CONTEXTS = 60
SAMPLES = 3

TEACHER = [
    "Solve this question step by step.",
    "Explain why each of the other options is wrong.",
    'Give your final answer as "The answer is X".',
]


def prompt(item: dict) -> str:
    options = "\n".join(f"{c['label']}. {c['text']}" for c in item["choices"])
    return f"Question: {item['question']}\n{options}\n{TEACHER[0]}"


def episode(item: dict, rng: random.Random) -> tuple[list[dict], float]:
    labels = [c["label"] for c in item["choices"]]
    text = {c["label"]: c["text"] for c in item["choices"]}
    right = item["answer"]
    pick = right if rng.random() < 0.5 else rng.choice([x for x in labels if x != right])
    careful = rng.random() < 0.6
    solve = (
        f"The question asks about {item['question'].rstrip('?.').lower()}. "
        f"Option {pick}, {text[pick]}, fits best."
        if careful
        else f"I think it is {pick}."
    )
    others = [x for x in labels if x != pick]
    explain = (
        " ".join(f"{x} ({text[x]}) does not answer the question." for x in others)
        if careful
        else "The others seem wrong."
    )
    final = f"The answer is {pick}." if rng.random() < 0.9 else f"Maybe {pick}."
    messages = [{"role": "user", "content": prompt(item)}, {"role": "assistant", "content": solve}]
    messages += [{"role": "user", "content": TEACHER[1]}, {"role": "assistant", "content": explain}]
    messages += [{"role": "user", "content": TEACHER[2]}, {"role": "assistant", "content": final}]
    correct = pick == right and final.startswith("The answer is")
    reward = 0.6 * correct + 0.2 * careful + 0.2 * (pick == right)
    return messages, round(reward, 3)


def main() -> None:
    rng = random.Random(0)
    items = [json.loads(line) for line in (DATA / "openbookqa" / "test.jsonl").open()][:N_CONTEXTS]
    out = DATA / "sample_conversations.jsonl"
    with out.open("w") as f:
        for item in items:
            for k in range(SAMPLES):
                messages, reward = episode(item, rng)
                record = {
                    "id": f"{item['id']}/{k}",
                    "context_id": item["id"],
                    "messages": messages,
                    "reward": reward,
                    "metadata": {"source": "openbookqa", "answer": item["answer"]},
                }
                f.write(json.dumps(record) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
