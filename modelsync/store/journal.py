"""The journal of the file backend: one JSON line per recorded result (DESIGN §2).

The first line is a header, ``{"op": "begin", "format_version": 1, "lineage": ...,
"base_serial": N}``: the snapshot the journal continues. Each further line is
``{"op": "put", "model_id": ..., "record": {...}}`` or ``{"op": "del", "model_id": ...}``.
A torn last line is the append a killed process never finished: ignored, since nobody
was told it was recorded. Any other damage is refused. Lines are written at once and
synced in batches by a background thread (:class:`JournalFile`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsync.errors import StateError
from modelsync.records import ModelRecord, describe_kind
from modelsync.store.fileio import (
    FILE_MODE,
    MAX_DEPTH,
    NotAFile,
    TooDeep,
    dumps_line,
    fsync_dir,
    loads,
    read_file,
    reason,
    write_all,
)
from modelsync.store.trust import FORMAT_VERSION, USE_ANOTHER_STATE

_log = logging.getLogger(__name__)

Op = tuple[str, ModelRecord | None]  # (model_id, the record; None: forgotten)
_Damaged = Callable[[int, str], StateError]


@dataclass(frozen=True)
class Journal:
    """A journal as read: the snapshot it continues and its operations, in order."""

    lineage: str | None  # None: the header itself was torn, so the journal holds nothing
    base_serial: int
    ops: tuple[Op, ...]


def fold(models: dict[str, ModelRecord], ops: Iterable[Op]) -> None:
    """Apply journal operations to ``models``, in order."""
    for model_id, record in ops:
        if record is None:
            models.pop(model_id, None)
        else:
            models[model_id] = record


def header_line(lineage: str, base_serial: int) -> bytes:
    """The first line of a journal that continues the snapshot ``lineage``/``base_serial``."""
    return dumps_line(
        {
            "op": "begin",
            "format_version": FORMAT_VERSION,
            "lineage": lineage,
            "base_serial": base_serial,
        }
    )


def put_line(model_id: str, record_json: dict[str, Any]) -> bytes:
    """The line that records ``model_id``."""
    return dumps_line({"op": "put", "model_id": model_id, "record": record_json})


def del_line(model_id: str) -> bytes:
    """The line that forgets ``model_id``."""
    return dumps_line({"op": "del", "model_id": model_id})


# --------------------------------------------------------------------------- reading


def read_journal(journal_path: Path, state_path: Path) -> Journal | None:
    """Read the journal beside ``state_path``; None if there is none."""
    try:
        data = read_file(journal_path)
    except NotAFile as exc:
        raise StateError(
            f"cannot read the journal {journal_path} of state {state_path}: {exc}; a journal"
            f" is a regular file modelsync writes: move {journal_path} away"
        ) from None
    except OSError as exc:
        raise StateError(
            f"cannot read the journal {journal_path} of state {state_path}: {reason(exc)};"
            f" fix its permissions, or {USE_ANOTHER_STATE}"
        ) from None
    if data is None:
        return None

    def damaged(lineno: int, problem: str) -> StateError:
        return StateError(
            f"journal {journal_path} line {lineno} is damaged ({problem}); it holds results of"
            f" a run of state {state_path} that did not finish; restore it from a copy, or move"
            " it away to go on from the snapshot (the results it holds will be planned again)"
        )

    entries = _entries(data, damaged)
    if not entries:
        return Journal(None, 0, ())
    lineno, header = entries[0]
    lineage, base_serial = _header(header, lineno, damaged)
    ops = tuple(_op(entry, lineno, damaged) for lineno, entry in entries[1:])
    return Journal(lineage, base_serial, ops)


def _entries(data: bytes, damaged: _Damaged) -> list[tuple[int, Any]]:
    """The JSON documents of the journal's lines, numbered; a torn last line is dropped."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    entries: list[tuple[int, Any]] = []
    for index, line in enumerate(lines):
        try:
            entries.append((index + 1, loads(line)))
        except TooDeep:
            # Not torn: a line cut short is never deeper than the line modelsync wrote.
            raise damaged(index + 1, f"nested more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:
            if index == len(lines) - 1:
                # A torn last line: the process died inside the append, so record() never
                # returned for it and nobody was told it was recorded.
                break
            where = str(exc).removeprefix("line 1 ")  # each line is one JSON document
            raise damaged(index + 1, f"not JSON: {where}") from None
    return entries


def _header(header: Any, lineno: int, damaged: _Damaged) -> tuple[str, int]:
    if (
        not isinstance(header, dict)
        or header.get("op") != "begin"
        or header.get("format_version") != FORMAT_VERSION
        or not isinstance(header.get("lineage"), str)
        or not isinstance(header.get("base_serial"), int)
        or isinstance(header.get("base_serial"), bool)
    ):
        raise damaged(lineno, "the first line is not a journal header of format_version 1")
    return header["lineage"], header["base_serial"]


def _op(entry: Any, lineno: int, damaged: _Damaged) -> Op:
    if not isinstance(entry, dict):
        raise damaged(lineno, f"expected an object, found {describe_kind(entry)}")
    model_id = entry.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise damaged(lineno, "no model_id")
    op = entry.get("op")
    if op == "put":
        try:
            return model_id, ModelRecord.from_json(entry.get("record"), where="record")
        except StateError as exc:
            raise damaged(lineno, str(exc)) from None
    if op == "del":
        return model_id, None
    raise damaged(lineno, f"unknown op {op!r}")


# --------------------------------------------------------------------------- appending


def _datasync(fd: int) -> None:
    # fdatasync is enough for appended data: the size change is flushed with it.
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


class JournalFile:
    """A journal open for appending, shared by threads, made durable in the background.

    :meth:`append` returns once its line is written: in the operating system's page cache,
    which a killed process (``kill -9``, the OOM killer, a CI timeout) cannot take back. A
    syncer thread then makes the lines durable against power loss too, one ``fdatasync`` per
    batch, without holding up the caller; :meth:`wait_idle` (before a commit) and
    :meth:`close` wait for it. Why this trade is right is in docs/state.md (Durability).

    Every method is called with the lock of ``changed`` held (the writer's mutex). After a
    failed write the file may end in a torn line, and after a failed sync the kernel may have
    dropped lines it had (fsync errors are not retried: the pages may be gone); either way
    the journal takes no more lines.
    """

    def __init__(self, path: Path, state_path: Path, changed: threading.Condition) -> None:
        self.path = path
        self._state_path = state_path
        self._changed = changed
        self.fd: int | None = None
        self.broken: str | None = None  # why an earlier write or sync failed
        # Lines written to the file, lines known to be durable, and the syncer's life: it
        # ends at close or at a failed sync, not at a failed write (the lines written before
        # that one are still synced).
        self._written = 0
        self._durable = 0
        self._closing = False
        self._sync_failed = False
        self._syncer: threading.Thread | None = None

    @classmethod
    def create(cls, path: Path, state_path: Path, changed: threading.Condition) -> JournalFile:
        """Create the journal file (it must not exist yet)."""
        journal = cls(path, state_path, changed)
        try:
            journal.fd = os.open(
                path,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                FILE_MODE,
            )
        except OSError as exc:
            raise StateError(
                f"cannot create the journal {path} of state {state_path}: {reason(exc)};"
                f" fix the folder's permissions, or {USE_ANOTHER_STATE}"
            ) from None
        return journal

    def begin(self, header: bytes) -> None:
        """Write and sync the header line and the journal's name in its folder; start syncing."""
        assert self.fd is not None
        try:
            write_all(self.fd, header)
            os.fsync(self.fd)
        except OSError as exc:
            self.broken = reason(exc)
            raise StateError(
                f"cannot write the journal {self.path} of state {self._state_path}:"
                f" {reason(exc)}; free disk space or fix permissions and run again"
            ) from None
        # The journal's name must survive a crash too, not only its contents.
        fsync_dir(self.path.parent)
        syncer = threading.Thread(target=self._sync_forever, args=(self.fd,), daemon=True)
        syncer.name = "modelsync-journal-sync"
        self._syncer = syncer
        syncer.start()

    def append(self, data: bytes) -> None:
        """Append ``data``; return once it is written (the syncer makes it durable)."""
        if self.broken is not None:
            raise StateError(
                f"cannot record in the journal {self.path} of state {self._state_path}: an"
                f" earlier write failed ({self.broken}); fix the cause and run again"
            )
        fd = self.fd
        assert fd is not None
        try:
            write_all(fd, data)
        except OSError as exc:
            self.broken = reason(exc)
            raise StateError(
                f"cannot append to the journal {self.path} of state {self._state_path}:"
                f" {self.broken}; this result was not recorded; free disk space or fix"
                " permissions and run again (results recorded before are kept)"
            ) from None
        self._written += 1
        self._changed.notify_all()

    def _sync_forever(self, fd: int) -> None:
        # Group commit: one fdatasync covers every line written before it started; lines
        # written meanwhile wait for the next one. The mutex is released while syncing.
        with self._changed:
            try:
                while self._sync_once(fd):
                    pass
            finally:
                self._syncer = None
                self._changed.notify_all()

    def _sync_once(self, fd: int) -> bool:
        """Wait for lines to sync and sync them; False when the syncer should end."""
        while self._durable >= self._written and not self._closing:
            self._changed.wait()
        if self._durable >= self._written or self._sync_failed:
            return False
        upto = self._written
        error: OSError | None = None
        self._changed.release()
        try:
            _datasync(fd)
        except OSError as exc:
            error = exc
        finally:
            self._changed.acquire()
        if error is not None:
            self._sync_failed = True
            self.broken = f"syncing it failed: {reason(error)}"
            _log.error(
                "cannot sync the journal %s of state %s: %s; results recorded since the last"
                " sync may be lost on a power cut or a crash of the machine",
                self.path,
                self._state_path,
                reason(error),
            )
        else:
            self._durable = upto
        self._changed.notify_all()
        return True

    def wait_idle(self) -> None:
        """Wait until every line written is durable, or a sync failed (the syncer ended)."""
        while self._syncer is not None and self._durable < self._written:
            self._changed.wait()

    def close(self) -> None:
        """Sync what is left, stop the syncer, close the descriptor; ``broken`` is kept."""
        self._closing = True
        self._changed.notify_all()
        while self._syncer is not None:
            self._changed.wait()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
