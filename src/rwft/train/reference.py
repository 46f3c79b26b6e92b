"""pi_0's log-probability of each trained token, computed once before training, for the bounded push-down
of negative weights (``objectives.losses.weighted_nll``'s ``push_down_limit``).

The reference is the model as training starts (the weights ``rwft train --model`` loads; with LoRA, the base
with its untrained adapter, which computes the same function). ``skeleton.run`` loads those weights before
it builds the trainer and before a resumed run loads its checkpoint, so a rerun computes the same figures.
"""

from __future__ import annotations

import numpy as np
import torch


def needs_reference(data, span_weight: float) -> bool:
    """Whether any token of ``data`` (rows with ``turn_weights`` and ``token_penalty``) can weigh < 0."""
    import pyarrow.compute as pc

    table = data.with_format("arrow").select_columns(["turn_weights", "token_penalty"])[:]
    if len(table) == 0:
        return False
    low = pc.min(pc.list_flatten(table.column("turn_weights"))).as_py()
    if low is not None and low < 0:
        return True
    top = pc.max(pc.list_flatten(table.column("token_penalty"))).as_py()
    return bool(span_weight and top)


@torch.no_grad()
def reference_logprobs(model, data, collator, batch_size: int = 8, desc: str | None = None) -> list[np.ndarray]:
    """For each row of ``data``, log pi_0(x_t | x_<t) at every position t the collator labels (0 elsewhere,
    and at t = 0), as float32, in the row's own length. ``collator``: the trainer's (its ``labels``)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    starts = range(0, len(data), batch_size)
    for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
        rows = [data[i] for i in range(s, min(s + batch_size, len(data)))]
        batch = collator(rows)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
        logp = torch.where(labels != -100, logp, 0.0).cpu().numpy()
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            out.append(np.concatenate([[0.0], logp[i, : n - 1]]).astype(np.float32))
    model.train(was_training)
    return out
