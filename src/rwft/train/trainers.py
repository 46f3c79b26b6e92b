"""``rwft train``: the objective's registry entry names its trainer, and ``TRAINERS`` gives that trainer's recipe
(data preparation and the Trainer) for the skeleton to run."""

from __future__ import annotations

from pathlib import Path

from rwft.objectives.registry import OBJECTIVES
from rwft.train import distill, qsft, skeleton, weighted
from rwft.train.weighted import TrainConfig

TRAINERS: dict[str, skeleton.Recipe] = {"weighted": weighted.RECIPE, "distill": distill.RECIPE, "qsft": qsft.RECIPE}

__all__ = ["TRAINERS", "TrainConfig", "train"]


def train(config: TrainConfig, callbacks: list | None = None) -> Path:
    """Train as configured and return the run directory. Resumes when the directory holds a checkpoint."""
    return skeleton.run(config, TRAINERS[OBJECTIVES[config.objective].trainer], "train", callbacks)
