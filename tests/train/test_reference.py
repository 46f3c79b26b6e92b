"""pi_0's log-probabilities for the bounded push-down, against a forward pass of the model written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import sample_records, write_jsonl
from rwft.presets import load_model, load_tokenizer
from rwft.train import weighted
from rwft.train.collate import WeightedCollator
from rwft.train.trainers import TrainConfig


@pytest.fixture
def swift_data(tmp_path):
    records = sample_records(24)[::3][:8]
    for i, r in enumerate(records):
        r["context_id"] = f"ctx{i // 2}"
        r["reward"] = 0.1 * (i + 1)
    return write_jsonl(tmp_path / "eight.jsonl", records)


def _prepared(tmp_path, data, objective, **kw):
    config = TrainConfig(data=str(data), output_dir=str(tmp_path / "out"), objective=objective, report_to="none",
                         disable_tqdm=True, **kw)
    tokenizer = load_tokenizer("tiny")
    return config, tokenizer, weighted.prepare(config, tokenizer)


def test_reference_logprobs_are_pi0s_at_each_trained_token(tmp_path, swift_data):
    config, tokenizer, prepared = _prepared(tmp_path, swift_data, "swift")
    model = load_model("tiny")
    collator = WeightedCollator(tokenizer.pad_token_id, config.span_weight)
    data = weighted.with_reference(config, model, prepared.data, collator)
    assert "ref_logprobs" in data.column_names
    negative = 0
    for i in range(len(data)):  # one row at a time, no padding: position t is predicted from t - 1
        row = data[i]
        ids = torch.as_tensor(np.asarray(row["input_ids"]))[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        labels = collator([row])["labels"][0]
        ref = np.asarray(row["ref_logprobs"])
        assert len(ref) == ids.shape[1]
        for t in range(1, ids.shape[1]):
            want = logp[t - 1, ids[0, t]].item() if labels[t] != -100 else 0.0
            assert ref[t] == pytest.approx(want, abs=1e-4), (i, t)
        negative += int((collator([row])["token_weights"][0] < 0).sum())
    assert negative > 0  # swift's weights: some tokens are pushed down, so the figures are used


def test_no_reference_without_negative_weights_or_without_a_limit(tmp_path, swift_data):
    model = load_model("tiny")
    config, tokenizer, prepared = _prepared(tmp_path, swift_data, "refit")
    collator = WeightedCollator(tokenizer.pad_token_id, config.span_weight)
    assert "ref_logprobs" not in weighted.with_reference(config, model, prepared.data, collator).column_names
    config, tokenizer, prepared = _prepared(tmp_path, swift_data, "swift", push_down_limit=float("inf"))
    assert "ref_logprobs" not in weighted.with_reference(config, model, prepared.data, collator).column_names


def test_adding_the_reference_leaves_the_encoding_cache_as_it_was(tmp_path, swift_data):
    """The rows are a selection of the cached encoding; adding a column must not write into its directory (a
    second run would read the extra file as more rows)."""
    records = sample_records(24)[::3][:8]
    for i, r in enumerate(records):  # ctx1's rewards are equal: Swift drops it, the rest is a selection (indices)
        r["context_id"] = f"ctx{i // 2}"
        r["reward"] = 0.5 if i in (2, 3) else 0.1 * (i + 1)
    data = write_jsonl(tmp_path / "dropped.jsonl", records)
    config, tokenizer, prepared = _prepared(tmp_path, data, "swift")
    assert prepared.stats.kept == 6
    collator = WeightedCollator(tokenizer.pad_token_id, config.span_weight)
    weighted.with_reference(config, load_model("tiny"), prepared.data, collator)
    again = weighted.prepare(config, tokenizer)
    assert len(again.data) == len(prepared.data) and again.stats == prepared.stats


def test_the_trainer_trains_on_the_clipped_loss(tmp_path, swift_data):
    """make_trainer's batches carry pi_0's log-probs, and the trainer's loss is the clipped one: with a policy
    already far below pi_0 on the pushed-down tokens (a reference raised by 5 nats), those tokens add nothing."""
    from rwft.objectives.losses import weighted_nll

    config, tokenizer, prepared = _prepared(tmp_path, swift_data, "swift", per_device_train_batch_size=8)
    model = load_model("tiny")
    trainer = weighted.make_trainer(config, model, tokenizer, prepared, [])
    batch = next(iter(trainer.get_train_dataloader()))
    assert "ref_logprobs" in batch
    inputs = {k: v.to(trainer.args.device) for k, v in batch.items()}
    loss, outputs, w = trainer.loss(model, inputs, None)
    torch.testing.assert_close(loss, weighted_nll(outputs.logits, inputs["labels"], w))  # at the start: no clip
    inputs["ref_logprobs"] = inputs["ref_logprobs"] + 5.0
    clipped, outputs, w = trainer.loss(model, inputs, None)
    positive = torch.where(w > 0, w, 0.0)
    negative = torch.where(w < 0, w, 0.0)
    floor = (config.push_down_limit - inputs["ref_logprobs"])[:, 1:]
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    expected = weighted_nll(outputs.logits, inputs["labels"], positive, int(mask.sum())) + \
        (negative[:, 1:] * floor * mask).sum() / mask.sum()
    torch.testing.assert_close(clipped, expected)
