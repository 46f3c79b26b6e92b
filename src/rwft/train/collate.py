"""From token sequences to padded batches, and their order.

Each row carries its own ``turn_weights`` and the ``turn_index`` of each token, and the collator builds
the per-token weights from them, so no batching mode can lose weights or attach them to the wrong
sequence: a test shuffles, groups and pads and checks that each agent token still carries its turn's weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length in random order: shuffle, sort each mega-batch of ``mega`` batches by length,
    cut it into batches, shuffle the batches. The order depends only on (seed, epoch), so a resumed run
    sees the same batches. transformers' own grouping sorts mega-batches of at most 50 batches and at most
    a quarter of the data, which leaves a third to half of the slots padding on small datasets.

    ``lengths``: any sequence of ints (a dataset's ``length`` column, a numpy array); numpy throughout, so a
    million rows take well under a second."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, mega: int = 64):
        self.lengths = _as_array(lengths)
        self.batch_size, self.seed, self.mega, self.epoch = batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> np.ndarray:
        """The whole epoch's order of row indices."""
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        chunk = np.arange(n) // (self.mega * bs)
        # within each mega-batch, longest first (stable: equal lengths keep their shuffled order)
        s = perm[np.lexsort((-self.lengths[perm], chunk))]
        # every mega-batch but the last holds whole batches; the last one's shortest leftovers stay last
        rest = n % (self.mega * bs) % bs
        full = s[: n - rest].reshape(-1, bs)
        return np.concatenate([full[rng.permutation(len(full))].ravel(), s[n - rest:]])

    def __iter__(self):
        return iter(self.order().tolist())


def _as_array(lengths) -> np.ndarray:
    """A numpy copy of ``lengths``; a ``datasets`` column (``ds["length"]``, which numpy would read one item at
    a time: a minute per million rows) is read as one Arrow column."""
    source, name = getattr(lengths, "source", None), getattr(lengths, "column_name", None)
    if source is not None and name is not None:
        try:
            import pyarrow.compute as pc

            col = source.data.column(name)
            if source._indices is not None:
                col = pc.take(col, source._indices.column(0))
            return col.to_numpy().astype(np.int64)
        except (AttributeError, KeyError, TypeError):
            return np.asarray(source.select_columns([name]).with_format("arrow")[:].column(0), dtype=np.int64)
    return np.asarray(lengths, dtype=np.int64)


def token_weights(turn_index: np.ndarray, turn_weights: np.ndarray, penalty: np.ndarray | None,
                  span_weight: float) -> np.ndarray:
    """One row's token weights: w_t = w_{k(t)} - lambda * p_t where the turn's weight w_{k(t)} != 0, else 0.

    k(t) is the token's agent turn (``turn_index``, -1: none), p_t its error-span penalty (``token_penalty``,
    ``data.encode.SEVERITY_PENALTY``; None or empty: 0) and lambda ``span_weight``. Tokens outside every span
    keep their turn's weight; a turn the objective does not train (w = 0) stays out, so the trained tokens
    (the labels) and the loss's normalizer are the same with and without spans."""
    w = np.where(turn_index >= 0, turn_weights[np.maximum(turn_index, 0)], 0.0) if len(turn_weights) else \
        np.zeros(len(turn_index))
    if penalty is not None and len(penalty) and span_weight:
        w = np.where(w != 0, w - span_weight * penalty, 0.0)
    return w


class WeightedCollator:
    """Right-pad rows of ``input_ids``, ``turn_index`` (per token, -1 outside agent turns), ``turn_weights``
    (per agent turn), ``token_penalty`` (optional, per token) and ``ref_logprobs`` (optional, per token) into
    ``input_ids`` (pad id), ``attention_mask``, ``labels`` (the token where its weight is non-zero, else -100),
    ``token_weights`` (``token_weights`` of each row with ``span_weight`` as lambda, 0 on padding) and, when the
    rows have them, ``ref_logprobs`` (0 on padding)."""

    def __init__(self, pad_token_id: int, span_weight: float = 0.0):
        self.pad_token_id = pad_token_id
        self.span_weight = span_weight

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        b, n = len(rows), int(lens.max())
        input_ids = np.full((b, n), self.pad_token_id, dtype=np.int64)
        turn = np.full((b, n), -1, dtype=np.int64)
        weights = np.zeros((b, n), dtype=np.float32)
        ref = np.zeros((b, n), dtype=np.float32) if "ref_logprobs" in rows[0] else None
        for i, r in enumerate(rows):
            k = lens[i]
            input_ids[i, :k] = ids[i]
            t = np.asarray(r["turn_index"], dtype=np.int64)
            turn[i, :k] = t
            penalty = r.get("token_penalty")
            weights[i, :k] = token_weights(t, np.asarray(r["turn_weights"], dtype=np.float32),
                                           None if penalty is None else np.asarray(penalty, dtype=np.float32),
                                           self.span_weight)
            if ref is not None:
                ref[i, :k] = r["ref_logprobs"]
        attention = np.arange(n)[None, :] < lens[:, None]
        labels = np.where((weights != 0) & attention, input_ids, -100)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "token_weights": torch.from_numpy(weights),
        }
        if ref is not None:
            batch["ref_logprobs"] = torch.from_numpy(ref)
        return batch
