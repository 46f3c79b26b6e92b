import pytest
import torch

from rwft.presets import load_model
from rwft.rollout.kv_cache import GrowingLayer, compact, growing_cache


def kv(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, t, 3, generator=g), torch.randn(b, 2, t, 3, generator=g)


def test_growing_layer_equals_concatenation_across_regrowth_and_row_selection():
    layer = GrowingLayer()
    ks, vs = [], []
    for step, t in enumerate([5, 1, 1, 70, 1, 3]):  # 70 forces a regrowth past the first buffer
        k, v = kv(4, t, step)
        ks.append(k)
        vs.append(v)
        out_k, out_v = layer.update(k, v)
        assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, torch.cat(vs, dim=2))
    assert layer.get_seq_length() == 81
    rows = torch.tensor([3, 1])
    layer.batch_select_indices(rows)
    k, v = kv(2, 1, 99)
    out_k, _ = layer.update(k, v)
    assert torch.equal(out_k, torch.cat([torch.cat(ks, dim=2)[rows], k], dim=2))


def test_compact_keeps_each_rows_columns_in_order_right_aligned():
    cache = growing_cache(load_model("tiny").config)
    keys = []
    for layer in cache.layers:
        k, v = kv(2, 5, len(keys))
        layer.update(k, v)
        keys.append(k)
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 1]])
    new_ids, new_mask = compact(cache, ids, mask)
    assert new_mask.tolist() == [[1, 1, 1], [0, 1, 1]]  # row 1's front column is padding
    assert new_ids[0].tolist() == [11, 13, 14] and new_ids[1, 1:].tolist() == [20, 24]
    for layer, k in zip(cache.layers, keys, strict=True):
        assert torch.equal(layer.keys[0], k[0][:, [1, 3, 4]])
        assert torch.equal(layer.keys[1, :, 1:], k[1][:, [0, 4]])
    k, v = kv(2, 1, 7)
    assert cache.layers[0].update(k, v)[0].shape[2] == 4  # grows again after compaction


def test_compact_leaves_a_full_mask_alone():
    cache = growing_cache(load_model("tiny").config)
    for layer in cache.layers:
        layer.update(*kv(1, 3, 0))
    ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long)
    assert compact(cache, ids, mask) == (ids, mask)


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_model_fills_a_growing_cache_given_as_cache_and_continues_from_it():
    """transformers' Cache API: the model writes into the cache passed as ``cache`` (no deprecated argument),
    and a step from it gives the logits of a full forward."""
    model = load_model("tiny").eval()
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    cache = growing_cache(model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :4], cache=cache)
        assert cache.get_seq_length() == 4 and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
        step = model(input_ids=ids[:, 4:], cache=cache).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)
