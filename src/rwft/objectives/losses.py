"""The losses of the reward-weighted objectives: weighted NLL, and STaR-GATE-D's distillation term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    ref_logprobs: torch.Tensor | None = None,
    push_down_limit: float | None = None,
) -> torch.Tensor:
    """L = - sum_{i, t} w_{i,t} * log p(y_{i,t} | y_{i,<t}) / N.

    Bounded push-down: with ``ref_logprobs`` (log pi_0 of each labelled token, same shape) and
    ``push_down_limit`` delta, a token with w < 0 contributes - w * max(log p, log pi_0 - delta) instead:
    its push stops once the policy gives it e^delta times less than pi_0 did. This is PPO's clip for a
    negative advantage, min(rho A, clip(rho, 1 - eps, 1 + eps) A) = A max(rho, 1 - eps), in log space with
    delta = -log(1 - eps). Tokens with w >= 0 are not clipped. Without a bound the loss is unbounded below
    for w < 0: the summed log-likelihood of a bad trajectory can be pushed to -infinity.

    ``labels`` hold the token ids with -100 outside the agent's turns; ``weights`` (same shape) the
    weight of each token (its trajectory's or turn's weight). Position t is predicted from t - 1.

    Normalization: the sum runs over tokens, so a trajectory contributes its *summed* agent
    log-likelihood times its weight, as in the paper's objective E[r * log pi(tau | x)]. The trainer
    passes N = (conversations in the whole optimizer batch, over accumulation steps and processes)
    x (mean agent tokens per conversation in the training set): a constant per conversation, so no
    trajectory's weight depends on which others share its batch (dividing by the batch's own token
    count would favour short conversations whenever batches are grouped by length), the loss has the
    scale of a per-token SFT loss (learning rates carry over), and the gradient is the same however a
    batch is split. Without ``num_items``, N is this call's agent-token count.

    A length normalization other than the summed form (``rwft train --length-normalization``: per trajectory,
    w x L_bar / L_i; per turn, w_t x n_bar / n_t) is already in ``weights``: it is applied to each turn's
    weight when the data is prepared, so N stays the same constant and the gradient stays the same however
    a batch is split.
    """
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    weights = weights[:, 1:].to(logits.dtype)
    mask = labels != -100
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none")
    if ref_logprobs is not None and push_down_limit is not None and push_down_limit < float("inf"):
        floor = push_down_limit - ref_logprobs[:, 1:].reshape(-1).to(nll.dtype)  # -(log pi_0 - delta)
        nll = torch.where(weights.reshape(-1) < 0, torch.minimum(nll, floor), nll)
    total = (nll * weights.reshape(-1) * mask.reshape(-1)).sum()
    n = mask.sum() if num_items is None else num_items
    if torch.is_tensor(n):
        n = n.to(total.device)
    return total / n


def distill_nll(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
    distill_weight: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """STaR-GATE-D: weighted SFT plus distillation toward a teacher (pi_0), per token t of the agent's turns:

        L = sum_{i,t} w_{i,t} * [ (1 - lam) * (-log p(y_t | y_<t))
                                  + lam * T^2 * KL( softmax(z0_t / T) || softmax(z_t / T) ) ] / N

    with z the policy's logits, z0 the teacher's (no gradient), lam = ``distill_weight``, T = ``temperature``.
    The KL is the forward one (teacher first: Hinton et al.'s knowledge distillation, mass-covering), over
    the whole vocabulary; the T^2 factor keeps its gradient on the scale of the NLL's as T grows. The tokens
    and the normalizer N are those of ``weighted_nll`` (labels != -100, weighted by w; for STaR-GATE's
    filtered weights w is 1 on the agent tokens of each context's kept trajectories and 0 elsewhere), so the
    gradient is the same however an optimizer batch is split. lam = 0 gives ``weighted_nll``.
    """
    labels = labels[:, 1:]
    mask = labels != -100
    w = weights[:, 1:][mask].float()
    z = logits[:, :-1][mask].float()  # (agent tokens, V): only the positions that count
    z0 = teacher_logits[:, :-1][mask].float().detach()
    nll = F.cross_entropy(z, labels[mask], reduction="none")
    log_p = F.log_softmax(z / temperature, dim=-1)
    log_q = F.log_softmax(z0 / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    total = (w * ((1 - distill_weight) * nll + distill_weight * temperature**2 * kl)).sum()
    n = mask.sum() if num_items is None else num_items
    if torch.is_tensor(n):
        n = n.to(total.device)
    return total / n
