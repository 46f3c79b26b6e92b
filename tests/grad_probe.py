"""Run one optimizer step of rwft train and save the gradients (rank 0); used by test_training.

Run as a script (also under torchrun): python grad_probe.py DATA OUT_DIR BATCH ACCUM OBJECTIVE [NORMALIZATION]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from rwft.train.trainers import TrainConfig, train


class SaveGrads(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


def main(data: str, out: str, batch: int, accum: int, objective: str = "swift", normalization: str = "auto") -> None:
    config = TrainConfig(
        data=data, output_dir=out, objective=objective, length_normalization=normalization, gamma=0.5, max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_grad_norm=0.0, learning_rate=1e-3, report_to="none", save_steps=1000, seed=0,
    )
    train(config, callbacks=[SaveGrads(Path(out) / "grads.pt")])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
