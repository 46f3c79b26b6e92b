"""rwft iterate's learner under one or several processes; used by test_iterate's two-process tests.

Run as a script (under torchrun): python iterate_probe.py OUT. It saves, on the main process, the gradient of one
learner step per objective of ``OBJECTIVES`` on test_online's records (``OUT/grads-NAME.pt``); on every process, a
checksum of the generator's weights after that step and a sync (``OUT/synced-NAME-RANK.pt``); then it runs ``rwft
iterate`` (``ITERATE_ARGS``, test_iterate's chars environment) into ``OUT/run``. Needs tests/train and
tests/recipes on PYTHONPATH.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

OBJECTIVES = {
    "grpo": {"objective": "grpo", "temperature": 0.7},  # loss_type dapo: the whole batch's token count
    "grpo-per-episode": {"objective": "grpo", "temperature": 0.7, "loss_type": "grpo"},
    "swift": {"objective": "swift", "length_normalization": "trajectory"},  # L_bar: the whole batch's mean
    "dpo": {"objective": "dpo"},
}
ITERATE_ARGS = ["--env", "chars", "--policy", "tiny", "--objective", "grpo", "--prompts-per-step", "3",
                "--group-size", "2", "--max-new-tokens", "6", "--learning-rate", "1e-2", "--steps", "2",
                "--sync-every", "1", "--threads", "1", "--progress", "false"]


def gradients(out: Path, name: str) -> dict[str, torch.Tensor]:
    """One learner step's gradient (objective ``name``) on test_online's records: 3 tasks x 3 samples, saved by the
    main process; then the step and a sync, and every process saves its generator's checksum."""
    from test_online import records

    from rwft.train.online import Learner, LearnerConfig

    learner = Learner(LearnerConfig(policy="tiny", learning_rate=1e-2, **OBJECTIVES[name]))
    recs = records()
    loss, _ = learner.loss(recs, random.Random(0), [None] * len(recs))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in learner.model.named_parameters() if p.grad is not None}
    acc = learner.accelerator
    if acc.is_main_process:
        torch.save(grads, out / f"grads-{name}.pt")
    learner.optimizer.step()
    learner.sync(reference=True)
    checksum = sum(float(v.double().abs().sum()) for v in learner.generator_model.state_dict().values())
    torch.save(checksum, out / f"synced-{name}-{acc.process_index}.pt")
    return grads


def main(out: str) -> None:
    from rwft.cli import main as rwft
    from rwft.rollout.envs.base import register

    Path(out).mkdir(parents=True, exist_ok=True)
    for name in OBJECTIVES:
        gradients(Path(out), name)
    register("chars", "test_iterate:CharsEnv")
    code = rwft(["iterate", "--output", str(Path(out) / "run"), *ITERATE_ARGS])
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1])
