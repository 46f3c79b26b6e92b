"""``rwft train --objective qsft``: Q-learning as supervised fine-tuning (Q-SFT, arXiv 2411.05193).

Three models from the same pretrained weights (``--model``):

- the behaviour policy pi_phi: ``--behaviour-model``, or (when empty) plain SFT on the same data trained
  first into ``OUTPUT/behaviour`` by a nested run of the skeleton (same options, objective sft, LoRA merged;
  resumable; skipped once its model is saved). Its figures are computed once, before training, and cached
  beside the tokenized data (``$RWFT_CACHE/data/qsft-behaviour-<key>``, key: the tokenized rows, the
  behaviour model's files and k): at every agent token, log pi_phi(logged token) and its top-k tokens with
  their log-probabilities (``objectives.qsft``: why the Bellman max runs over that support);
- the Q model p_theta, the model trained and saved, whose token probabilities divided by pi_phi are
  Q-values;
- the target p_theta_bar, a Polyak copy of p_theta's trainable weights (all of them, or with ``--lora``
  the adapter's, applied to the one frozen base by ``torch.func.functional_call``), updated after each
  optimizer step, saved in every checkpoint (``qsft_target.safetensors``) and restored on resume. One
  no-grad target forward per batch gives p_bar at every next state of the batch.

Rewards (``qsft_turn_rewards``): per agent turn, message-level rewards where the data has them, else the
conversation's reward on its last agent turn; every state's reward-to-go must lie in [0, 1] or
``--rescale-rewards`` maps all of them onto it; ``rwft label --per-turn`` credits are refused. Targets
(``QCollator`` sets lambda 1 inside a turn and ``--qsft-lambda`` into the next), transitions and the loss are
``objectives.qsft``'s; the first token of a sequence is never an action (``action_turns``). The loss is the
paper's weighted cross-entropy: weight B on the logged token and 1 - B spread uniformly over the other V - 1
tokens (not a dummy token: that needs a vocabulary entry the pretrained model does not have, and the uniform
spread keeps every logit's gradient bounded), normalized like ``weighted_nll``. The step log adds
``target_mean`` (mean B), ``q_ratio_mean`` (mean p_theta/pi_phi on logged tokens) and ``next_value_mean``.
``OUTPUT/qsft.json`` records what acting needs: ``behaviour_model`` (absolute path), ``beta``, ``gamma``,
``polyak``, ``lambda``, ``top_k``. Multi-process launches need ``--behaviour-model`` (the nested SFT run
trains in one process); the functional target forward assumes unsharded weights (DDP, not FSDP / DeepSpeed
ZeRO-3).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from rwft.data.arrow import digest
from rwft.data.io import write_text_atomic
from rwft.errors import RwftError
from rwft.objectives.qsft import (
    SUPPORT_MIN_PROB,
    action_turns,
    bellman_targets,
    next_state_values,
    polyak_,
    qsft_loss,
    transitions,
)
from rwft.train import skeleton, weighted
from rwft.train.qsft_behaviour import behaviour_cache, resolve_behaviour, train_behaviour
from rwft.train.weighted import TrainConfig, WeightedTrainer, model_inputs

TARGET_FILE = "qsft_target.safetensors"
Q_ZERO = {"target": 0.0, "ratio": 0.0, "next": 0.0, "n": 0, "n_next": 0}


# ---------------------------------------------------------------------------------------------- the data


def prepare(config: TrainConfig, tokenizer) -> skeleton.Prepared:
    """Rewards checked (before anything is written), data tokenized, behaviour policy trained or given, its
    figures cached; the behaviour model's directory is ``extras["behaviour"]``."""
    import pyarrow as pa

    from rwft.data.dataset import prepare_training_data, read_dataset

    raw = read_dataset(config.data, config.agent_role, require_reward=True)
    offsets, values = qsft_turn_rewards(raw, config.data, config.rescale_rewards, config.gamma)
    if not config.behaviour_model and config.world_size > 1:
        raise RwftError("--behaviour-model: required under a multi-process launch (train it first: "
                        "rwft train --objective sft ...)")
    data, stats = prepare_training_data(
        config.data, tokenizer, objective="sft", agent_role=config.agent_role, max_length=config.max_length,
        num_proc=config.dataset_num_proc, with_row=True)
    rewards = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.float32()))
    rows = data.with_format("arrow")["row"]
    data = data.with_format(None).add_column(
        "turn_rewards", rewards.take(rows),
        new_fingerprint=digest(data._fingerprint, hashlib.sha256(values.tobytes()).hexdigest()))
    behaviour = Path(config.behaviour_model and resolve_behaviour(config.behaviour_model)
                     or train_behaviour(config))
    cache = behaviour_cache(data, behaviour, config.qsft_top_k)
    import datasets

    from rwft.presets import quiet_hf

    with quiet_hf():  # datasets' "Flattening the indices" bar where rows were dropped
        data = datasets.concatenate_datasets([data, cache], axis=1).with_format("numpy")
    summary = (f"{stats.kept} of {stats.conversations} conversations, {stats.agent_tokens} agent tokens "
               f"({stats.truncated} truncated, {stats.too_long} too long); objective qsft, behaviour {behaviour}")
    return skeleton.Prepared(data, stats, summary, {"behaviour": behaviour})


