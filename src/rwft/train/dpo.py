"""``rwft dpo``: the DPO baselines (final-answer DPO and StepDPO) through TRL's DPOTrainer.

TRL's DPOTrainer is the reference implementation, so the comparison with Refit / Swift is fair: rwft only
builds the preference pairs (``pairs.build_pairs``) from the same logged data and hands them over in TRL's
conversational preference format. The loss is TRL's ``sigmoid`` DPO loss,

    L_DPO = - E[ log sigmoid( beta * ( log pi(a+|s)/pi_ref(a+|s) - log pi(a-|s)/pi_ref(a-|s) ) ) ],

with pi_ref the starting model (frozen). The run directory holds the trained model (save_pretrained,
safetensors, or a PEFT adapter), ``pairs.jsonl``, ``pair_stats.json``, ``rwft_config.yaml`` and
``train_log.jsonl`` (per step: loss, rewards/margins, rewards/accuracies, ...), as ``rwft train`` does, and
resumes from its last checkpoint when rerun after a kill.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rwft.errors import RwftError
from rwft.train import skeleton as rundir


@dataclass
class DpoConfig:
    """Options of ``rwft dpo``."""

    data: str
    """Logged conversations with rewards, several samples per context (.jsonl, .parquet or a datasets dir)."""
    output: str
    """Run directory: the trained model, the pairs, the config, the training log and checkpoints go here."""
    model: str = "tiny"
    """A preset (tiny, smollm2-135m), a directory written by save_pretrained, or a hub id."""
    level: Literal["final", "step"] = "final"
    """final: DPO on the last agent turn; step: StepDPO, one pair per agent turn (see rwft.data.pairs)."""
    pairing: Literal["best-worst", "correct-incorrect"] = "best-worst"
    """Which two samples of a context form the pair."""
    min_gap: float = 0.0
    """best-worst: skip contexts whose best and worst rewards differ by no more than this."""
    threshold: float = 0.5
    """correct-incorrect: a sample is correct when its reward is >= threshold."""
    beta: float = 0.1
    """DPO's beta: strength of the implicit KL penalty towards the reference (starting) model."""
    agent_role: str = "assistant"
    """The role whose messages are the policy's actions."""
    epochs: float = 3.0
    """Passes over the pairs (ignored when --max-steps is set)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    learning_rate: float = 3e-5
    """Peak learning rate (the same default as rwft train, so a comparison can share it)."""
    batch_size: int = 8
    """Pairs per device per forward pass."""
    grad_accum: int = 1
    """Forward passes accumulated per optimizer step."""
    max_length: int = 1024
    """Longest prompt + answer in tokens; pairs whose prompt alone fills it are dropped (TRL keep_start)."""
    seed: int = 0
    """Random seed for data order, adapters and the correct-incorrect choice."""
    lora: bool = False
    """Train a LoRA adapter (PEFT) instead of all weights; the reference is then the adapter-free model."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling alpha."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (on hardware that supports it)."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many optimizer steps."""
    report_to: str = "tensorboard"
    """Where the Trainer reports metrics: tensorboard, none, wandb, ..."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from its directory or hub repo to run."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "lora_r"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RwftError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.beta <= 0:
            raise RwftError(f"--beta: expected a positive number, got {self.beta}")
        if self.learning_rate <= 0:
            raise RwftError(f"--learning-rate: expected a positive number, got {self.learning_rate}")


def prepare_pairs(config: DpoConfig):
    """Load the data and build the pairs; raises RwftError (before anything is written) when there are none."""
    from rwft.data.io import load_conversations
    from rwft.data.pairs import build_pairs

    convs = load_conversations(config.data, config.agent_role)
    pairs, stats = build_pairs(convs, config.level, config.pairing, config.min_gap, config.threshold,
                               config.seed, config.agent_role)
    if not pairs:
        raise RwftError(
            f"{config.data}: no preference pairs ({stats.as_dict()}); DPO needs contexts with two or more "
            "samples whose rewards differ"
        )
    return pairs, stats


def run_dpo(config: DpoConfig, callbacks: list | None = None) -> Path:
    """Train by DPO / StepDPO as configured and return the run directory."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from rwft.data.io import write_jsonl_atomic
    from rwft.presets import load_model, load_tokenizer

    out = Path(config.output)
    resolved = dataclasses.asdict(config)
    rundir.check_config(out, resolved)
    set_seed(config.seed)
    pairs, stats = prepare_pairs(config)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    model = load_model(config.model, config.trust_remote_code)
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    print(f"rwft dpo: {stats.pairs} pairs ({config.level}, {config.pairing}) from {stats.contexts_used} of "
          f"{stats.contexts} contexts; skipped: {stats.skipped_single_sample} single-sample, "
          f"{stats.skipped_no_gap} no reward gap, {stats.skipped_all_same_side} all on one side, "
          f"{stats.skipped_identical_turns} identical turns")
    rundir.write_config(out, resolved)
    write_jsonl_atomic(out / "pairs.jsonl", pairs)
    (out / "pair_stats.json").write_text(json.dumps(stats.as_dict(), indent=1))
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    args = DPOConfig(
        output_dir=str(out / "checkpoints"),
        beta=config.beta,
        loss_type=["sigmoid"],
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        gradient_checkpointing=False,
        logging_steps=1,
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[] if config.report_to == "none" else [config.report_to],
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not rundir.has_accelerator(),
        dataset_num_proc=None,
    )
    train_set = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[rundir.step_log_callback(out / "train_log.jsonl"), *(callbacks or [])],
    )
    resume = rundir.resume_point(out, trainer.is_world_process_zero())
    if resume is not None:
        print(f"rwft dpo: resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    print(f"rwft dpo: wrote {out}")
    return out
