"""Presets build offline, load from safetensors only, and refuse pickle weights."""

from __future__ import annotations

import pytest
import torch

from rwft.errors import RwftError
from rwft.presets import load_model, load_tokenizer, resolve_model


def test_tiny_preset_is_cached_and_deterministic():
    a, b = resolve_model("tiny"), resolve_model("tiny")
    assert a == b
    model = load_model("tiny")
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 1e7
    tok = load_tokenizer("tiny")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id


def test_smollm2_preset_round_trips_through_safetensors():
    path = resolve_model("smollm2-135m")
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) > 1e8
    assert (__import__("pathlib").Path(path) / "model.safetensors").exists()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"  # the real pretrained weights, not noise


def test_pickle_only_checkpoints_are_refused(tmp_path):
    model = load_model("tiny")
    model.save_pretrained(tmp_path, safe_serialization=False) if _can_save_bin() else None
    if not (tmp_path / "pytorch_model.bin").exists():
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
        model.config.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink(missing_ok=True)
    with pytest.raises(RwftError, match="safetensors"):
        load_model(str(tmp_path))


def _can_save_bin() -> bool:
    import inspect

    from transformers import PreTrainedModel

    return "safe_serialization" in inspect.signature(PreTrainedModel.save_pretrained).parameters
