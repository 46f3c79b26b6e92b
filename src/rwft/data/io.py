"""Read logged conversations from JSONL, Parquet or a ``datasets`` directory; write JSONL safely.

Errors name the file and line (or row) and what was expected. Writers append whole lines only and
fsync them, so a killed job leaves no torn line and a rerun can resume after the last full record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rwft.data.conversation import Conversation, parse_conversation
from rwft.errors import RwftError


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` for each record: ``file:line`` for JSONL, ``file:row`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise RwftError(f"{p}: no such file or directory")
    if p.is_dir():
        yield from _read_dataset_dir(p)
    elif p.suffix == ".parquet":
        yield from _read_parquet(p)
    else:
        yield from _read_jsonl(p)


def _read_jsonl(p: Path) -> Iterator[tuple[str, Any]]:
    with p.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{p}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RwftError(f"{where}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RwftError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if isinstance(obj, list):
                raise RwftError(
                    f"{where}: found a JSON array; a .jsonl file holds one JSON object (conversation) per line"
                )
            yield where, obj


BATCH_ROWS = 4096  # rows per Arrow batch read from Parquet / datasets directories: memory stays flat


def _read_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise RwftError(f"{p}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{p}:row {n}", row
            n += 1


def _read_dataset_dir(p: Path) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise RwftError(f"{p}: not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise RwftError(f"{p}: a DatasetDict without a 'train' split (has {list(ds)})")
        ds = ds["train"]
    n = 0
    for batch in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"{p}:row {n}", row
            n += 1


def iter_conversations(
    path: str | Path, agent_role: str = "assistant", require_reward: bool = True
) -> Iterator[Conversation]:
    """Stream the checked conversations of a file, one at a time (RwftError at the first bad record)."""
    empty = True
    for i, (where, obj) in enumerate(read_records(path)):
        empty = False
        yield parse_conversation(obj, where, i, agent_role, require_reward)
    if empty:
        raise RwftError(f"{path}: no conversations (the file is empty)")


def load_conversations(
    path: str | Path, agent_role: str = "assistant", require_reward: bool = True
) -> list[Conversation]:
    """Read and check every conversation of a file into a list (small files; large ones: ``iter_conversations``
    or ``rwft.data.dataset.read_dataset``); raise RwftError at the first bad record."""
    return list(iter_conversations(path, agent_role, require_reward))


def count_complete_lines(path: str | Path) -> int:
    """Number of whole (newline-terminated) lines; a torn last line from a killed writer is cut off."""
    p = Path(path)
    if not p.exists():
        return 0
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with p.open("r+b") as f:
            f.truncate(end)
    return data[:end].count(b"\n")


class JsonlAppender:
    """Append records as whole lines, flushed and fsynced, so a kill never leaves a torn line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        count_complete_lines(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole file through a temporary name, so readers never see half of it."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def cut_jsonl(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep only the records of a JSONL file for which ``keep`` is true (a torn last line is dropped): how a
    resumed run cuts its logs back to its checkpoint."""
    p = Path(path)
    if not p.exists():
        return
    kept = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            if line.strip() and keep(json.loads(line)):
                kept.append(line + "\n")
        except json.JSONDecodeError:
            continue
    write_text_atomic(p, "".join(kept))


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary name (unique to this process) and rename it into place, so readers,
    and a rerun after a kill, never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
