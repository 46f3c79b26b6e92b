"""From logged conversations to an Arrow-backed training dataset, without holding conversations in memory.

Three stages, each cached on disk under ``$RWFT_CACHE/data`` (default ``~/.cache/rwft/data``):

1. ``read_dataset`` (``data.arrow``): the logs, streamed and checked, into one memory-mapped Arrow file.
2. ``encode_dataset``: a batched, multi-process ``datasets.map`` that tokenizes every conversation with
   the chat template; its output (``input_ids``, ``turn_index``, ...) does not depend on the objective.
   Key: the data key, a hash of the tokenizer (vocab, merges, chat template, special tokens), max_length,
   agent role, the encoder's source and the tokenizers / transformers versions. Written into a temporary
   directory and renamed, so a killed or concurrent run never reuses half a cache.
3. ``column_turn_weights`` (``data.weighting``): the objective's weight of each agent turn, by its registry
   entry's weight function over the ``reward``, ``context_id``, ``turn_rewards`` and ``turn_mask`` columns,
   then scaled by the length normalization (``normalize_lengths``, from the encoder's ``turn_tokens``);
   not cached.

``prepare_training_data`` chains them; ``WeightedCollator`` (``rwft.train.collate``) turns
``turn_weights[turn_index]`` into per-token weights at batch time, so weights cannot be attached to the
wrong sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rwft.data.arrow import data_cache_dir, digest, read_dataset
from rwft.data.conversation import SEVERITIES, Conversation
from rwft.data.io import iter_conversations
from rwft.data.weighting import (
    column_turn_weights,
    list_column,
    normalize_lengths,
    resolve_normalization,
    turn_weights,
    weighted_objective,
)
from rwft.errors import RwftError
from rwft.presets import build_atomically, quiet_hf

ENCODE_VERSION = "e2"  # e2: token_penalty and error_spans
SMALL_DATA = 2000  # below this many conversations, tokenize in this process

__all__ = [
    "EncodeStats", "build_sequences", "column_turn_weights", "data_cache_dir", "encode_dataset",
    "iter_conversations", "prepare_training_data", "read_dataset", "tokenizer_fingerprint", "turn_weights",
]


# ----------------------------------------------------------------------------------------------- encoding


def _encoder_source_hash() -> str:
    from rwft.data import chat_template as T
    from rwft.data import encode as E

    return hashlib.sha256(Path(E.__file__).read_bytes() + Path(T.__file__).read_bytes()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what tokenization depends on: vocab and merges (the fast tokenizer's JSON), the chat
    template, the special tokens and the class; not dill's hash of the object (slow and unstable)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _encode_batch(batch: dict[str, list], tokenizer, max_length: int, agent_role: str) -> dict[str, list]:
    from rwft.data import encode as E

    conversations = [json.loads(m) for m in batch["messages"]]
    tools = [json.loads(t) if t is not None else None for t in batch["tools"]]
    encoded = E.encode_batch(tokenizer, conversations, max_length, agent_role, tools)  # one tokenizer call
    out: dict[str, list] = {k: [] for k in
                            ("input_ids", "turn_index", "token_penalty", "length", "agent_tokens", "turn_tokens",
                             "truncated", "too_long", "error_spans")}
    for messages, enc in zip(conversations, encoded, strict=True):
        n_turns = sum(1 for m in messages if m["role"] == agent_role)
        if enc is None:
            ids, ti, pen, truncated, too_long = [], [], [], False, True
            turn_tokens = [0] * n_turns
        else:
            ids, ti, pen = enc.input_ids, enc.turn_index, enc.token_penalty
            truncated, too_long = bool(enc.truncated), False
            turn_tokens = [ti.count(k) for k in range(n_turns)]
        severities = [s["severity"] for m in messages if m["role"] == agent_role for s in m.get("spans") or ()]
        out["input_ids"].append(ids)
        out["turn_index"].append(ti)
        out["token_penalty"].append(pen)
        out["error_spans"].append([severities.count(s) for s in SEVERITIES])
        out["length"].append(len(ids))
        out["agent_tokens"].append(sum(turn_tokens))
        out["turn_tokens"].append(turn_tokens)
        out["truncated"].append(truncated)
        out["too_long"].append(too_long)
    return out


def _encoded_features():
    import datasets

    return datasets.Features({
        "input_ids": datasets.List(datasets.Value("int32")),
        "turn_index": datasets.List(datasets.Value("int32")),
        "token_penalty": datasets.List(datasets.Value("float32")),
        "length": datasets.Value("int32"),
        "agent_tokens": datasets.Value("int32"),
        "turn_tokens": datasets.List(datasets.Value("int32")),
        "truncated": datasets.Value("bool"),
        "too_long": datasets.Value("bool"),
        "error_spans": datasets.List(datasets.Value("int32")),
    })


def _load_encoded(directory: Path, fingerprint: str):
    import datasets

    files = sorted(directory.glob("encoded*.arrow"))  # the map's shards only, not a later cache-*.arrow
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    ds._fingerprint = fingerprint
    return ds


def default_num_proc(rows: int) -> int:
    """min(cores, 4) for large data, 1 below ``SMALL_DATA`` rows (starting workers costs seconds)."""
    if rows < SMALL_DATA:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def encode_dataset(ds, tokenizer, max_length: int, agent_role: str = "assistant", num_proc: int | None = None):
    """Tokenize every row of a ``read_dataset`` dataset with the chat template, in ``num_proc`` processes.

    Returns a dataset aligned row for row with ``ds``: ``input_ids``, ``turn_index`` (per token: the agent
    turn, counted over the original conversation's agent messages, or -1), ``token_penalty`` (per token: the
    ``data.encode.SEVERITY_PENALTY`` of the error spans it is in, 0 outside them; empty for a conversation
    without spans), ``length``, ``agent_tokens``, ``turn_tokens`` (tokens of each agent turn; 0 for a turn
    truncation dropped), ``truncated``, ``too_long`` (empty ``input_ids``; the caller drops these rows after
    counting them) and ``error_spans`` (the record's spans of each severity, ``SEVERITIES``' order). Independent of the
    objective; cached under ``$RWFT_CACHE/data/encoded-<key>/`` (see the module docstring), written into a
    temporary directory renamed on success, so concurrent or killed runs never see half of it.
    """
    key = digest(ENCODE_VERSION, ds._fingerprint, tokenizer_fingerprint(tokenizer), max_length, agent_role,
                  _encoder_source_hash(), _versions())
    target = data_cache_dir() / f"encoded-{key}"
    if (target / "done.json").exists():
        return _load_encoded(target, key)
    nproc = max(1, min(num_proc or default_num_proc(len(ds)), len(ds)))

    def build(tmp: Path) -> None:
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        ds.select_columns(["messages", "tools"]).map(
            _encode_batch,
            batched=True,
            batch_size=256,
            writer_batch_size=1000,
            num_proc=nproc if nproc > 1 else None,
            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "agent_role": agent_role},
            remove_columns=["messages", "tools"],
            features=_encoded_features(),
            cache_file_name=str(tmp / "encoded.arrow"),
            new_fingerprint=key,
            load_from_cache_file=False,
            desc="rwft: tokenizing",
        )
        (tmp / "done.json").write_text(json.dumps(  # what it took: ``bench/data_scale.py`` reads it
            {"rows": len(ds), "max_length": max_length, "num_proc": nproc, "seconds": time.perf_counter() - t0,
             "cpu_seconds": _cpu_seconds() - cpu0}))

    with quiet_hf() if len(ds) < SMALL_DATA else nullcontext():  # a bar only where tokenizing takes a while
        build_atomically(target, build)
    return _load_encoded(target, key)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the map's workers, once it returns)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _versions() -> list[str]:
    import tokenizers
    import transformers

    return [tokenizers.__version__, transformers.__version__]


# ------------------------------------------------------------------------------------------ training data


@dataclass
class EncodeStats:
    """What happened to the conversations on their way to training sequences."""

    conversations: int = 0
    kept: int = 0
    zero_weight: int = 0  # every agent token weighs 0 (filtered out, or no contrast for swift)
    truncated: int = 0  # oldest exchanges dropped to fit max_length (among the kept)
    too_long: int = 0  # the task plus the last agent turn alone exceed max_length
    agent_tokens: int = 0  # tokens that carry a non-zero weight (the ones with labels)
    tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)  # the too-long ones
    length_normalization: str = "sum"  # the one applied to the turn weights (``auto`` resolved)


def prepare_training_data(
    path: str | Path,
    tokenizer,
    *,
    objective: str,
    agent_role: str = "assistant",
    max_length: int = 1024,
    top_k: int = 1,
    threshold: float | None = None,
    gamma: float = 1.0,
    length_normalization: str = "sum",
    num_proc: int | None = None,
    with_row: bool = False,
):
    """Read (cached), tokenize (cached, objective-independent) and weight a data file for training.
    ``length_normalization``: sum, trajectory, turn or auto, applied to the turn weights by
    ``data.weighting.normalize_lengths`` from each turn's token count after truncation (``stats`` names the one
    applied). ``with_row``: add a ``row`` column, each kept row's index in ``read_dataset(path)`` (for other
    per-row data).

    Returns ``(dataset, stats)``: the dataset holds the kept rows only, with ``input_ids``, ``turn_index``,
    ``token_penalty`` (see ``encode_dataset``), ``turn_weights`` (one per agent turn of the original
    conversation) and ``length``, formatted as numpy;
    ``stats`` counts conversations, kept, zero_weight, truncated, too_long, agent_tokens and tokens.
    Raises RwftError before anything is written to the user's output when a record is bad or nothing is left.
    """
    import pyarrow as pa

    weighted_objective(objective)
    raw = read_dataset(path, agent_role, require_reward=True)
    offsets, values = column_turn_weights(raw, objective, top_k, threshold, gamma, source=str(path))
    enc = encode_dataset(raw, tokenizer, max_length, agent_role, num_proc)
    cols = enc.with_format("arrow").select_columns(["length", "truncated", "too_long", "turn_tokens"])[:]
    length = cols.column("length").to_numpy().astype(np.int64)
    truncated = cols.column("truncated").to_numpy(zero_copy_only=False)
    too_long = cols.column("too_long").to_numpy(zero_copy_only=False)
    tt_offsets, turn_tokens = list_column(cols.column("turn_tokens"))
    if not np.array_equal(tt_offsets, offsets):
        raise RwftError("internal: the encoder's agent turns disagree with the conversation's")
    mode = resolve_normalization(length_normalization, values, turn_tokens)
    rows = np.repeat(np.arange(len(raw)), np.diff(offsets))
    weighted = np.bincount(rows, weights=turn_tokens * (values != 0), minlength=len(raw)).astype(np.int64)
    any_weight = np.bincount(rows, weights=(values != 0), minlength=len(raw)) > 0
    zero = ~any_weight | (~too_long & (weighted == 0))  # no weight, or truncation removed every weighted token
    long_ = too_long & ~zero
    kept = ~zero & ~too_long
    stats = EncodeStats(
        conversations=len(raw), kept=int(kept.sum()), zero_weight=int(zero.sum()), too_long=int(long_.sum()),
        truncated=int((truncated & kept).sum()), agent_tokens=int(weighted[kept].sum()),
        tokens=int(length[kept].sum()), length_normalization=mode,
    )
    if long_.any():
        stats.dropped_ids = raw.select(np.nonzero(long_)[0])["id"][:]
    if not stats.kept:
        raise RwftError(
            f"{path}: no conversation carries a non-zero weight under --objective {objective} "
            f"({stats.zero_weight} of {stats.conversations} weigh 0, {stats.too_long} too long); "
            "for swift, contexts need two or more samples with different rewards"
        )
    values = normalize_lengths(values, offsets, turn_tokens, mode)
    weights = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.float32()))
    out = enc.select_columns(["input_ids", "turn_index", "token_penalty", "length"]).add_column(
        "turn_weights", weights, new_fingerprint=digest(enc._fingerprint, objective, top_k, threshold, gamma, mode))
    if with_row:
        out = out.add_column("row", pa.array(np.arange(len(raw), dtype=np.int64)),
                             new_fingerprint=digest(out._fingerprint, "row"))
    if not kept.all():
        out = out.select(np.nonzero(kept)[0])
    return out.with_format("numpy"), stats


def build_sequences(
    tokenizer, convs: list[Conversation], weights: list[list[float]], max_length: int, agent_role: str
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """In-memory variant for small lists of conversations: rows with ``input_ids``, ``turn_index``,
    ``token_penalty``, ``turn_weights`` and ``length``; those with no weight or that cannot fit are dropped
    (counted)."""
    from rwft.data.encode import encode_conversation as encode

    stats = EncodeStats(conversations=len(convs))
    rows = []
    for conv, w in zip(convs, weights, strict=True):
        if all(x == 0 for x in w):
            stats.zero_weight += 1
            continue
        enc = encode(tokenizer, conv.messages, max_length, agent_role, getattr(conv, "tools", None))
        if enc is None:
            stats.too_long += 1
            stats.dropped_ids.append(conv.id)
            continue
        ti = np.asarray(enc.turn_index, dtype=np.int64)
        weighted = int(sum(1 for t in ti if t >= 0 and w[t] != 0))
        if not weighted:
            stats.zero_weight += 1
            continue
        stats.truncated += enc.truncated
        stats.kept += 1
        stats.agent_tokens += weighted
        stats.tokens += len(enc.input_ids)
        rows.append({"input_ids": list(enc.input_ids), "turn_index": ti.tolist(),
                     "token_penalty": list(enc.token_penalty), "turn_weights": list(w),
                     "length": len(enc.input_ids)})
    return rows, stats
