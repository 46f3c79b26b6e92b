"""``rwft train``: fit a causal LM to logged conversations by a reward-weighted objective.

Built on transformers' Trainer, so ``accelerate launch`` / ``torchrun`` give DDP, FSDP or DeepSpeed
unchanged. The Trainer only moves tensors: the weights come from ``batching`` and the loss from
``loss.weighted_nll``. The run directory holds the final model (``save_pretrained``, safetensors, or
a PEFT adapter), ``rwft_config.yaml``, ``train_log.jsonl``, tensorboard events and ``checkpoints/``;
rerunning the same command after a kill resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rwft.errors import RwftError
from rwft.train import skeleton as rundir


@dataclass
class TrainConfig:
    """Options of ``rwft train``."""

    data: str
    """Logged conversations: a .jsonl or .parquet file, or a directory written by datasets' save_to_disk."""
    output: str
    """Run directory: the trained model, its config, the training log and checkpoints go here."""
    model: str = "tiny"
    """A preset (tiny, smollm2-135m), a directory written by save_pretrained, or a hub id."""
    objective: Literal["sft", "filtered", "refit", "swift", "per-turn"] = "refit"
    """How rewards become token weights: sft 1; filtered 1 for the top-k per context; refit r;
    swift (r - context mean) / context std; per-turn the agent turn's discounted reward-to-go."""
    agent_role: str = "assistant"
    """The role whose messages are the policy's actions (the only tokens trained on)."""
    epochs: float = 3.0
    """Passes over the data (ignored when --max-steps is set)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    learning_rate: float = 3e-5
    """Peak learning rate (the paper's 3e-5 for full fine-tuning; LoRA usually wants 1e-4 or more)."""
    batch_size: int = 8
    """Conversations per device per forward pass."""
    grad_accum: int = 1
    """Forward passes accumulated per optimizer step."""
    max_length: int = 1024
    """Longest sequence in tokens; longer conversations lose their oldest exchanges (see chat_mask)."""
    seed: int = 0
    """Random seed for initialization of adapters and for data order."""
    top_k: int = 1
    """filtered: keep the top-k conversations of each context."""
    threshold: float | None = None
    """filtered: keep every conversation with reward >= threshold instead of the top-k."""
    gamma: float = 1.0
    """per-turn: discount of the reward-to-go over agent turns."""
    lora: bool = False
    """Train a LoRA adapter (PEFT) instead of all weights."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling alpha."""
    merge_lora: bool = False
    """With --lora, save the merged full model instead of the adapter."""
    warmup_ratio: float = 0.0
    """Share of steps with linear warm-up, in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 disables)."""
    bf16: bool = False
    """Train in bfloat16 mixed precision (on hardware that supports it)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    group_by_length: bool = True
    """Batch conversations of similar length together to cut padding."""
    save_steps: int = 50
    """Write a resumable checkpoint every this many optimizer steps."""
    report_to: str = "tensorboard"
    """Where the Trainer reports metrics: tensorboard, none, wandb, ..."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from its directory or hub repo to run."""

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_length": self.max_length,
                    "save_steps": self.save_steps, "top_k": self.top_k, "lora_r": self.lora_r}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise RwftError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise RwftError(f"--warmup-ratio: expected a value in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.gamma <= 1.0:
            raise RwftError(f"--gamma: expected a value in [0, 1], got {self.gamma}")
        if self.learning_rate <= 0:
            raise RwftError(f"--learning-rate: expected a positive number, got {self.learning_rate}")


def _trainer_class():
    from transformers import Trainer

    from rwft.objectives.losses import weighted_nll

    class WeightedTrainer(Trainer):
        """Trainer whose loss is ``weighted_nll``; logs weight statistics, agent-token share and speed."""

        loss_is_scaled_for_ga = True  # weighted_nll divides by a normalizer for the whole optimizer batch

        def __init__(self, *args, group_by_length: bool = True, tokens_per_conversation: float = 1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.group_by_length = group_by_length
            self.tokens_per_conversation = tokens_per_conversation
            self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch for us
            self._stats = _Stats()

        def _get_num_items_in_batch(self, batch_samples, device):
            """N of weighted_nll: conversations in the optimizer batch (all accumulation steps and processes)
            times the training set's mean agent tokens per conversation."""
            import torch

            n = torch.tensor([float(sum(b["labels"].shape[0] for b in batch_samples))], device=device)
            if self.args.world_size > 1 and self.args.average_tokens_across_devices:
                n = self.accelerator.gather(n)
            return n.sum() * self.tokens_per_conversation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("token_weights")
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_nll(outputs.logits, labels, weights, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            self._stats.add(labels, weights, inputs["attention_mask"])
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            from rwft.train.collate import LengthGroupedSampler

            rows = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler([len(r["input_ids"]) for r in rows], self.args.per_device_train_batch_size,
                                        seed=self.args.seed)

        def log(self, logs, start_time=None):
            if "loss" in logs:
                logs.update(self._stats.pop())
            super().log(logs, start_time)

    return WeightedTrainer


class _Stats:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.w_sum, self.w_min, self.w_max = 0.0, float("inf"), float("-inf")
        self.agent, self.tokens, self.slots, self.t0 = 0, 0, 0, time.perf_counter()

    def add(self, labels, weights, attention_mask) -> None:
        m = labels != -100
        if m.any():
            w = weights[m]
            self.w_sum += float(w.sum())
            self.w_min, self.w_max = min(self.w_min, float(w.min())), max(self.w_max, float(w.max()))
        self.agent += int(m.sum())
        self.tokens += int(attention_mask.sum())
        self.slots += attention_mask.numel()

    def pop(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        out = {
            "weight_mean": self.w_sum / max(self.agent, 1),
            "weight_min": self.w_min if self.agent else 0.0,
            "weight_max": self.w_max if self.agent else 0.0,
            "agent_token_share": self.agent / max(self.tokens, 1),
            "padding_share": 1 - self.tokens / max(self.slots, 1),
            "tokens_per_second": self.tokens / dt if dt > 0 else 0.0,
        }
        self.reset()
        return out


def prepare(config: TrainConfig, tokenizer):
    """Load, check, weight and tokenize the data; raises RwftError before anything is written."""
    from rwft.data.dataset import build_sequences, turn_weights
    from rwft.data.io import load_conversations

    convs = load_conversations(config.data, config.agent_role)
    weights = turn_weights(convs, config.objective, config.agent_role, config.top_k, config.threshold, config.gamma)
    rows, stats = build_sequences(tokenizer, convs, weights, config.max_length, config.agent_role)
    if not rows:
        raise RwftError(
            f"{config.data}: no conversation carries a non-zero weight under --objective {config.objective} "
            f"({stats.zero_weight} of {stats.conversations} weigh 0, {stats.too_long} too long); "
            "for swift, contexts need two or more samples with different rewards"
        )
    return rows, stats


def train(config: TrainConfig, callbacks: list | None = None) -> Path:
    """Train as configured and return the run directory. Resumes when the directory holds a checkpoint."""
    from transformers import TrainingArguments, set_seed

    from rwft.presets import load_model, load_tokenizer
    from rwft.train.collate import WeightedCollator

    out = Path(config.output)
    resolved = dataclasses.asdict(config)
    rundir.check_config(out, resolved)

    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    rows, stats = prepare(config, tokenizer)
    model = load_model(config.model, config.trust_remote_code)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)

    print(
        f"rwft train: {stats.kept} of {stats.conversations} conversations, {stats.agent_tokens} agent tokens "
        f"({stats.zero_weight} weigh 0, {stats.truncated} truncated, {stats.too_long} too long); "
        f"objective {config.objective}, model {config.model}"
    )
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        remove_unused_columns=False,  # keep token_weights: the pitfall that lost weights elsewhere
        logging_steps=1,
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[] if config.report_to == "none" else [config.report_to],
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not rundir.has_accelerator(),
    )
    rundir.write_config(out, resolved)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=WeightedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        group_by_length=config.group_by_length,
        tokens_per_conversation=stats.agent_tokens / stats.kept,
        callbacks=[rundir.step_log_callback(out / "train_log.jsonl"), *(callbacks or [])],
    )
    resume = rundir.resume_point(out, trainer.is_world_process_zero())
    if resume is not None:
        print(f"rwft train: resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if config.lora and config.merge_lora:
        trainer.model = trainer.model.merge_and_unload()
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    print(f"rwft train: wrote {out}")
    return out
