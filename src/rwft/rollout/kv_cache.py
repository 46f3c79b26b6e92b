"""A KV cache for batched multi-turn collection: transformers' DynamicCache with room to grow.

transformers' ``DynamicLayer`` appends each decoding step with ``torch.cat``, copying the whole cache
of every layer at every step; at batch 32 that copy costs about a third of a decoding step of the
tiny preset on a CPU. ``GrowingLayer`` keeps its keys and values in buffers with spare columns,
doubled when full, so a step writes one column. ``growing_cache(config)`` is a ``DynamicCache`` whose
full-attention layers are ``GrowingLayer`` (other layer kinds, such as sliding windows, are kept).
This is the only part of generation written by hand here; ``generate`` does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer backed by buffers with spare room; ``keys``/``values`` are views of the filled part."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._k = self._v = key_states[..., :0, :]
            self.is_initialized = True
        n, t = self.keys_length(), key_states.shape[-2]
        if n + t > self._k.shape[-2]:
            shape = (*key_states.shape[:-2], max(64, 2 * (n + t)), key_states.shape[-1])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape)
            k[..., :n, :], v[..., :n, :] = self._k[..., :n, :], self._v[..., :n, :]
            self._k, self._v = k, v
        self._k[..., n : n + t, :] = key_states
        self._v[..., n : n + t, :] = value_states
        self.keys, self.values = self._k[..., : n + t, :], self._v[..., : n + t, :]
        return self.keys, self.values

    def keys_length(self) -> int:
        return 0 if self.keys is None or self.keys.dim() < 2 else self.keys.shape[-2]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            n = self.keys_length()
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]

    def select_columns(self, index: torch.Tensor) -> None:
        """Keep, for each row b, the columns ``index[b]`` in that order (``index``: [batch, width])."""
        b, h, _, d = self.keys.shape
        gather = index[:, None, :, None].expand(b, h, index.shape[1], d)
        self._k, self._v = self.keys.gather(2, gather), self.values.gather(2, gather)
        self.keys, self.values = self._k, self._v

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)  # narrows the views; the buffers keep their room

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            n = self.keys_length()
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self.keys, self.values = self._k[..., :n, :], self._v[..., :n, :]


def compact(cache: DynamicCache, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the columns ``mask`` marks 0: each row's kept columns move to its right end, in order.

    The rows are left-padded again (``mask`` 0 in front) and no wider than the longest row. Positions do
    not change (generate derives them from the mask, and the cached keys already carry them). A cache
    with a layer that cannot select columns is returned as it was. Returns the new ``ids`` and ``mask``.
    """
    if not all(isinstance(layer, GrowingLayer) and layer.is_initialized for layer in cache.layers):
        return ids, mask
    keep = mask.bool()
    width = int(keep.sum(1).max())
    if width == mask.shape[1]:
        return ids, mask
    # a stable sort puts the dropped columns first and the kept ones last, each group in its own order
    index = torch.argsort(keep.to(torch.int8), dim=1, stable=True)[:, mask.shape[1] - width :]
    for layer in cache.layers:
        layer.select_columns(index)
    return ids.gather(1, index), mask.gather(1, index)


def growing_cache(config: Any) -> DynamicCache:
    """A DynamicCache for ``config`` whose full-attention layers grow in place (see the module docstring)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
