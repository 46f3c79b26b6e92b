"""Acting with a Q-SFT run: the paper's policy extraction as a transformers LogitsProcessor.

Q-SFT (BRIEF paper 2) trains p_theta so that p_theta(a|s) = B(s, a) * pi_beta(a|s): the probability divided
by the behaviour policy is a (conservative) Q-value in [0, 1]. It acts with

    pi(a|s)  proportional to  pi_phi(a|s) * exp(beta * p_theta(a|s))

where pi_phi is the behaviour policy (SFT on the logged data). In logits: ``extraction_scores`` =
log_softmax(pi_phi's logits) + beta * softmax(p_theta's logits). ``QSFTPolicy``, an ``HFPolicy``,
generates with pi_phi as its model; ``QSFTProcessor`` runs p_theta on the same tokens alongside (its own
KV cache: a prefill of the prompt with the batch's attention mask and position ids from the mask, then
one token per step; from the second turn of the same episodes on, the prefill covers only the new tokens,
as for pi_phi) and rewrites the scores before the row sampler, so temperature (applied to the whole
adjusted score) and per-row seeded sampling work as for any policy.

beta: since p_theta lies in [0, 1], beta is the most (in nats) the value term can raise a token's
log-probability above pi_phi's. beta = 0 is pi_phi itself; as beta -> infinity the policy tends to
greedy over p_theta (argmax_a p_theta(a|s): a token both likely under the data and valuable, since
p_theta = Q * pi_beta). Greedy over the ratio p_theta / pi_phi, the Q-value itself, is the value-greedy
policy the Q-function defines; it is not offered, because the ratio is unreliable exactly where pi_phi is
tiny: the loss spreads 1 - B uniformly over the vocabulary, so a token the data never shows keeps
p_theta around (1 - B) / (|V| - 1) while pi_phi may give it 1e-9, and the ratio's argmax is such a token.
The extraction above never lets p_theta promote a token beyond exp(beta) times pi_phi.

A run directory ``RUN`` that holds ``qsft.json`` (``{"behaviour_model": PATH, "beta": NUMBER}``, written by
``rwft train --objective qsft``) is a ``QSFTPolicy`` for ``make_policy``: ``RUN`` itself is p_theta (a
``save_pretrained`` model, or a PEFT adapter on its base), ``behaviour_model`` is pi_phi (a preset, a
directory, a hub id; a relative path that exists inside ``RUN`` is taken from there) and ``beta`` the
default acting beta (``--qsft-beta`` overrides it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor

from rwft.errors import RwftError
from rwft.rollout.hf_policy import HFPolicy
from rwft.rollout.kv_cache import growing_cache

QSFT_FILE = "qsft.json"


def extraction_scores(behaviour_logits: torch.Tensor, q_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi(a|s) up to a constant: log_softmax(behaviour_logits) + beta * softmax(q_logits), i.e.
    pi(a|s) proportional to pi_phi(a|s) * exp(beta * p_theta(a|s)); in float32, over the last axis."""
    return torch.log_softmax(behaviour_logits.float(), dim=-1) + beta * torch.softmax(q_logits.float(), dim=-1)


class QSFTProcessor(LogitsProcessor):
    """Rewrites pi_phi's next-token scores into Q-SFT's extraction with the Q model ``q_model`` (see the
    module docstring). One instance per ``generate`` call: ``attention_mask`` is the mask of the prompt
    ``input_ids`` the call starts from (left padding and masked cache columns as 0); ``past``, the Q model's
    cache of the previous turn narrowed by ``HFPolicy`` to the prompt's first ``past.get_seq_length()``
    columns, or None. After the call ``cache`` holds every column but the last generated one, as
    ``HFPolicy`` keeps for the next turn."""

    def __init__(self, q_model: Any, beta: float, attention_mask: torch.Tensor, past: Any = None):
        self.q_model = q_model
        self.beta = float(beta)
        self.mask = attention_mask
        self.past = past
        self.cache: Any = None
        self.seen = 0
        self.reused_columns = 0
        """columns of the prompt that came cached from the previous turn (0: a full prefill)"""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.cache is None:  # the first step: prefill the prompt
            if input_ids.shape != self.mask.shape:
                raise RuntimeError(f"QSFTProcessor: prompt {tuple(input_ids.shape)} and mask "
                                   f"{tuple(self.mask.shape)} differ")
            position = (self.mask.cumsum(-1) - 1).clamp(min=0)
            done = 0 if self.past is None else self.past.get_seq_length()
            if 0 < done < input_ids.shape[1]:  # the previous turn's columns are cached: prefill the rest
                self.cache, feed, position = self.past, input_ids[:, done:], position[:, done:]
                self.reused_columns = done
            else:
                self.cache, feed = growing_cache(self.q_model.config), input_ids
            self.past = None
        else:  # one new token per step
            if input_ids.shape[1] != self.seen + 1:
                raise RuntimeError(f"QSFTProcessor: expected {self.seen + 1} columns, got {input_ids.shape[1]}")
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
            feed, position = input_ids[:, -1:], self.mask.sum(-1, keepdim=True) - 1
        with torch.no_grad():
            out = self.q_model(input_ids=feed, attention_mask=self.mask, position_ids=position,
                               cache=self.cache, use_cache=True, logits_to_keep=1)
        self.seen = input_ids.shape[1]
        vocab = scores.shape[-1]
        return extraction_scores(scores, out.logits[:, -1, :vocab], self.beta)


