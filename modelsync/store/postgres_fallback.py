"""The local fallback journal of a PostgreSQL state (DESIGN §2b).

When a run can no longer write the database (it is unreachable, or the run lost its lease),
the results that still arrive are not thrown away: each is appended, fsynced, to
``<manifest dir>/.modelsync/<name>.pg-fallback.journal`` (mode 0600), and the run stops.
The next run that opens the state to write folds the file in and removes it; ``plan``
folds it in memory.

JSON lines: a header ``{"modelsync": "pg-fallback", "version": 1, "lineage", "schema",
"name", "endpoint"}``, then ``{"op": "put", "epoch", "model_id", "record"}`` or
``{"op": "del", "epoch", "model_ids"}``. ``epoch`` is the lock epoch of the run that kept
the line: a row written by a later run wins over it. A torn last line (a crash mid-append)
is ignored; anything else that cannot be read makes the state untrusted (exit 4).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsync.errors import StateError
from modelsync.records import ModelRecord
from modelsync.store import trust
from modelsync.store.fileio import NotAFile, read_file

KIND = "pg-fallback"
VERSION = 1
FILE_MODE = 0o600
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class Kept:
    """One line kept: a record put (``record`` set) or model ids dropped."""

    epoch: int
    model_ids: tuple[str, ...]
    record: ModelRecord | None = None


@dataclass(frozen=True)
class Fallback:
    """A fallback journal as read: its header and its lines."""

    path: Path
    lineage: str
    endpoint: str
    lines: tuple[Kept, ...]


def fallback_path(manifest_path: str | Path, schema: str, name: str) -> Path:
    """``<manifest dir>/.modelsync/<name>[.<schema>].pg-fallback.journal``."""
    folder = Path(manifest_path).parent / ".modelsync"
    middle = "" if schema == "modelsync" else f".{schema}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return folder / f"{safe}{middle}.pg-fallback.journal"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FallbackWriter:
    """Appends lines to a fallback journal, each fsynced before :meth:`put` returns."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        self._header = dict(header)
        self._lock = threading.Lock()
        self.kept = 0

    def put(self, epoch: int, model_id: str, record_json: Mapping[str, Any]) -> None:
        """Keep one record."""
        self._append({"op": "put", "epoch": epoch, "model_id": model_id, "record": record_json})

    def drop(self, epoch: int, model_ids: Iterable[str]) -> None:
        """Keep the dropping of records."""
        self._append({"op": "del", "epoch": epoch, "model_ids": list(model_ids)})

    def _append(self, entry: Mapping[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                fd = os.open(self.path, flags, FILE_MODE)
                try:
                    data = line
                    if os.fstat(fd).st_size == 0:
                        header = {"modelsync": KIND, "version": VERSION, **self._header}
                        data = (json.dumps(header, separators=(",", ":")) + "\n").encode() + line
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _fsync_dir(self.path.parent)
            except OSError as exc:
                raise StateError(
                    f"cannot keep a result in the fallback journal {self.path}:"
                    f" {exc.strerror or exc}; that result is lost to the state: the next"
                    " apply retries its model"
                ) from None
            self.kept += 1


def read_fallback(path: Path, location: str) -> Fallback | None:
    """The fallback journal at ``path``, or None; StateError if it cannot be trusted."""
    try:
        # Never a blocking open: a FIFO or a device here must not hang the run (DESIGN §2).
        raw = read_file(path, MAX_BYTES)
    except NotAFile as exc:
        raise _damaged(location, path, f"cannot be read: {exc}") from None
    except OSError as exc:
        raise _damaged(location, path, f"cannot be read ({exc.strerror or exc})") from None
    if raw is None:
        return None
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] != b"":
        chunks = chunks[:-1]  # a torn last line: the run died while appending it
    read = (_entry(location, path, lineno, chunk) for lineno, chunk in enumerate(chunks, 1))
    entries = [entry for entry in read if entry is not None]
    if not entries:
        return Fallback(path, "", "", ())
    header = entries[0]
    if header.get("modelsync") != KIND or header.get("version") != VERSION:
        raise _damaged(location, path, "does not start with a modelsync fallback header")
    lineage, endpoint = header.get("lineage"), header.get("endpoint")
    if not isinstance(lineage, str) or not isinstance(endpoint, str):
        raise _damaged(location, path, "has a header without lineage or endpoint")
    lines = tuple(_kept(location, path, n, e) for n, e in enumerate(entries[1:], 2))
    return Fallback(path, lineage, endpoint, lines)


def _entry(location: str, path: Path, lineno: int, chunk: bytes) -> dict[str, Any] | None:
    if not chunk.strip():
        return None
    try:
        entry = json.loads(chunk)
    except (ValueError, RecursionError):
        raise _damaged(location, path, f"has a damaged line {lineno}") from None
    if not isinstance(entry, dict):
        raise _damaged(location, path, f"has a damaged line {lineno}")
    return entry


def _kept(location: str, path: Path, lineno: int, entry: dict[str, Any]) -> Kept:
    epoch = entry.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise _damaged(location, path, f"line {lineno} has no epoch")
    if entry.get("op") == "put" and isinstance(entry.get("model_id"), str):
        where = f"fallback journal {path}, line {lineno}"
        record = ModelRecord.from_json(entry.get("record"), where=where)
        return Kept(epoch, (entry["model_id"],), record)
    ids = entry.get("model_ids")
    if entry.get("op") == "del" and isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return Kept(epoch, tuple(ids))
    raise _damaged(location, path, f"line {lineno} is not a put or a del")


def _damaged(location: str, path: Path, problem: str) -> StateError:
    return trust.untrusted(
        location,
        f"has a fallback journal {path} that {problem}",
        f"look at it, then move it aside to go on without the results it holds, or"
        f" {trust.USE_ANOTHER_STATE}",
    )


def fold_in_memory(
    models: dict[str, ModelRecord], epochs: dict[str, int], fallback: Fallback
) -> bool:
    """Apply the kept lines to ``models`` (rows written by a later epoch win); changed?"""
    changed = False
    for kept in fallback.lines:
        for model_id in kept.model_ids:
            if epochs.get(model_id, 0) > kept.epoch:
                continue
            if kept.record is not None:
                changed = changed or models.get(model_id) != kept.record
                models[model_id] = kept.record
            elif model_id in models:
                del models[model_id]
                changed = True
            epochs[model_id] = kept.epoch
    return changed


def remove(path: Path, location: str) -> None:
    """Remove a folded fallback journal."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StateError(
            f"state {location}: its fallback journal {path} is folded in but cannot be"
            f" removed: {exc.strerror or exc}; remove it by hand"
        ) from None
    _fsync_dir(path.parent)
