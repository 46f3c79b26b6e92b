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


# --- missing / unreadable models: one-line errors, no traceback, no output, no network ----------------------


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No probe of the hub and no download: as if offline (the tests never touch the network)."""
    import rwft.presets

    monkeypatch.setattr(rwft.presets, "_HUB_REACHABLE", False, raising=False)


def _bad_paths(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    afile = tmp_path / "weights.bin"
    afile.write_text("x")
    return {"absent": str(tmp_path / "no" / "such"), "relative": "./no/such/model-dir", "home": "~/no-such-rwft-dir",
            "empty": str(empty), "file": str(afile)}


@pytest.mark.parametrize("kind", ["absent", "relative", "home", "empty", "file"])
@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_missing_or_empty_model_directory_is_a_one_line_error(tmp_path, hub_unreachable, kind, loader):
    path = _bad_paths(tmp_path)[kind]
    with pytest.raises(RwftError) as info:
        loader(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: no such model directory") and "\n" not in msg


@pytest.mark.parametrize("name", ["nobody-rwft/no-such-model", "tinyy"])
@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_uncached_hub_id_offline_is_a_one_line_error(tmp_path, monkeypatch, hub_unreachable, name, loader):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RwftError) as info:
        loader(name)
    msg = str(info.value)
    assert msg.startswith(f"{name}: neither a preset (tiny, smollm2-135m), a local directory nor a cached hub model")
    assert "\n" not in msg


def test_cached_hub_id_loads_offline(tmp_path, monkeypatch, hub_unreachable):
    import shutil

    import huggingface_hub.constants

    sha = "0" * 40
    repo = tmp_path / "hub" / "models--rwft-test--tiny"
    shutil.copytree(resolve_model("tiny"), repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_tokenizer("rwft-test/tiny").eos_token == "<|im_end|>"
    assert 1e6 < sum(p.numel() for p in load_model("rwft-test/tiny").parameters()) < 1e7


@pytest.mark.parametrize("verb", ["eval", "collect"])
@pytest.mark.parametrize("kind", ["absent", "empty", "hub"])
def test_cli_bad_policy_is_one_line_and_leaves_no_output(tmp_path, capsys, hub_unreachable, verb, kind):
    from rwft.cli import main

    policy = "nobody-rwft/no-such-model" if kind == "hub" else _bad_paths(tmp_path)[kind]
    out = tmp_path / "out"
    target = ["--output", str(out)] if verb == "eval" else ["--out", str(out / "logs.jsonl")]
    assert main([verb, "--policy", policy, "--env", "mcqa", *target]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"rwft {verb}: error: {policy}: ")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["absent", "hub"])
def test_cli_train_bad_model_is_one_line_and_leaves_no_output(tmp_path, capsys, hub_unreachable, sample_path, kind):
    from rwft.cli import main

    model = "nobody-rwft/no-such-model" if kind == "hub" else _bad_paths(tmp_path)[kind]
    out = tmp_path / "run"
    assert main(["train", "--data", str(sample_path), "--model", model, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"rwft train: error: {model}: ")
    assert not out.exists()


# --- quiet loading ----------------------------------------------------------------------------------------------


def test_load_model_shows_no_progress_bar_and_restores_the_setting(capfd):
    from transformers.utils import logging as hf_logging

    resolve_model("tiny")
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    load_model("tiny")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # scoped: the global setting is back
    from rwft.presets import quiet_hf

    with pytest.raises(RuntimeError), quiet_hf():
        assert not hf_logging.is_progress_bar_enabled()
        raise RuntimeError
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with quiet_hf():
            pass
        assert not hf_logging.is_progress_bar_enabled()  # off before, off after
    finally:
        hf_logging.enable_progress_bar()