def read_qsft_json(run_dir: Path) -> tuple[str, float]:
    """``(behaviour_model, beta)`` from ``RUN/qsft.json``; a one-line RwftError naming the file otherwise."""
    path = run_dir / QSFT_FILE
    shape = '{"behaviour_model": PATH, "beta": NUMBER}'
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RwftError(f"{path}: unreadable ({str(e).splitlines()[0]}); expected {shape}") from None
    if not isinstance(info, dict):
        raise RwftError(f"{path}: expected a JSON object {shape}")
    for key in ("behaviour_model", "beta"):
        if key not in info:
            raise RwftError(f"{path}: missing key {key!r}; expected {shape}")
    behaviour, beta = info["behaviour_model"], info["beta"]
    if not isinstance(behaviour, str) or not behaviour:
        raise RwftError(f"{path}: key 'behaviour_model': expected a model path or preset, got {behaviour!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise RwftError(f"{path}: key 'beta': expected a number >= 0, got {beta!r}")
    inside = run_dir / behaviour
    if not Path(behaviour).is_absolute() and inside.is_dir():
        behaviour = str(inside)
    return behaviour, float(beta)


def load_q_model(run_dir: Path, dtype: Any = None) -> Any:
    """The Q model of a run directory: a ``save_pretrained`` model, or a PEFT adapter loaded on its base (from
    ``adapter_config.json``) and merged, as generation needs no separate adapter."""
    from rwft.presets import load_model

    if (run_dir / "config.json").is_file():
        return load_model(str(run_dir), dtype=dtype)
    adapter = run_dir / "adapter_config.json"
    if adapter.is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not isinstance(base, str) or not base:
            raise RwftError(f"{adapter}: no base_model_name_or_path; cannot load the Q model's base")
        return PeftModel.from_pretrained(load_model(base, dtype=dtype), str(run_dir)).merge_and_unload()
    raise RwftError(f"{run_dir}: a Q-SFT run directory must hold the Q model (config.json and safetensors "
                    "weights, or a PEFT adapter_config.json); found neither")


class QSFTPolicy(HFPolicy):
    """An ``HFPolicy`` generating with the behaviour model pi_phi and extracting with the run's Q model p_theta
    (``QSFTProcessor``). ``beta`` <= 0 uses ``qsft.json``'s beta. Everything loads (and is checked) here,
    before any episode."""

    def __init__(self, run_dir: str, max_new_tokens: int = 64, beta: float = 0.0):
        run = Path(run_dir)
        behaviour, default_beta = read_qsft_json(run)
        super().__init__(behaviour, max_new_tokens)
        self.beta = float(beta) if beta > 0 else default_beta
        self.q_model = load_q_model(run, dtype=self.model.dtype).to(self.device).eval()
        q_vocab = self.q_model.get_output_embeddings().weight.shape[0]
        b_vocab = self.model.get_output_embeddings().weight.shape[0]
        if q_vocab < b_vocab:
            raise RwftError(f"{run / QSFT_FILE}: the Q model's vocabulary ({q_vocab}) is smaller than the "
                            f"behaviour model's ({b_vocab}); both must come from the same pretrained model")
        self.logits_processors.append(lambda ids, mask, past: QSFTProcessor(self.q_model, self.beta, mask, past))
        self.name = f"{run_dir} (qsft, beta {self.beta:g})"
