"""STaR-GATE-D (rwft train --objective star-gate-d): pi_0 as teacher, batching invariance, the step log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import sample_records, write_jsonl
from rwft.errors import RwftError
from rwft.train.trainers import TrainConfig, train

HERE = Path(__file__).parents[1]  # tests/, where grad_probe.py is
sys.path.insert(0, str(HERE))
from grad_probe import SaveGrads  # noqa: E402


@pytest.fixture
def eight(tmp_path) -> Path:
    """8 conversations in 4 contexts of 2 samples with different rewards (filtered keeps 4)."""
    records = sample_records(24)[::3][:8]
    for i, r in enumerate(records):
        r["context_id"] = f"ctx{i // 2}"
        r["reward"] = 0.1 * (i + 1)
    return write_jsonl(tmp_path / "eight.jsonl", records)


def _grads(tmp_path: Path, data: Path, objective: str, batch: int = 4, accum: int = 1, lora: bool = False,
           **extra) -> dict:
    out = tmp_path / f"run-{objective}-{batch}x{accum}-{lora}-{sorted(extra.items())}"
    extra.setdefault("max_steps", 1)
    config = TrainConfig(data=str(data), output_dir=str(out), objective=objective,
                         per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_grad_norm=0.0,
                         learning_rate=1e-3, report_to="none", save_steps=1000, seed=0, lora=lora,
                         disable_tqdm=True, **extra)
    train(config, callbacks=[SaveGrads(out / "grads.pt")])
    return torch.load(out / "grads.pt")


def _close(a: dict, b: dict, scale: float = 1.0) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], scale * b[name], rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_first_step_is_star_gate_scaled_because_the_teacher_is_pi0(tmp_path, eight, lora):
    """At step 0 the policy is pi_0, so KL(pi_0 || pi) has zero gradient and the step is (1 - lam) times
    STaR-GATE's: true only if the teacher is pi_0 (the frozen copy, or the adapter disabled)."""
    sg = _grads(tmp_path, eight, "filtered", lora=lora)
    sgd = _grads(tmp_path, eight, "star-gate-d", lora=lora, distill_weight=0.25)
    _close(sgd, sg, 0.75)


def test_gradient_same_for_batch_4x1_and_1x4(tmp_path, eight):
    """The kept 4 conversations in one batch or in 4 accumulated ones give the same gradient. Taken at the
    second step, when the policy has left pi_0 and the distillation term has a gradient of its own."""
    g41 = _grads(tmp_path, eight, "star-gate-d", 4, 1, max_steps=2)
    g14 = _grads(tmp_path, eight, "star-gate-d", 1, 4, max_steps=2)
    _close(g41, g14)
    sg = _grads(tmp_path, eight, "filtered", 4, 1, max_steps=2)
    assert max((g41[n] - 0.5 * sg[n]).abs().max().item() for n in sg) > 1e-4  # the KL term now counts


def test_training_logs_kl_to_pi0_and_rejects_bad_weight(tmp_path, eight):
    out = tmp_path / "run"
    train(TrainConfig(data=str(eight), output_dir=str(out), objective="star-gate-d", max_steps=3, learning_rate=5e-3,
                      report_to="none", save_steps=1000, seed=0, disable_tqdm=True, lora=True))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if "loss" in x]
    kls = [x["kl_to_pi0"] for x in log if "kl_to_pi0" in x]
    assert len(kls) == 3 and kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 1e-6  # moves away from pi_0
    with pytest.raises(RwftError, match="distill-weight"):
        TrainConfig(data=str(eight), output_dir=str(tmp_path / "x"), objective="star-gate-d", distill_weight=1.5)
