"""Pure math of online training (``rwft iterate``): group advantages, their per-token form with error spans,
online preference pairs, the DPO and GRPO losses, and the per-token KL and entropy that are logged. Imports
nothing else of rwft.

The losses follow TRL's trainers term for term (``DPOTrainer`` with ``loss_type="sigmoid"``, ``GRPOTrainer``
with ``loss_type="grpo"`` or ``"dapo"``), whose versions live inside trainer methods and cannot be called on their own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

STD_EPS = 1e-4


def _groups(groups: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return out


def grpo_advantages(rewards: Sequence[float], groups: Sequence[str], scale: bool = True) -> list[float]:
    """GRPO's group advantage, as TRL's ``GRPOTrainer`` (``scale_rewards="group"``) and Bridging's code:

        A_i = (r_i - mean_g) / (std_g + 1e-4)

    with mean_g and the sample std std_g (n - 1 in the denominator) over the group g of i; ``scale=False``
    gives A_i = r_i - mean_g (Dr. GRPO). A group of one sample gets A = 0 (TRL has no such groups). The
    scaled advantage is Swift's weight (population std, ``objectives.weights.swift_weights``) times
    sqrt((n - 1) / n) up to the 1e-4."""
    adv = [0.0] * len(rewards)
    for idx in _groups(groups).values():
        if len(idx) < 2:
            continue
        rs = [float(rewards[i]) for i in idx]
        mu = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mu) ** 2 for r in rs) / (len(rs) - 1))
        for i in idx:
            adv[i] = (rewards[i] - mu) / (std + STD_EPS) if scale else rewards[i] - mu
    return adv


def span_advantages(advantages: torch.Tensor, penalty: torch.Tensor, span_weight: float) -> torch.Tensor:
    """Per-token advantages (or weights) from error spans, ``rwft iterate --span-judge``:

        A_it = A_i - lambda * p_it

    A_i the episode's advantage ([B]) or its tokens' weights ([B, T]), p_it token t's error-span penalty ([B, T],
    ``data.encode.SEVERITY_PENALTY``: minor 1, major 5, critical 10; 0 outside every span), lambda ``span_weight``
    (``rwft train --span-weight``'s convention): a token outside every span keeps A_i."""
    a = advantages[:, None] if advantages.dim() == 1 else advantages
    return a - span_weight * penalty.to(a.dtype)


def online_pairs(rewards: Sequence[float], groups: Sequence[str], verifiable: bool, rng: random.Random,
                 threshold: float = 0.5) -> tuple[list[tuple[int, int]], int]:
    """(chosen, rejected) index pairs, one per group, and the number of groups skipped (Bridging, sec. 3).

    Verifiable rewards: chosen = a random response with r >= threshold, rejected = a random one below it;
    a group whose responses are all right or all wrong is skipped. Otherwise: chosen = the best, rejected =
    the worst (the first in order on ties); a group whose rewards are all equal is skipped. Groups are
    visited in order of first appearance, and ``rng`` is drawn from only for verifiable groups kept."""
    pairs, skipped = [], 0
    for idx in _groups(groups).values():
        if verifiable:
            good = [i for i in idx if rewards[i] >= threshold]
            bad = [i for i in idx if rewards[i] < threshold]
            if not good or not bad:
                skipped += 1
                continue
            pairs.append((rng.choice(good), rng.choice(bad)))
        else:
            best = max(idx, key=lambda i: rewards[i])  # max/min keep the first of equal values
            worst = min(idx, key=lambda i: rewards[i])
            if rewards[best] - rewards[worst] <= 0:
                skipped += 1
                continue
            pairs.append((best, worst))
    return pairs, skipped


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """L = - mean_pairs log sigmoid( beta * ( log pi(y+)/pi_ref(y+) - log pi(y-)/pi_ref(y-) ) ), each log pi
    the sum over the response's tokens (TRL's ``sigmoid`` loss)."""
    delta = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * delta).mean()


def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(pi || pi_ref) per sampled token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, kl_coef: float, epsilon: float = 0.2,
              loss_type: str = "grpo", tokens: float | None = None) -> torch.Tensor:
    """TRL's GRPO loss (token-level ratio, ``epsilon_low = epsilon_high = epsilon``), ``loss_type`` "grpo" or "dapo":

        rho_it = exp(logp_it - old_it),   l_it = -min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) + kl_coef * k3_it
        grpo:  L = mean_i [ sum_t m_it l_it / sum_t m_it ]
        dapo:  L = sum_i sum_t m_it l_it / N,   N = ``tokens`` (the whole batch's agent tokens; default sum m_it)

    "grpo" weighs each episode equally, so a token of a short episode counts more than one of a long episode: a
    token every episode of a group shares gets sum_i A_i / |y_i|, not 0, and is pushed down when the failed
    episodes are the short ones (TRL's docs: "not recommended due to length bias"). "dapo" (TRL's default) weighs
    every token equally. ``old_logps``: the log-probabilities of the policy that sampled (None: the trainer's own,
    so rho = 1 and only its gradient remains); k3 as ``per_token_kl``. ``logps``, ``old_logps``, ``ref_logps`` and
    ``mask`` are [B, T] over the sampled tokens, ``advantages`` [B], or [B, T] per token (A_it, ``span_advantages``)."""
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    a = (advantages[:, None] if advantages.dim() == 1 else advantages).to(logps.dtype)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * a)
    if kl_coef and ref_logps is not None:
        per_token = per_token + kl_coef * per_token_kl(logps, ref_logps)
    if loss_type == "dapo":
        return (per_token * mask).sum() / (mask.sum() if tokens is None else torch.tensor(tokens)).clamp(min=1.0)
    if loss_type != "grpo":
        raise ValueError(f"loss_type: expected grpo or dapo, got {loss_type!r}")
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token entropy H_t = - sum_v p_t(v) log p_t(v) over the positions where ``mask`` is set."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    m = mask.to(h.dtype)
    return (h * m).sum() / m.sum().clamp(min=1.0)
