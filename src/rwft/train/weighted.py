"""The weighted trainer of ``rwft train`` and its config: transformers' Trainer with one loss,
``objectives.losses.weighted_nll``.

The weights come from ``data.weighting`` (one per agent turn, by the objective's registry entry) and reach the
tokens in the collator. ``WeightedTrainer.compute_loss`` ends every trainer's loss the same way (scaling for
several processes, step statistics); trainers with a loss of their own (``train.distill``, ``train.qsft``)
override ``loss`` alone. The run directory, resume, LoRA and saving are the skeleton's (``train.skeleton``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

from transformers import Trainer, TrainingArguments

from rwft.data.weighting import LENGTH_NORMALIZATIONS, LengthNormalization
from rwft.errors import RwftError
from rwft.objectives.registry import OBJECTIVES, describe, names
from rwft.presets import quiet_hf
from rwft.train import skeleton

# rwft train's objectives: the registry's entries trained by a weighted-NLL trainer or one of its subclasses.
TRAIN_OBJECTIVES = names(trainers=("weighted", "distill", "qsft"))
ObjectiveName = Literal[TRAIN_OBJECTIVES]


@dataclass
class TrainConfig(skeleton.RunArguments, TrainingArguments):
    """Options of ``rwft train``: rwft's own, then every option of transformers' TrainingArguments."""

    objective: ObjectiveName = field(default="refit", metadata={"help": describe(TRAIN_OBJECTIVES)})
    """The objective (objectives/registry.py), one of:"""
    max_length: int = 1024
    """Longest sequence in tokens; longer conversations lose their oldest exchanges (see data.encode)."""
    top_k: int = 1
    """filtered: keep the top-k conversations of each context."""
    threshold: float | None = None
    """filtered: keep every conversation with reward >= threshold instead of the top-k."""
    gamma: float = 1.0
    """per-turn: discount of the reward-to-go over agent turns; qsft: discount per agent turn (1 within a turn)."""
    length_normalization: LengthNormalization = "auto"
    """How a trajectory's length scales its weight (see README, The objectives). sum: w x the summed token
    log-likelihood, over a constant N (the paper's E[r log pi(tau)]; unbiased for it; a long trajectory weighs
    in proportion to its tokens). trajectory: w x L_bar / L per token (L its agent tokens, L_bar their mean over
    the data): every trajectory weighs w x L_bar in all, so long negative ones do not outweigh short positive
    ones by their length; biased (Dr. GRPO) toward long trajectories where w < 0 and short ones where w > 0.
    turn: w_t x n_bar / n_t (n_t the turn's tokens, n_bar their mean): every turn weighs alike, a trajectory
    in proportion to its turns. auto: sum, unless the token weights sum to less than 0 (the negative weights
    sit on the longer trajectories), then trajectory. The summary line names the one used."""
    behaviour_model: str | None = None
    """qsft: the behaviour policy pi_phi (a preset or directory); empty: SFT on the same data into OUTPUT/behaviour."""
    polyak: float = 0.05
    """qsft: Polyak rate alpha of the target per optimizer step, theta_bar <- (1 - alpha) theta_bar + alpha theta."""
    rescale_rewards: bool = False
    """qsft: map the data's conversation returns affinely onto [0, 1] instead of refusing rewards outside it."""
    qsft_beta: float = 4.0
    """qsft: default beta of the acting policy pi_phi * exp(beta * p_theta) (written to OUTPUT/qsft.json)."""
    qsft_top_k: int = 16
    """qsft: behaviour tokens cached per state; the Bellman max runs over them and the logged token."""
    qsft_lambda: float = 0.9
    """qsft: lambda of the targets' return across agent turns, B = max(Y, G) with Y = r + gamma [(1 - lambda)
    V(s') + lambda Y(s')] at each turn's end (a turn's tokens share it) and G the logged return; 0: bootstrap
    from the next turn's value alone, 1: the logged return (Monte Carlo)."""
    push_down_limit: float = 0.2
    """How far a token with negative weight (Swift, per-turn, an error span) is pushed below pi_0: its push stops
    once log pi(y) < log pi_0(y) - limit (PPO's clip for a negative advantage, limit = -log(1 - eps); 0.2, about
    PPO's eps = 0.2: at most 18% less likely than pi_0 made it). pi_0 is the model training starts from; its
    log-probabilities are computed once before training, only when some token weighs < 0. inf: no limit (the
    paper's objective, which collapses where the negative weights sit on the longer trajectories)."""
    span_weight: float = 0.1
    """lambda of the error spans (rwft label --spans): a token in a span weighs w - lambda * p instead of its turn's
    w, p its severity's penalty (minor 1, major 5, critical 10), in the turns the objective trains (w != 0); 0
    ignores spans. 0.1: one critical error costs 1, the whole range of a [0, 1] reward; a minor one 0.1."""
    group_by_length: bool = True
    """Batch conversations of similar length together to cut padding (rwft's mega-batch sampler)."""
    dataset_num_proc: int | None = field(default=None)
    """Processes that tokenize the data (default: by the data's size)."""
    distill_weight: float = 0.5
    """star-gate-d: weight lam of the distillation term, (1 - lam) * NLL + lam * T^2 * KL(pi_0 || pi)."""
    distill_temperature: float = 2.0
    """star-gate-d: softmax temperature T of both distributions in the distillation term."""

    def __post_init__(self) -> None:
        for name in ("max_length", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RwftError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise RwftError(f"--gamma: expected a value in [0, 1], got {self.gamma}")
        if self.length_normalization not in LENGTH_NORMALIZATIONS:
            raise RwftError(f"--length-normalization {self.length_normalization!r}: expected one of "
                            f"{', '.join(LENGTH_NORMALIZATIONS)}")
        if not 0.0 < self.polyak <= 1.0:
            raise RwftError(f"--polyak: expected a value in (0, 1], got {self.polyak}")
        if not 0.0 <= self.qsft_lambda <= 1.0:
            raise RwftError(f"--qsft-lambda: expected a value in [0, 1], got {self.qsft_lambda}")
        if not isinstance(self.qsft_top_k, int) or self.qsft_top_k < 1:
            raise RwftError(f"--qsft-top-k: expected a positive integer, got {self.qsft_top_k!r}")
        if not self.push_down_limit >= 0.0:
            raise RwftError(f"--push-down-limit: expected a value >= 0 (inf: no limit), got {self.push_down_limit}")
        if not self.span_weight >= 0.0:
            raise RwftError(f"--span-weight: expected a value >= 0 (0 ignores spans), got {self.span_weight}")
        if not 0.0 <= self.distill_weight <= 1.0 or self.distill_temperature <= 0:
            raise RwftError(f"--distill-weight {self.distill_weight} / --distill-temperature "
                            f"{self.distill_temperature}: expected a weight in [0, 1] and a positive temperature")
        super().__post_init__()


class WeightedTrainer(Trainer):
    """Trainer whose loss is ``weighted_nll``; logs weight statistics, agent-token share and speed."""

    loss_is_scaled_for_ga = True  # weighted_nll divides by a normalizer for the whole optimizer batch

    def __init__(self, *args, tokens_per_conversation: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
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
        """The objective's ``loss`` and what every trainer shares after it: the scaling for several processes
        and the step statistics."""
        loss, outputs, weights = self.loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        self._stats.add(inputs["labels"], weights, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def loss(self, model, inputs, num_items_in_batch):
        """``(loss, outputs, token weights)`` of one batch: ``weighted_nll`` of the batch's token weights,
        normalized by ``num_items_in_batch``. Trainers with a loss of their own override this alone."""
        from rwft.objectives.losses import weighted_nll

        outputs = model(**model_inputs(inputs))
        weights = inputs["token_weights"]
        loss = weighted_nll(outputs.logits, inputs["labels"], weights, num_items_in_batch,
                            inputs.get("ref_logprobs"), getattr(self.args, "push_down_limit", math.inf))
        return loss, outputs, weights

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_length:
            return super()._get_train_sampler(train_dataset)
        from rwft.train.collate import LengthGroupedSampler

        rows = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedSampler(rows["length"], self.args.per_device_train_batch_size, seed=self.args.seed)

    def log(self, logs, start_time=None):
        if "loss" in logs:
            logs.update(self._stats.pop())
        super().log(logs, start_time)


def model_inputs(inputs: dict) -> dict:
    """The entries of a batch that the model's forward takes (the rest are the loss's)."""
    return {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}


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


def prepare(config: TrainConfig, tokenizer) -> skeleton.Prepared:
    """Load, check, weight (by the objective's registry entry) and tokenize the data (Arrow, cached); raises
    RwftError before anything is written."""
    from rwft.data.dataset import prepare_training_data

    entry = OBJECTIVES[config.objective]
    data, stats = prepare_training_data(
        config.data, tokenizer, objective=entry.name, agent_role=config.agent_role,
        max_length=config.max_length, top_k=config.top_k, threshold=config.threshold, gamma=config.gamma,
        length_normalization=config.length_normalization, num_proc=config.dataset_num_proc,
    )
    auto = " (auto)" if config.length_normalization == "auto" else ""
    summary = (f"{stats.kept} of {stats.conversations} conversations, {stats.agent_tokens} agent tokens "
               f"({stats.zero_weight} weigh 0, {stats.truncated} truncated, {stats.too_long} too long); "
               f"objective {entry.name}, length normalization {stats.length_normalization}{auto}")
    return skeleton.Prepared(data, stats, summary)


def make_trainer(config: TrainConfig, model, tokenizer, prepared: skeleton.Prepared, callbacks,
                 trainer_cls: type | None = None, collator=None, **extra) -> WeightedTrainer:
    """The WeightedTrainer (or a subclass, ``trainer_cls``, with its ``collator`` and ``extra`` arguments) on the
    prepared data."""
    from rwft.train.collate import WeightedCollator

    data, collator = prepared.data, collator or WeightedCollator(tokenizer.pad_token_id, config.span_weight)
    if trainer_cls is None:  # the loss with the bounded push-down is WeightedTrainer's own
        data = with_reference(config, model, data, collator)
    return (trainer_cls or WeightedTrainer)(
        model=model,
        args=config,
        train_dataset=data,
        data_collator=collator,
        processing_class=tokenizer,
        tokens_per_conversation=prepared.stats.agent_tokens / prepared.stats.kept,
        callbacks=callbacks,
        **extra,
    )


def with_reference(config: TrainConfig, model, data, collator):
    """``data`` with pi_0's log-probabilities of the trained tokens (``train.reference``) when the bounded
    push-down needs them: ``--push-down-limit`` set and some token weighing < 0."""
    from rwft.train.reference import needs_reference, reference_logprobs

    if math.isinf(config.push_down_limit) or not needs_reference(data, config.span_weight):
        return data
    model.to(config.device)
    desc = None if config.disable_tqdm or config.process_index != 0 else "pi_0 log-probs"
    ref = reference_logprobs(model, data, collator, config.per_device_train_batch_size, desc)
    with quiet_hf():  # the rows are a selection of the cached encoding: flattened in memory, not into its files
        return data.flatten_indices(keep_in_memory=True).add_column("ref_logprobs", ref)


RECIPE = skeleton.Recipe(prepare, make_trainer)
