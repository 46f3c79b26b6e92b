"""Time per optimizer step of rwft Refit, rwft SFT, rwft Q-SFT and TRL's SFTTrainer, same model, data and batch shape.

    python bench/train_throughput.py [--model tiny|smollm2-135m] [--steps 30] [--batch-size 8] [--only sft qsft]

All three train on the packaged sample conversations, every reward floored at 0.05 so that Refit keeps
every conversation and sees the same batches as SFT (the same token sequences and agent masks; TRL
receives them pre-tokenized with a ``completion_mask`` on the agent tokens), for the same number of
steps, in one process.
TRL runs in fp32 without gradient checkpointing like rwft (its SFTConfig defaults to bf16 and
checkpointing, which would measure those, not the trainer), in three settings: its default order, with
transformers' length grouping (``train_sampling_strategy="group_by_length"``) and padding-free
(``padding_free=True``: a batch is one flat sequence, separated by position ids). The first 5 steps are
warm-up and are not timed; the figure is the median seconds per step. Also reported: the share of
padding in each trainer's batches.
Targets (issue 2): Refit / SFT <= 1.02, Refit / TRL <= 1.0, rwft padding < 10%.

Q-SFT (issue 9) trains on the same batches as SFT (every conversation, the same sampler), with the
pretrained model itself as its behaviour policy (``--behaviour-model``), so the figure is the step alone:
the Q model's forward and backward, one no-grad target forward, the Bellman targets from the cached
behaviour figures and the Polyak update. The one-off cost of those figures (pi_phi's forward over the data,
cached with it) is timed apart as ``qsft_behaviour_cache_s``. Target: Q-SFT / SFT <= 2.0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback, TrainerCallback

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rwft" / "assets" / "sample_conversations.jsonl"
DATA = Path(tempfile.gettempdir()) / "rwft-bench-train.jsonl"
WARMUP = 5


class StepTimer(TrainerCallback):
    """Seconds per optimizer step and padding share of each batch."""

    def __init__(self):
        self.times: list[float] = []
        self.t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.t)


def padding_share(trainer) -> float:
    pad = slots = 0
    for batch in trainer.get_train_dataloader():
        am = batch["attention_mask"] if "attention_mask" in batch else None
        if am is None:  # padding-free collators: no padding at all
            return 0.0
        pad += int((am == 0).sum())
        slots += am.numel()
    return pad / slots


def run_rwft(objective: str, model: str, steps: int, batch: int, out: Path) -> tuple[float, float]:
    from rwft.train import weighted as training

    timer = StepTimer()
    extra = {"behaviour_model": model} if objective == "qsft" else {}
    cfg = training.TrainConfig(data=str(DATA), output_dir=str(out / objective), model=model, objective=objective,
                               max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-5,
                               report_to="none", save_steps=10_000, disable_tqdm=True, **extra)
    training.train(cfg, callbacks=[timer])
    return statistics.median(timer.times[WARMUP:]), rwft_padding(model, batch)


def qsft_cache_seconds(model: str, out: Path, k: int = 16) -> float:
    """Seconds to compute the behaviour figures Q-SFT caches (pi_phi = the model), written to a scratch file."""
    from rwft.data.dataset import prepare_training_data
    from rwft.presets import load_tokenizer, resolve_model
    from rwft.train.qsft_behaviour import _write_cache

    rows, _ = prepare_training_data(str(DATA), load_tokenizer(model), objective="sft", max_length=1024)
    t = time.perf_counter()
    _write_cache(out / "qsft-cache.arrow", rows, Path(resolve_model(model)), k)
    return time.perf_counter() - t


def refit_rows(model: str):
    from rwft.data.dataset import prepare_training_data
    from rwft.presets import load_tokenizer

    tok = load_tokenizer(model)
    rows, _ = prepare_training_data(str(DATA), tok, objective="refit", max_length=1024)
    return tok, rows


def rwft_padding(model: str, batch: int) -> float:
    from rwft.train.collate import LengthGroupedSampler, WeightedCollator

    tok, rows = refit_rows(model)
    order = LengthGroupedSampler(rows["length"], batch, seed=0).order().tolist()
    collate = WeightedCollator(tok.pad_token_id)
    pad = slots = 0
    for i in range(0, len(order), batch):
        am = collate([rows[j] for j in order[i:i + batch]])["attention_mask"]
        pad, slots = pad + int((am == 0).sum()), slots + am.numel()
    return pad / slots


def run_trl(model_name: str, steps: int, batch: int, out: Path, **settings) -> tuple[float, float]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from rwft.presets import load_model

    tok, rows = refit_rows(model_name)
    trained = [np.asarray(t) >= 0 for t in rows["turn_index"]]
    ds = datasets.Dataset.from_dict({"input_ids": [list(map(int, r)) for r in rows["input_ids"]],
                                     "completion_mask": [m.astype(int).tolist() for m in trained]})
    timer = StepTimer()
    args = SFTConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=batch,
                     learning_rate=1e-5, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                     completion_only_loss=True, seed=0, bf16=False, activation_checkpointing=False,
                     disable_tqdm=True, **{"max_length": 1024, **settings})
    trainer = SFTTrainer(model=load_model(model_name), args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return statistics.median(timer.times[WARMUP:]), padding_share(trainer)


TRL_SETTINGS = {
    "trl_default_order": {},
    "trl_group_by_length": {"train_sampling_strategy": "group_by_length"},
    "trl_padding_free": {"padding_free": True, "max_length": None},  # the rows are already within 1024
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--only", nargs="+", choices=["refit", "sft", "qsft", "trl"],
                   default=["refit", "sft", "qsft", "trl"], help="trainers to time (default: all)")
    a = p.parse_args()
    torch.manual_seed(0)
    records = [json.loads(line) for line in SAMPLE.open()]
    DATA.write_text("".join(json.dumps({**r, "reward": max(r["reward"], 0.05)}) + "\n" for r in records))
    times: dict[str, float] = {}
    result: dict = {"model": a.model, "batch_size": a.batch_size, "steps": a.steps, "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "s_per_step": times}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "refit" in a.only:
            times["rwft_refit"], pad = run_rwft("refit", a.model, a.steps, a.batch_size, out)
            result["padding_share"] = {"rwft": pad}
        for objective in ("sft", "qsft"):
            if objective in a.only:
                times[f"rwft_{objective}"], _ = run_rwft(objective, a.model, a.steps, a.batch_size, out)
        if "qsft" in a.only:
            result["qsft_behaviour_cache_s"] = qsft_cache_seconds(a.model, out)
        trl = {name: run_trl(a.model, a.steps, a.batch_size, out, **s) for name, s in TRL_SETTINGS.items()} \
            if "trl" in a.only else {}
    times.update({k: s for k, (s, _) in trl.items()})
    if "rwft_refit" in times and "rwft_sft" in times:
        result["refit_over_sft"] = times["rwft_refit"] / times["rwft_sft"]
    if "rwft_qsft" in times and "rwft_sft" in times:
        result["qsft_over_sft"] = times["rwft_qsft"] / times["rwft_sft"]
    if trl and "rwft_refit" in times:
        result["refit_over_trl_default"] = times["rwft_refit"] / trl["trl_default_order"][0]
        result["refit_over_trl_best"] = times["rwft_refit"] / min(s for s, _ in trl.values())
        result["padding_share"].update({k: p for k, (_, p) in trl.items()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
