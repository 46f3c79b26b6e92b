"""The run directory of a training verb (``rwft train``, ``rwft dpo``): config guard, resume, step log.

A run directory holds ``rwft_config.yaml``, ``train_log.jsonl`` (one JSON object per logged step),
``checkpoints/checkpoint-N`` and, at the end, the model. Rerunning the same command resumes from the
newest complete checkpoint and drops log lines past it, so each step is logged once; a different
config in the same directory is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from rwft.errors import RwftError


def check_config(out: Path, resolved: dict[str, Any]) -> None:
    """Refuse a directory that holds a run with another config."""
    path = out / "rwft_config.yaml"
    if path.exists() and yaml.safe_load(path.read_text()) != resolved:
        raise RwftError(f"{out}: holds a run with a different config ({path}); choose another --output")


def write_config(out: Path, resolved: dict[str, Any]) -> None:
    """Create the directory and write the config atomically (other processes of a launch may read it)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".rwft_config.{os.getpid()}.yaml"
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    os.replace(tmp, out / "rwft_config.yaml")


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint directory (one with trainer_state.json), if any."""
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def resume_point(out: Path, is_main: bool) -> Path | None:
    """The checkpoint to resume from; the step log is cut back to it (or cleared for a fresh start)."""
    log = out / "train_log.jsonl"
    resume = last_checkpoint(out / "checkpoints")
    if not is_main:
        return resume
    if resume is None:
        log.unlink(missing_ok=True)
    elif log.exists():
        step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
        keep = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        log.write_text("".join(line + "\n" for line in keep))
    return resume


def step_log_callback(path: Path):
    """A TrainerCallback that appends every log line to ``path`` (main process only)."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlLog()


def has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
