"""Training: gradient invariance to batching, resume equals an uninterrupted run, checkpoints load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from conftest import sample_records, write_jsonl
from rwft.train.trainers import TrainConfig, train

HERE = Path(__file__).parents[1]  # tests/, where grad_probe.py is


@pytest.fixture
def eight(tmp_path) -> Path:
    """8 conversations of different lengths in 4 contexts of 2 samples with different rewards."""
    records = sample_records(24)[::3][:8]
    for i, r in enumerate(records):
        r["context_id"] = f"ctx{i // 2}"
        r["reward"] = 0.1 * (i + 1)
    return write_jsonl(tmp_path / "eight.jsonl", records)


def _grads(tmp_path: Path, data: Path, batch: int, accum: int, objective: str, procs: int = 1,
           normalization: str = "auto") -> dict:
    out = tmp_path / f"run-{objective}-{normalization}-{procs}x{batch}x{accum}"
    if procs == 1:
        sys.path.insert(0, str(HERE))
        from grad_probe import main

        main(str(data), str(out), batch, accum, objective, normalization)
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={procs}",
            "--master_port=29533",
            str(HERE / "grad_probe.py"),
            str(data),
            str(out),
            str(batch),
            str(accum),
            objective,
            normalization,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "grads.pt")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def _differ(a: dict, b: dict) -> bool:
    return max((a[n] - b[n]).abs().max().item() for n in a) > 1e-4


@pytest.mark.parametrize("objective,normalization", [
    ("swift", "sum"), ("swift", "trajectory"), ("per-turn", "sum"), ("per-turn", "turn"),
])
def test_gradient_same_for_batch_8x1_and_1x8(tmp_path, eight, objective, normalization):
    g81 = _grads(tmp_path, eight, 8, 1, objective, normalization=normalization)
    g18 = _grads(tmp_path, eight, 1, 8, objective, normalization=normalization)
    _assert_same(g81, g18)
    # and the weights matter: plain SFT on the same batch gives another gradient, and so does another mode
    assert _differ(g81, _grads(tmp_path, eight, 8, 1, "sft"))
    if normalization != "sum":
        assert _differ(g81, _grads(tmp_path, eight, 8, 1, objective, normalization="sum"))


@pytest.mark.parametrize("objective,normalization", [("swift", "trajectory"), ("refit", "sum")])
def test_gradient_with_error_spans_same_for_batch_8x1_and_1x8(tmp_path, eight, objective, normalization):
    records = [json.loads(line) for line in eight.read_text().splitlines()]
    for i, r in enumerate(records):  # spans of every severity, cutting words, on the first agent message
        agent = next(m for m in r["messages"] if m["role"] == "assistant")
        n = len(agent["content"])
        agent["spans"] = [{"start": 1, "end": max(2, n // 3), "severity": ("minor", "major", "critical")[i % 3]}]
    spans = write_jsonl(tmp_path / "spans.jsonl", records)
    g81 = _grads(tmp_path, spans, 8, 1, objective, normalization=normalization)
    _assert_same(g81, _grads(tmp_path, spans, 1, 8, objective, normalization=normalization))
    (tmp_path / "plain").mkdir()
    assert _differ(g81, _grads(tmp_path / "plain", eight, 8, 1, objective, normalization=normalization))  # spans count


@pytest.mark.parametrize("normalization", ["sum", "trajectory"])
def test_gradient_same_for_two_processes_x4(tmp_path, eight, normalization):
    g81 = _grads(tmp_path, eight, 8, 1, "swift", normalization=normalization)
    g24 = _grads(tmp_path, eight, 4, 1, "swift", procs=2, normalization=normalization)
    _assert_same(g81, g24)


class Kill(TrainerCallback):
    """Stand-in for SIGKILL right after the checkpoint of a given step was written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [d["step"] for d in lines if "loss" in d]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {d["step"]: d["loss"] for d in lines if "loss" in d}


def test_resume_after_kill_gives_the_same_losses(tmp_path, sample_path):
    def config(out):
        return TrainConfig(
            data=str(sample_path),
            output_dir=str(out),
            objective="refit",
            max_steps=6,
            per_device_train_batch_size=4,
            save_steps=2,
            learning_rate=1e-3,
            report_to="none",
            seed=3,
        )

    full = train(config(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed"), callbacks=[Kill(4)])
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = train(config(tmp_path / "killed"))
    a, b = _losses(full), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-6, abs=1e-7), step

    model = AutoModelForCausalLM.from_pretrained(resumed)
    ref = AutoModelForCausalLM.from_pretrained(full)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)


def test_lora_adapter_and_merged_give_the_same_forward(tmp_path, sample_path):
    from peft import PeftModel

    from rwft.presets import load_model

    base = dict(
        data=str(sample_path),
        objective="sft",
        max_steps=2,
        per_device_train_batch_size=4,
        lora=True,
        lora_r=4,
        learning_rate=1e-2,
        report_to="none",
    )
    adapter = train(TrainConfig(output_dir=str(tmp_path / "adapter"), **base))
    merged = train(TrainConfig(output_dir=str(tmp_path / "merged"), merge_lora=True, **base))
    assert (adapter / "adapter_model.safetensors").exists()
    assert not (adapter / "model.safetensors").exists()
    x = torch.tensor([[5, 17, 99, 3, 250]])
    with torch.no_grad():
        via_adapter = PeftModel.from_pretrained(load_model("tiny"), adapter)(x).logits
        via_merged = AutoModelForCausalLM.from_pretrained(merged)(x).logits
        untouched = load_model("tiny")(x).logits
    torch.testing.assert_close(via_adapter, via_merged, rtol=1e-4, atol=1e-4)
    assert (via_adapter - untouched).abs().max() > 1e-4  # the adapter learned something


def test_other_config_in_same_output_is_refused(tmp_path, sample_path):
    from rwft.errors import RwftError

    cfg = TrainConfig(data=str(sample_path), output_dir=str(tmp_path / "r"), max_steps=1, report_to="none")
    train(cfg)
    with pytest.raises(RwftError, match="different config"):
        train(TrainConfig(data=str(sample_path), output_dir=str(tmp_path / "r"), max_steps=2, report_to="none"))
    shutil.rmtree(tmp_path / "r")


def test_normalizer_counts_conversations_not_the_batch_tokens(tmp_path):
    """Short and long batches of the same size get the same N, so grouping by length cannot change the
    relative weight of a conversation (dividing by the batch's tokens would favour short ones)."""
    from transformers import TrainingArguments

    from rwft.presets import load_model
    from rwft.train.weighted import WeightedTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], remove_unused_columns=False)
    trainer = WeightedTrainer(model=load_model("tiny"), args=args, tokens_per_conversation=50.0)
    short = {"labels": torch.zeros(4, 10, dtype=torch.long)}
    long = {"labels": torch.zeros(4, 300, dtype=torch.long)}
    n_short = trainer._get_num_items_in_batch([short], torch.device("cpu"))
    n_long = trainer._get_num_items_in_batch([long], torch.device("cpu"))
    assert float(n_short) == float(n_long) == 200.0
    assert float(trainer._get_num_items_in_batch([short, long], torch.device("cpu"))) == 400.0
