"""The one loss every reward-weighted objective shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """L = - sum_{i, t} w_{i,t} * log p(y_{i,t} | y_{i,<t}) / N.

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
    """
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    weights = weights[:, 1:].to(logits.dtype)
    mask = labels != -100
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none")
    total = (nll * weights.reshape(-1) * mask.reshape(-1)).sum()
    n = mask.sum() if num_items is None else num_items
    if torch.is_tensor(n):
        n = n.to(total.device)
    return total / n
