"""``rwft dpo``: the DPO baselines (final-answer DPO and StepDPO) through TRL's DPOTrainer.

TRL's DPOTrainer is the reference implementation, so the comparison with Refit / Swift is fair: rwft only
builds the preference pairs (``data.pairs.build_pairs``) from the same logged data and hands them over in TRL's
conversational preference format. The loss is TRL's ``sigmoid`` DPO loss,

    L_DPO = - E[ log sigmoid( beta * ( log pi(a+|s)/pi_ref(a+|s) - log pi(a-|s)/pi_ref(a-|s) ) ) ],

with pi_ref the starting model (frozen). The run directory holds the trained model (save_pretrained,
safetensors, or a PEFT adapter), ``pairs.jsonl``, ``pair_stats.json``, ``rwft_config.yaml`` and
``train_log.jsonl`` (per step: loss, rewards/margins, rewards/accuracies, ...), as ``rwft train`` does, and
resumes from its last checkpoint when rerun after a kill.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trl import DPOConfig

from rwft.errors import RwftError
from rwft.train import skeleton


@dataclass
class DpoConfig(skeleton.RunArguments, DPOConfig):
    """Options of ``rwft dpo``: rwft's own, then every option of TRL's DPOConfig (and TrainingArguments)."""

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
    max_length: int | None = 1024
    """Longest prompt + answer in tokens; pairs whose prompt alone fills it are dropped (TRL keep_start)."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise RwftError(f"--beta: expected a positive number, got {self.beta}")
        if self.max_length is not None and self.max_length < 1:
            raise RwftError(f"--max-length: expected a positive integer, got {self.max_length}")
        super().__post_init__()


def prepare(config: DpoConfig, tokenizer) -> skeleton.Prepared:
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
    summary = (f"{stats.pairs} pairs ({config.level}, {config.pairing}) from {stats.contexts_used} of "
               f"{stats.contexts} contexts; skipped: {stats.skipped_single_sample} single-sample, "
               f"{stats.skipped_no_gap} no reward gap, {stats.skipped_all_same_side} all on one side, "
               f"{stats.skipped_identical_turns} identical turns")
    return skeleton.Prepared(pairs, stats, summary)


def make_trainer(config: DpoConfig, model, tokenizer, prepared, callbacks):
    """TRL's DPOTrainer on the pairs (written beside the model as pairs.jsonl and pair_stats.json)."""
    from datasets import Dataset
    from trl import DPOTrainer

    from rwft.data.io import write_jsonl_atomic

    pairs, stats = prepared.data, prepared.stats
    out = Path(config.output_dir)
    if config.process_index == 0:
        write_jsonl_atomic(out / "pairs.jsonl", pairs)
        (out / "pair_stats.json").write_text(json.dumps(stats.as_dict(), indent=1))
    train_set = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    return DPOTrainer(model=model, args=config, train_dataset=train_set, processing_class=tokenizer,
                      callbacks=callbacks)


def run_dpo(config: DpoConfig, callbacks: list | None = None) -> Path:
    """Train by DPO / StepDPO as configured and return the run directory."""
    return skeleton.run(config, skeleton.Recipe(prepare, make_trainer), "dpo", callbacks)
