"""Logged conversations into one memory-mapped Arrow file, streamed and checked, cached on disk.

``read_dataset`` streams JSONL / Parquet / a ``save_to_disk`` directory record by record through
``parse_conversation`` (errors keep the ``file:line: field '...'`` form) into one Arrow file under
``$RWFT_CACHE/data``, written under a temporary name and renamed on success. Key: absolute path, size,
mtime_ns, agent role, require_reward and the format version. A hit is memory-mapped (well under a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rwft.data.conversation import Conversation
from rwft.data.io import iter_conversations
from rwft.errors import RwftError

READ_VERSION = "r2"  # r2: error spans checked
WRITE_ROWS = 8192  # conversations per Arrow record batch while reading


def data_cache_dir() -> Path:
    """``$RWFT_CACHE/data`` (default ``~/.cache/rwft/data``)."""
    from rwft.presets import cache_dir

    return cache_dir() / "data"


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("context_id", pa.string()),
        ("reward", pa.float64()),
        ("messages", pa.large_string()),  # JSON: the checked messages
        ("tools", pa.string()),  # JSON or null
        ("metadata", pa.string()),  # JSON
        ("turn_rewards", pa.list_(pa.float64())),  # Conversation.turn_rewards: one per agent turn
        ("turn_mask", pa.list_(pa.float64())),  # 0 for an agent message with weight 0, else 1
        ("has_turn_rewards", pa.bool_()),  # some message carries its own reward
    ])


def _source_stamp(path: Path) -> list:
    if path.is_dir():
        return sorted(
            [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in path.rglob("*") if f.is_file()
        )
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _row(conv: Conversation, agent_role: str) -> tuple:
    turns = conv.agent_turns(agent_role)
    tools = getattr(conv, "tools", None)
    return (
        conv.id,
        conv.context_id,
        conv.reward,
        json.dumps(conv.messages, ensure_ascii=False),
        None if tools is None else json.dumps(tools, ensure_ascii=False),
        json.dumps(conv.metadata, ensure_ascii=False),
        conv.turn_rewards(agent_role),
        [0.0 if conv.messages[i].get("weight", 1) == 0 else 1.0 for i in turns],
        any("reward" in m for m in conv.messages),
    )


def _write_arrow(path: Path, convs: Iterable[Conversation], agent_role: str) -> int:
    import pyarrow as pa

    schema = _schema()
    n = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        buf: list[tuple] = []

        def flush() -> None:
            cols = list(zip(*buf, strict=True))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)], schema=schema))
            buf.clear()

        for conv in convs:
            buf.append(_row(conv, agent_role))
            n += 1
            if len(buf) >= WRITE_ROWS:
                flush()
        if buf:
            flush()
    return n


def _atomic_file(target: Path, write) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``target`` and rename it into place on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_dataset(path: str | Path, agent_role: str = "assistant", require_reward: bool = True):
    """The checked conversations of a JSONL / Parquet file or a datasets directory as a memory-mapped
    ``datasets.Dataset`` (columns id, context_id, reward, messages, tools, metadata as JSON strings, plus
    turn_rewards, turn_mask and has_turn_rewards). Streams; cached; RwftError (``file:line: field ...``)
    at the first bad record, leaving no cache file."""
    import datasets
    from datasets.table import MemoryMappedTable

    p = Path(path).resolve()
    if not p.exists():
        raise RwftError(f"{path}: no such file or directory")
    key = digest(READ_VERSION, str(p), _source_stamp(p), agent_role, require_reward)
    target = data_cache_dir() / f"conversations-{key}.arrow"
    if not target.exists():
        count = []

        def write(tmp: Path) -> None:
            count.append(_write_arrow(tmp, iter_conversations(path, agent_role, require_reward), agent_role))

        _atomic_file(target, write)
    return datasets.Dataset(MemoryMappedTable.from_file(str(target)), fingerprint=key)