def qsft_turn_rewards(ds, path, rescale: bool = False, gamma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Q-SFT's reward of every agent turn of every row of a ``read_dataset`` dataset: ``(offsets, values)``.

    The turn rewards r_j are ``Conversation.turn_rewards`` (message-level rewards where the data has them, else
    the conversation's reward on its last agent turn). Q-SFT's targets are Q-values, so every state's
    reward-to-go G_t = sum_{j >= t} gamma^(j - t) r_j must lie in [0, 1]. Without ``rescale`` a G_t outside
    it is refused (RwftError naming the file, the record, the turn and the value). With ``rescale`` every G_t
    is mapped affinely, G'_t = a G_t + c with a = 1 / (hi - lo), c = -lo / (hi - lo) (lo, hi: the lowest and
    highest G_t of the data), by r'_j = a r_j + c (1 - gamma) on every turn and + c gamma more on each
    conversation's last turn (sum_{j >= t} gamma^(j - t) r'_j = a G_t + c (1 - gamma^(T - t)) + c gamma^(T - t)).

    Turn rewards written by ``rwft label --per-turn`` (``metadata.per_turn``) are refused: they are R(<=t) -
    R(<=t-1), so Q-SFT would learn G_t = R - R(<=t-1), the outcome less the judge's score of the prefix,
    negative wherever the prefix score is above the outcome (most turns: the score is an ideal player's) and
    clamped to 0 there, and rescaled they would set each state's scale by the prefix score, which the
    extraction pi_phi exp(beta p_theta) does not undo. Q-SFT spreads the outcome over the turns by its own
    backups; the credits sum to the same return."""
    from rwft.data.weighting import arrow_table, list_column

    table = arrow_table(ds)
    offsets, values = list_column(table.column("turn_rewards"))
    values = np.asarray(values, dtype=np.float64)

    def where(i: int) -> str:
        return f"{path}: conversation {i + 1} (id {table.column('id')[i].as_py()!r})"

    credited = _per_turn_credited(table.column("metadata"))
    if len(credited):
        raise RwftError(f"{where(int(credited[0]))}: turn rewards by rwft label --per-turn (metadata.per_turn) "
                        "are refused by Q-SFT: its backups spread the conversation's reward over the turns "
                        "themselves, and the credits would make its Q-values the outcome less the judge's score "
                        "of each prefix; train on the logs without --per-turn (docs/qsft.md)")
    rows, togo = reward_to_go(offsets, values, gamma)
    if not rescale:
        bad = np.nonzero((togo < -1e-6) | (togo > 1 + 1e-6))[0]
        if len(bad):
            j = int(bad[0])
            i = int(rows[j])
            raise RwftError(f"{where(i)}: reward-to-go {togo[j]:g} from agent turn {j - offsets[i] + 1} outside "
                            f"[0, 1] (gamma {gamma:g}); Q-SFT needs every state's reward-to-go in [0, 1] (scale "
                            "the rewards, or pass --rescale-rewards to map them onto [0, 1])")
        return offsets, values
    lo, hi = (float(togo.min()), float(togo.max())) if len(togo) else (0.0, 0.0)
    if hi - lo < 1e-12:
        raise RwftError(f"{path}: --rescale-rewards: every state has the same reward-to-go ({lo:g}); "
                        "there is nothing to learn from")
    a, c = 1.0 / (hi - lo), -lo / (hi - lo)
    values = a * values + c * (1.0 - gamma)
    lengths = np.diff(offsets)
    values[offsets[1:][lengths > 0] - 1] += c * gamma
    return offsets, values


def reward_to_go(offsets: np.ndarray, values: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(row of each turn, G_j = r_j + gamma G_{j+1} within the row) of flat per-row turn rewards."""
    lengths = np.diff(offsets)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    back = offsets[1:][rows] - 1 - np.arange(len(values))  # turns after this one in its row
    togo = values.astype(np.float64).copy()
    for k in range(1, int(back.max(initial=0)) + 1):
        at = np.nonzero(back == k)[0]
        togo[at] += gamma * togo[at + 1]
    return rows, togo


def _per_turn_credited(metadata) -> np.ndarray:
    """Rows whose metadata (JSON strings) holds ``per_turn``, as ``rwft label --per-turn`` writes it."""
    import pyarrow.compute as pc

    maybe = np.nonzero(pc.match_substring(metadata, '"per_turn"').to_numpy(zero_copy_only=False))[0]
    return np.array([i for i in maybe if isinstance(json.loads(metadata[int(i)].as_py()).get("per_turn"), dict)],
                    dtype=np.int64)


class QCollator:
    """Right-padded batches with, per label position t (the state before token t): ``labels`` (agent tokens,
    else -100), ``q_next`` / ``q_reward`` / ``q_discount`` (``objectives.qsft.transitions`` of the row's turn
    rewards), ``q_lambda`` (1 inside a turn, ``lam`` into the next agent turn), ``phi_logp`` (log pi_phi of the
    logged token) and ``phi_ids`` / ``phi_lp`` (the cached top-k, -inf log-probability where empty). Agent
    tokens are those of ``action_turns``."""

    def __init__(self, pad_token_id: int, gamma: float, k: int, lam: float):
        self.pad_token_id, self.gamma, self.k, self.lam = pad_token_id, gamma, k, lam

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b, n, k = len(rows), max(len(r["input_ids"]) for r in rows), self.k
        ids = np.full((b, n), self.pad_token_id, dtype=np.int64)
        labels = np.full((b, n), -100, dtype=np.int64)
        nxt = np.full((b, n), -1, dtype=np.int64)
        reward, disc, logp = (np.zeros((b, n), dtype=np.float32) for _ in range(3))
        lam = np.ones((b, n), dtype=np.float32)
        top_ids = np.zeros((b, n, k), dtype=np.int64)
        top_lp = np.full((b, n, k), -np.inf, dtype=np.float32)
        attention = np.zeros((b, n), dtype=np.int64)
        for i, r in enumerate(rows):
            x, ti = np.asarray(r["input_ids"], dtype=np.int64), action_turns(r["turn_index"])
            m = len(x)
            agent = np.nonzero(ti >= 0)[0]
            ids[i, :m], attention[i, :m] = x, 1
            labels[i, agent] = x[agent]
            nxt[i, :m], reward[i, :m], disc[i, :m] = transitions(ti, r["turn_rewards"], self.gamma)
            lam[i, :m][ti[nxt[i, :m]] != ti] = self.lam  # 1 inside a turn, lambda into the next agent turn
            logp[i, agent] = r["phi_logp"]
            kk = len(r["phi_ids"]) // max(len(agent), 1)
            top_ids[i, agent, :kk] = np.asarray(r["phi_ids"]).reshape(len(agent), kk)
            top_lp[i, agent, :kk] = np.asarray(r["phi_lp"]).reshape(len(agent), kk)
        t = torch.from_numpy
        return {"input_ids": t(ids), "attention_mask": t(attention), "labels": t(labels), "q_next": t(nxt),
                "q_reward": t(reward), "q_discount": t(disc), "q_lambda": t(lam), "phi_logp": t(logp),
                "phi_ids": t(top_ids), "phi_lp": t(top_lp)}


class _Polyak(TrainerCallback):
    def __init__(self, trainer: QTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.update_target()


class QTrainer(WeightedTrainer):
    """WeightedTrainer (normalizer, length-grouped sampler, speed statistics) with Q-SFT's loss and target."""

    def __init__(self, *args, polyak: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.polyak = polyak
        self._target: dict[str, torch.Tensor] | None = None
        self._target_from: Path | None = None
        self._q = dict(Q_ZERO)
        self.add_callback(_Polyak(self))

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _ensure_target(self) -> dict[str, torch.Tensor]:
        if self._target is None:
            params = self._trainable()
            if self._target_from is not None:
                from safetensors.torch import load_file

                saved = load_file(str(self._target_from))
                if set(saved) != set(params):
                    raise RwftError(f"{self._target_from}: its target weights do not match the model's trainable ones")
                self._target = {n: saved[n].to(p.device, p.dtype) for n, p in params.items()}
            else:
                self._target = {n: p.detach().clone() for n, p in params.items()}
        return self._target

    def update_target(self) -> None:
        """Polyak step of the target after each optimizer step."""
        target, params = self._ensure_target(), self._trainable()
        polyak_(list(target.values()), [params[n] for n in target], self.polyak)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            path = Path(resume_from_checkpoint) / TARGET_FILE
            if not path.exists():
                raise RwftError(f"{path}: missing; this checkpoint was not written by a Q-SFT run")
            self._target, self._target_from = None, path
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if _internal_call and output_dir and self.args.should_save and self._target is not None:
            from safetensors.torch import save_file

            weights = {n: t.detach().contiguous().cpu() for n, t in self._target.items()}
            save_file(weights, str(Path(output_dir) / TARGET_FILE))

    def loss(self, model, inputs, num_items_in_batch):
        """``qsft_loss`` with the Bellman targets B of the batch's logged tokens (target network, no grad)."""
        from torch.func import functional_call

        labels, nxt, reward, disc = (inputs[k] for k in ("labels", "q_next", "q_reward", "q_discount"))
        phi_logp, phi_ids, phi_lp = (inputs[k] for k in ("phi_logp", "phi_ids", "phi_lp"))
        x = model_inputs(inputs)
        mask = labels != -100
        state = mask[:, 1:]  # the logits at t - 1 give p(. | s_t) for the agent token at t
        with torch.no_grad():
            training = self.model.training
            self.model.eval()  # the target without dropout
            try:
                bar = functional_call(self.model, self._ensure_target(), args=(), kwargs=x).logits
            finally:
                self.model.train(training)
            bar = bar[:, :-1][state].float()
            support = torch.cat([labels[mask][:, None], phi_ids[mask]], dim=-1)
            lbar = bar.gather(-1, support) - bar.logsumexp(-1, keepdim=True)
            v = next_state_values(lbar, torch.cat([phi_logp[mask][:, None], phi_lp[mask]], dim=-1))
            values = torch.zeros_like(reward)
            values[mask] = v
            targets = bellman_targets(reward, disc, nxt, values, inputs["q_lambda"]) * mask
        outputs = model(**x)
        loss, logp_a = qsft_loss(outputs.logits[:, :-1][state], labels[mask], targets[mask], num_items_in_batch)
        q = self._q
        q["target"] += float(targets[mask].sum())
        q["ratio"] += float(torch.exp(logp_a.detach() - phi_logp[mask]).sum())
        has_next = mask & (nxt >= 0)
        q["next"] += float(values.gather(-1, nxt.clamp(min=0))[has_next].sum())
        q["n"], q["n_next"] = q["n"] + int(mask.sum()), q["n_next"] + int(has_next.sum())
        return loss, outputs, targets

    def log(self, logs, start_time=None):
        if "loss" in logs:
            q, n = self._q, max(self._q["n"], 1)
            logs.update(target_mean=q["target"] / n, q_ratio_mean=q["ratio"] / n,
                        next_value_mean=q["next"] / max(q["n_next"], 1))
            self._q = dict(Q_ZERO)
        super().log(logs, start_time)


def write_qsft_json(config: TrainConfig, behaviour: Path) -> None:
    """OUTPUT/qsft.json: what acting with the run needs (read by the policy extraction)."""
    info = {"behaviour_model": str(behaviour), "beta": config.qsft_beta, "gamma": config.gamma,
            "polyak": config.polyak, "lambda": config.qsft_lambda, "top_k": config.qsft_top_k,
            "support_min_prob": SUPPORT_MIN_PROB, "rescale_rewards": config.rescale_rewards}
    write_text_atomic(Path(config.output_dir) / "qsft.json", json.dumps(info, indent=1) + "\n")


def make_trainer(config: TrainConfig, model, tokenizer, prepared: skeleton.Prepared, callbacks) -> QTrainer:
    behaviour = prepared.extras["behaviour"]
    if config.process_index == 0:
        write_qsft_json(config, behaviour)
    return weighted.make_trainer(config, model, tokenizer, prepared, callbacks, trainer_cls=QTrainer,
                                 collator=QCollator(tokenizer.pad_token_id, config.gamma, config.qsft_top_k,
                                                    config.qsft_lambda),
                                 polyak=config.polyak)


RECIPE = skeleton.Recipe(prepare, make_trainer)
