"""rwft: offline RL for LLM conversation policies by reward-weighted fine-tuning.

The Python API mirrors the CLI, one config dataclass and one function per stage::

    from rwft import TrainConfig, train, load_conversations
    convs = load_conversations("logs.jsonl")            # checked, with file:line errors
    run_dir = train(TrainConfig(data="logs.jsonl", output="runs/swift", objective="swift"))

Names are imported lazily, so ``import rwft`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Conversation": "rwft.data.conversation",
    "load_conversations": "rwft.data.io",
    "TrainConfig": "rwft.train.trainers",
    "train": "rwft.train.trainers",
    "ValidateConfig": "rwft.data.validate",
    "run_validate": "rwft.data.validate",
    "ExportConfig": "rwft.data.export",
    "run_export": "rwft.data.export",
    "RwftError": "rwft.errors",
    "load_model": "rwft.presets",
    "load_tokenizer": "rwft.presets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rwft' has no attribute {name!r}")
