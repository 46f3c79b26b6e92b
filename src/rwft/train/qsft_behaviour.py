"""Q-SFT's behaviour policy pi_phi: given, or trained by plain SFT on the same data, and its figures at every
agent token (log pi_phi of the logged token, its top-k tokens) computed once and cached beside the tokenized
data (``$RWFT_CACHE/data/qsft-behaviour-<key>``, key: the tokenized rows, the behaviour model's files, k)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from rwft.data.arrow import digest
from rwft.objectives.qsft import SUPPORT_MIN_PROB, action_turns
from rwft.train import skeleton, weighted
from rwft.train.weighted import TrainConfig

CACHE_VERSION = "q2"


def resolve_behaviour(name: str) -> str:
    """A given behaviour model: a directory as an absolute path (qsft.json must find it from anywhere)."""
    from rwft.presets import resolve_model

    path = resolve_model(name)
    return str(Path(path).resolve()) if os.path.exists(path) else path


def train_behaviour(config: TrainConfig) -> Path:
    """pi_phi by plain SFT on the same data into OUTPUT/behaviour (same options; LoRA merged so the directory
    is a whole model); skipped when its model is already saved, resumed when it holds a checkpoint."""
    out = Path(config.output_dir).resolve() / "behaviour"
    sft = dataclasses.replace(config, objective="sft", output_dir=str(out), merge_lora=config.lora)
    if (out / "model.safetensors").exists():
        skeleton.check_config(out, sft.resolved())
        return out
    skeleton.run(sft, weighted.RECIPE, "behaviour")
    from transformers import set_seed

    set_seed(config.seed)  # the outer run's random state as if the behaviour had been there (LoRA init)
    return out


def _model_stamp(path: Path) -> list:
    if not path.is_dir():
        return [str(path)]
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in path.iterdir()
                  if f.is_file() and f.suffix in (".safetensors", ".json"))


def behaviour_cache(data, behaviour: Path, k: int):
    """pi_phi's figures for every row of ``data`` (aligned with it), computed once and cached:
    ``phi_logp`` (per agent token: log pi_phi of the logged token), ``phi_ids`` / ``phi_lp`` (per agent
    token, k each, flat: the top-k tokens and their log-probabilities; -inf below ``SUPPORT_MIN_PROB``).
    Agent tokens are those of ``action_turns`` (never position 0)."""
    import datasets
    from datasets.table import MemoryMappedTable

    from rwft.data.arrow import data_cache_dir
    from rwft.presets import build_atomically

    key = digest(CACHE_VERSION, data._fingerprint, str(behaviour), _model_stamp(behaviour), k,
                          SUPPORT_MIN_PROB)
    target = data_cache_dir() / f"qsft-behaviour-{key}"
    if not (target / "cache.arrow").exists():
        build_atomically(target, lambda tmp: _write_cache(tmp / "cache.arrow", data, behaviour, k))
    return datasets.Dataset(MemoryMappedTable.from_file(str(target / "cache.arrow")), fingerprint=key)


@torch.no_grad()
def _write_cache(path: Path, data, behaviour: Path, k: int, batch: int = 16, chunk: int = 1024) -> None:
    """Stream the figures into an Arrow file, in row order; within a chunk the rows go through pi_phi
    sorted by length (little padding)."""
    import pyarrow as pa

    from rwft.presets import load_model

    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    model = load_model(str(behaviour)).to(device).eval()
    plain = data.with_format(None).select_columns(["input_ids", "turn_index"])
    lengths = np.asarray(data.with_format("arrow")["length"].to_numpy(), dtype=np.int64)
    floor = float(np.log(SUPPORT_MIN_PROB))
    schema = pa.schema([("phi_logp", pa.list_(pa.float32())), ("phi_ids", pa.list_(pa.int32())),
                        ("phi_lp", pa.list_(pa.float32()))])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(plain), chunk):
            rows = plain[start:start + chunk]
            lens = lengths[start:start + chunk]
            out: list[tuple] = [()] * len(lens)
            order = np.argsort(lens, kind="stable")
            for b0 in range(0, len(order), batch):
                part = order[b0:b0 + batch]
                x = torch.zeros(len(part), int(lens[part].max()), dtype=torch.long)
                for j, r in enumerate(part):
                    x[j, :lens[r]] = torch.as_tensor(rows["input_ids"][r])
                am = (torch.arange(x.size(1))[None, :] < torch.as_tensor(lens[part])[:, None]).long()
                logits = model(input_ids=x.to(device), attention_mask=am.to(device)).logits
                for j, r in enumerate(part):
                    pos = torch.as_tensor(np.nonzero(action_turns(rows["turn_index"][r]) >= 0)[0])
                    lp = torch.log_softmax(logits[j, pos - 1].float(), dim=-1)
                    logged = lp.gather(-1, x[j, pos].to(device)[:, None]).squeeze(-1)
                    top_lp, top_ids = lp.topk(min(k, lp.size(-1)), dim=-1)
                    top_lp = torch.where(top_lp >= floor, top_lp, torch.full_like(top_lp, -float("inf")))
                    out[r] = (logged.cpu().numpy(), top_ids.int().cpu().numpy().ravel(),
                              top_lp.cpu().numpy().ravel())
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array([o[c] for o in out], type=f.type) for c, f in enumerate(schema)], schema=schema))
