"""From conversations to weighted token sequences, and from sequences to padded batches.

Weights are per token and travel with the tokens (``token_weights``), so no batching mode can lose
them or attach them to the wrong sequence: a test shuffles, groups and pads and checks that each
agent token still carries its trajectory's weight.
"""

from __future__ import annotations

from typing import Any

import torch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length in random order: shuffle, sort each mega-batch of ``mega`` batches by length,
    cut it into batches, shuffle the batches. The order depends only on (seed, epoch), so a resumed run
    sees the same batches. transformers' own grouping sorts mega-batches of at most 50 batches and at most
    a quarter of the data, which leaves a third to half of the slots padding on small datasets."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 64):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = lengths, batch_size, seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size, bs = self.mega * self.batch_size, self.batch_size
        batches, rest = [], []
        for start in range(0, len(order), size):
            mega = sorted(order[start:start + size], key=lambda i: self.lengths[i], reverse=True)
            cut = len(mega) - len(mega) % bs
            batches += [mega[i:i + bs] for i in range(0, cut, bs)]
            rest += mega[cut:]
        rest.sort(key=lambda i: self.lengths[i], reverse=True)
        cut = len(rest) - len(rest) % bs
        batches += [rest[i:i + bs] for i in range(0, cut, bs)]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[k]
        yield from rest[cut:]  # the one partial batch goes last, so the loader's batches stay aligned


class WeightedCollator:
    """Right-pad a list of sequences: pad id for inputs, -100 for labels, 0 for weights."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value, dtype) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (n - len(r[key])) for r in rows], dtype=dtype)

        return {
            "input_ids": pad("input_ids", self.pad_token_id, torch.long),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows]),
            "labels": pad("labels", -100, torch.long),
            "token_weights": pad("token_weights", 0.0, torch.float32),
        }
