"""The skeleton every trainer shares: a quiet terminal, tensorboard per run, configs from the ecosystem."""

from __future__ import annotations

import json

import pytest

from rwft.cli import main
from rwft.train.dpo import DpoConfig
from rwft.train.trainers import TrainConfig, train


def test_a_run_prints_summary_lines_and_no_per_step_dicts(tmp_path, sample_path, capsys):
    train(TrainConfig(data=str(sample_path), output_dir=str(tmp_path / "r"), max_steps=3,
                      per_device_train_batch_size=4, report_to="none", disable_tqdm=True))
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert all(line.startswith("rwft train: ") for line in lines), lines
    assert "{'loss'" not in out.out + out.err and "Loading weights" not in out.err
    logged = [json.loads(line) for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert [d["step"] for d in logged if "loss" in d] == [1, 2, 3]


def test_tensorboard_events_go_to_each_runs_own_directory(tmp_path, sample_path):
    for name in ("a", "b"):  # two runs in one process: the second must not log into the first's directory
        train(TrainConfig(data=str(sample_path), output_dir=str(tmp_path / name), max_steps=1,
                          per_device_train_batch_size=4, report_to="tensorboard", disable_tqdm=True))
    for name in ("a", "b"):
        events = list((tmp_path / name / "tensorboard").glob("events.out.tfevents.*"))
        assert len(events) == 1, (name, events)


def test_a_trl_users_yaml_carries_over_and_every_trainingarguments_option_parses(tmp_path, sample_path, monkeypatch):
    import rwft.train.trainers as weighted

    seen = {}
    monkeypatch.setattr(weighted, "train", lambda config: seen.setdefault("config", config))
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        f"model_name_or_path: tiny\ndata: {sample_path}\noutput_dir: {tmp_path / 'o'}\n"
        "learning_rate: 2.0e-4\nlr_scheduler_type: cosine\nper_device_train_batch_size: 2\n"
        "gradient_accumulation_steps: 4\nwarmup_steps: 0.1\noptim: adamw_torch\nweight_decay: 0.01\n"
    )
    assert main(["train", "--config", str(yaml_file), "--max-steps", "7", "--objective", "swift"]) == 0
    c = seen["config"]
    assert (c.learning_rate, c.lr_scheduler_type.value, c.per_device_train_batch_size) == (2e-4, "cosine", 2)
    assert (c.gradient_accumulation_steps, c.max_steps, c.objective, c.weight_decay) == (4, 7, "swift", 0.01)
    seen.clear()
    assert main(["train", "--config", str(yaml_file), "--max_steps", "5", "--batch-size", "3"]) == 0
    assert (seen["config"].max_steps, seen["config"].per_device_train_batch_size) == (5, 3)  # command line wins


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "x.jsonl"], "missing required option --output-dir"),
    (["train", "--data", "x.jsonl", "--output-dir", "o", "--lr_scheduler_type", "nope"], "lr_scheduler_type"),
    (["train", "--data", "x.jsonl", "--output-dir", "o", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["dpo", "--data", "x.jsonl", "--output-dir", "o", "--beta", "0"], "--beta: expected a positive number"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_dpo_config_keeps_trl_options_and_rwft_defaults():
    c = DpoConfig(data="x.jsonl", output_dir="o", loss_type=["sigmoid"], label_smoothing=0.1)
    assert c.bf16 is False and c.activation_checkpointing is False  # TRL's defaults would train bf16 on a CPU
    assert c.logging_steps == 1 and c.report_to == ["tensorboard"] and c.label_smoothing == 0.1


def test_device_is_whatever_accelerator_torch_finds(monkeypatch):
    """No accelerator: CPU (so torchrun's processes run as gloo DDP); any kind of accelerator: left to accelerate."""
    import torch

    assert TrainConfig(data="x.jsonl", output_dir="o").use_cpu is (not torch.accelerator.is_available())
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)  # an MPS / XPU / CUDA machine
    assert TrainConfig(data="x.jsonl", output_dir="o").use_cpu is False
