"""The training skeleton: what every rwft trainer shares, written once.

A trainer is its loss plus its config. Its config subclasses ``RunArguments`` together with transformers'
``TrainingArguments`` (or the TRL config of the trainer it extends, as TRL's own configs do), so every
option of the ecosystem (schedulers, optimizers, DeepSpeed, FSDP, torch.compile, report_to) works from the
command line and from YAML, and rwft's fields add to them. ``run`` does the rest for every trainer:

    config guard -> seed -> tokenizer -> the trainer's data (main process first) -> model (+ LoRA)
    -> config written -> the trainer -> resume from the newest checkpoint -> train -> merge -> save

A run directory (``output_dir``) holds ``rwft_config.yaml``, ``train_log.jsonl`` (one JSON object per
logged step), ``tensorboard/``, ``checkpoint-N/`` and, at the end, the model (``save_pretrained``,
safetensors, or a PEFT adapter). Rerunning the same command resumes from the newest complete checkpoint
and drops log lines past it, so each step is logged once; a different config in the same directory is
refused rather than mixed in. The terminal shows one progress bar with the loss; per-step detail goes to
the step log and tensorboard; ``--disable-tqdm`` silences both.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from rwft.data.io import cut_jsonl, write_text_atomic
from rwft.errors import RwftError
from rwft.presets import quiet_hf

# Fields that may change between a run and its resumption without changing what is trained.
RESUME_NEUTRAL = {"disable_tqdm", "report_to", "dataloader_num_workers", "dataset_num_proc", "save_steps",
                  "save_total_limit", "logging_steps", "local_rank", "resume_from_checkpoint", "use_cpu"}


@dataclass
class RunArguments:
    """rwft's fields of every trainer config, and its defaults for some of TrainingArguments'.

    Listed first in a config's bases (``class TrainConfig(RunArguments, TrainingArguments)``): a field
    here overrides the same field of TrainingArguments or TRL's config (its default and its help)."""

    data: str | None = None
    """Logged conversations: a .jsonl or .parquet file, or a directory written by datasets' save_to_disk (required)."""
    model: str = field(default="tiny", metadata={"aliases": ["--model_name_or_path"]})
    """A preset (tiny, smollm2-135m), a directory written by save_pretrained, or a hub id."""
    agent_role: str = "assistant"
    """The role whose messages are the policy's actions (the only tokens trained on)."""
    lora: bool = False
    """Train a LoRA adapter (PEFT, all linear layers) instead of all weights."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling alpha."""
    merge_lora: bool = False
    """With --lora, save the merged full model instead of the adapter."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from its directory or hub repo to run."""

    output_dir: str | None = field(default=None, metadata={"aliases": ["--output"]})
    """Run directory: the trained model, its config, the step log, tensorboard events and checkpoints (required)."""
    num_train_epochs: float = field(default=3.0, metadata={"aliases": ["--epochs"]})
    """Passes over the data (ignored when --max-steps is set)."""
    per_device_train_batch_size: int = field(default=8, metadata={"aliases": ["--batch-size", "--batch_size"]})
    """Conversations (or pairs) per device per forward pass."""
    gradient_accumulation_steps: int = field(default=1, metadata={"aliases": ["--grad-accum", "--grad_accum"]})
    """Forward passes accumulated per optimizer step."""
    learning_rate: float = 3e-5
    """Peak learning rate (the paper's 3e-5 for full fine-tuning; LoRA usually wants 1e-4 or more)."""
    seed: int = 0
    """Random seed for initialization of adapters and for data order."""
    logging_steps: float = 1
    """Log (step log, tensorboard, progress bar) every this many optimizer steps."""
    save_steps: float = 50
    """Write a resumable checkpoint every this many optimizer steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints."""
    report_to: str | None = "tensorboard"
    """Where metrics go besides train_log.jsonl: tensorboard (in the run directory), none, wandb, ..."""
    remove_unused_columns: bool = False
    """Keep the data's extra columns (rwft's token weights travel in one; leave this off)."""
    bf16: bool | None = False
    """Train in bfloat16 mixed precision (on hardware that supports it)."""
    gradient_checkpointing: bool | None = None
    """Deprecated name of --activation-checkpointing."""
    activation_checkpointing: bool | None = False
    """Recompute activations in the backward pass to save memory."""
    disable_tqdm: bool | None = False
    """Run silently: no progress bar and no summary lines (the step log and tensorboard still get every step)."""
    dataloader_pin_memory: bool = False
    """Pin batches in page-locked memory (token ids are small: the copy to a GPU gains little from it)."""

    def __post_init__(self) -> None:
        for name in ("data", "output_dir"):
            if not getattr(self, name):
                raise RwftError(f"missing required option --{name.replace('_', '-')}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "lora_r"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RwftError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.learning_rate <= 0:
            raise RwftError(f"--learning-rate: expected a positive number, got {self.learning_rate}")
        if self.data_seed is None:
            self.data_seed = self.seed
        if not self.use_cpu and not _has_accelerator():
            # accelerate runs torchrun's processes as CPU DDP (gloo) only when told cpu=True; with any
            # accelerator (CUDA, MPS, XPU, NPU, ...) placement stays accelerate's choice
            self.use_cpu = True
        try:
            super().__post_init__()
        except ValueError as e:  # TrainingArguments' own checks of option combinations
            raise RwftError(str(e)) from None

    def resolved(self) -> dict[str, Any]:
        """The config as written to rwft_config.yaml (plain YAML types)."""
        return json.loads(json.dumps(self.to_dict(), default=str))


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available()


def check_config(out: Path, resolved: dict[str, Any]) -> None:
    """Refuse a directory that holds a run with another config."""
    path = out / "rwft_config.yaml"
    if not path.exists():
        return
    old = yaml.safe_load(path.read_text()) or {}
    differ = sorted(k for k in set(old) | set(resolved) if k not in RESUME_NEUTRAL and old.get(k) != resolved.get(k))
    if differ:
        raise RwftError(f"{out}: holds a run with a different config ({path}: {', '.join(differ)}); "
                        "choose another --output-dir")


def write_config(out: Path, resolved: dict[str, Any]) -> None:
    """Create the directory and write the config atomically (other processes of a launch may read it)."""
    write_text_atomic(out / "rwft_config.yaml", yaml.safe_dump(resolved, sort_keys=False))


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint directory (one with trainer_state.json), if any."""
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def resume_point(out: Path, is_main: bool) -> Path | None:
    """The checkpoint to resume from; the step log is cut back to it (or cleared for a fresh start)."""
    log = out / "train_log.jsonl"
    resume = last_checkpoint(out)
    if not is_main:
        return resume
    if resume is None:
        log.unlink(missing_ok=True)
    elif log.exists():
        step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
        cut_jsonl(log, lambda r: r["step"] <= step)
    return resume


class StepLog(TrainerCallback):
    """Append every log line to ``train_log.jsonl`` (main process only)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class LossBar(TrainerCallback):
    """One progress bar over the optimizer steps, with the latest loss; nothing else on the terminal.
    Replaces transformers' ProgressCallback (which also prints every log dict) and PrinterCallback."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextmanager
def third_party_deprecations():
    """PEFT's get_peft_model and TRL's DPOTrainer read ``model.is_gradient_checkpointing``, which transformers
    5.23 deprecates (FutureWarning on every run); rwft's own code never reads it. Only that one message is
    hidden, only around those calls; remove once PEFT and TRL read ``is_activation_checkpointing``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(model, config: RunArguments):
    """Wrap the model in a LoRA adapter on all linear layers (PEFT)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    with third_party_deprecations():
        return get_peft_model(model, lora)


@dataclass
class Prepared:
    """What a trainer's ``prepare`` hands to its ``make_trainer``."""

    data: Any
    """The training rows (a ``datasets.Dataset``)."""
    stats: Any
    """Counts of the encoding (``data.dataset.EncodeStats``): kept conversations, agent tokens, ..."""
    summary: str
    """One line for the terminal."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Whatever else the trainer needs (Q-SFT: its behaviour model)."""


@dataclass(frozen=True)
class Recipe:
    """A trainer as the skeleton runs it.

    ``prepare(config, tokenizer) -> Prepared`` loads, checks and encodes the data (raising RwftError before
    anything is written); ``make_trainer(config, model, tokenizer, prepared, callbacks)`` returns a
    transformers Trainer (or a TRL one) ready to train."""

    prepare: Callable[..., Prepared]
    make_trainer: Callable[..., Any]


def run(config: RunArguments, recipe: Recipe, name: str, callbacks: list | None = None) -> Path:
    """Train as configured by ``recipe`` and return the run directory; resumes when it holds a checkpoint."""
    from transformers import PrinterCallback, ProgressCallback, set_seed
    from transformers.integrations import TensorBoardCallback

    from rwft.presets import load_model, load_tokenizer

    out = Path(config.output_dir)
    resolved = config.resolved()
    check_config(out, resolved)
    quiet = config.disable_tqdm
    say = (lambda *_: None) if quiet or config.process_index != 0 else print
    set_seed(config.seed)
    with quiet_hf() if quiet else nullcontext():
        tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        with config.main_process_first(desc="rwft data"):
            prepared = recipe.prepare(config, tokenizer)
        model = load_model(config.model, config.trust_remote_code)
        if config.lora:
            model = add_lora(model, config)
        say(f"rwft {name}: {prepared.summary}; model {config.model}")
        write_config(out, resolved)
        trainer = recipe.make_trainer(config, model, tokenizer, prepared,
                               [StepLog(out / "train_log.jsonl"), LossBar(f"rwft {name}"), *(callbacks or [])])
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(out / "tensorboard")  # per run, not per process (TENSORBOARD_LOGGING_DIR)
    resume = resume_point(out, trainer.is_world_process_zero())
    if resume is not None:
        say(f"rwft {name}: resuming from {resume}")
    # checkpoints: no "Writing model shards" bar under the loss bar
    with quiet_hf(), third_party_deprecations():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if config.lora and config.merge_lora:
            trainer.model = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    say(f"rwft {name}: wrote {out}")
    return out
