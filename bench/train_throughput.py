"""Time per optimizer step of rwft Refit, rwft SFT and TRL's SFTTrainer, same model, data and batch shape.

    python bench/train_throughput.py [--model tiny|smollm2-135m] [--steps 30] [--batch-size 8]

All three train on the packaged sample conversations, every reward floored at 0.05 so that Refit keeps
every conversation and sees the same batches as SFT (the same token sequences and agent masks; TRL
receives them pre-tokenized with a ``completion_mask`` on the agent tokens), for the same number of
steps, in one process.
TRL runs in fp32 without gradient checkpointing like rwft (its SFTConfig defaults to bf16 and
checkpointing, which would measure those, not the trainer). The first 5 steps are warm-up and are not
timed; the figure is the median seconds per step. Also
reported: the share of padding in rwft's batches (length grouping) and in TRL's (its default order).
Targets (issue 2): Refit / SFT <= 1.02, Refit / TRL <= 1.0, rwft padding < 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

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
    trainers = []

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            trainers.append(kwargs)

    cfg = training.TrainConfig(data=str(DATA), output_dir=str(out / objective), model=model,
                               objective=objective, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-5, report_to="none",
                               save_steps=10_000)
    training.train(cfg, callbacks=[timer])
    return statistics.median(timer.times[WARMUP:]), rwft_padding(model, batch)


def rwft_padding(model: str, batch: int) -> float:
    from rwft.data.dataset import build_sequences, turn_weights
    from rwft.data.io import load_conversations
    from rwft.presets import load_tokenizer
    from rwft.train.collate import LengthGroupedSampler, WeightedCollator

    tok = load_tokenizer(model)
    convs = load_conversations(DATA)
    rows, _ = build_sequences(tok, convs, turn_weights(convs, "refit"), 1024, "assistant")
    order = list(LengthGroupedSampler([len(r["input_ids"]) for r in rows], batch, seed=0))
    collate = WeightedCollator(tok.pad_token_id)
    pad = slots = 0
    for i in range(0, len(order), batch):
        am = collate([rows[j] for j in order[i:i + batch]])["attention_mask"]
        pad, slots = pad + int((am == 0).sum()), slots + am.numel()
    return pad / slots


def run_trl(model_name: str, steps: int, batch: int, out: Path) -> tuple[float, float]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from rwft.data.dataset import build_sequences, turn_weights
    from rwft.data.io import load_conversations
    from rwft.presets import load_model, load_tokenizer

    tok = load_tokenizer(model_name)
    convs = load_conversations(DATA)
    rows, _ = build_sequences(tok, convs, turn_weights(convs, "refit"), 1024, "assistant")
    ds = datasets.Dataset.from_list(
        [{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]} for r in rows]
    )
    timer = StepTimer()
    args = SFTConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=batch,
                     learning_rate=1e-5, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                     completion_only_loss=True, max_length=1024, seed=0, bf16=False,
                     gradient_checkpointing=False)
    trainer = SFTTrainer(model=load_model(model_name), args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[WARMUP:]), padding_share(trainer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    torch.manual_seed(0)
    records = [json.loads(line) for line in SAMPLE.open()]
    DATA.write_text("".join(json.dumps({**r, "reward": max(r["reward"], 0.05)}) + "\n" for r in records))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        refit, pad = run_rwft("refit", a.model, a.steps, a.batch_size, out)
        sft, _ = run_rwft("sft", a.model, a.steps, a.batch_size, out)
        trl, trl_pad = run_trl(a.model, a.steps, a.batch_size, out)
    result = {
        "model": a.model, "batch_size": a.batch_size, "steps": a.steps, "threads": torch.get_num_threads(),
        "s_per_step": {"rwft_refit": refit, "rwft_sft": sft, "trl_sft": trl},
        "refit_over_sft": refit / sft, "refit_over_trl": refit / trl,
        "padding_share": {"rwft": pad, "trl": trl_pad},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
