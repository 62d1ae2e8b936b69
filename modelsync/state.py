"""The state store: what modelsync already submitted, kept safe across crashes (DESIGN §2).

Files, all mode 0600, beside the snapshot ``X.state.json``:

- ``X.state.json.backup``: the previous snapshot, kept whenever a commit changes the state;
- ``X.state.json.journal``: during a run, one fsynced JSON line per recorded result
  (a header line first), folded into the snapshot at the end of the run or on the next start;
- ``X.state.json.lock``: the OS lock (flock) that lets one run at a time write the state;
- ``X.state.json.lock.info``: who holds the lock, only to name them in the "locked" error.

A journal always refers to the snapshot it was started from (same ``lineage``, its
``base_serial`` equal to the snapshot's ``serial``). A commit first replaces the snapshot,
then removes the journal, so a journal whose base serial is older than the snapshot was
already folded in by a commit that was killed before it could remove it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import shlex
import socket
import threading
import types
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from modelsync.errors import StateError, StateLockedError
from modelsync.records import (
    ModelRecord,
    State,
    describe_kind,
    utc_now,
)
from modelsync.redact import redact

FORMAT_VERSION = 1
_FILE_MODE = 0o600
_TOP_FIELDS = frozenset({"format_version", "lineage", "serial", "endpoint", "models"})
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- records


# --------------------------------------------------------------------------- paths


def default_state_path(manifest_path: Path) -> Path:
    """Return ``<manifest dir>/.modelsync/<manifest stem>.state.json``."""
    manifest_path = Path(manifest_path)
    return manifest_path.parent / ".modelsync" / f"{manifest_path.stem}.state.json"


def sandbox_state_path(state_path: Path) -> Path:
    """Return the sandbox's own state file: ``prod.state.json`` -> ``prod.sandbox.state.json``."""
    state_path = Path(state_path)
    name = state_path.name
    base = name[: -len(".state.json")] if name.endswith(".state.json") else state_path.stem
    return state_path.with_name(f"{base}.sandbox.state.json")


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _backup_path(path: Path) -> Path:
    return _sibling(path, ".backup")


def _journal_path(path: Path) -> Path:
    return _sibling(path, ".journal")


def _lock_path(path: Path) -> Path:
    return _sibling(path, ".lock")


def _lock_info_path(path: Path) -> Path:
    return _sibling(path, ".lock.info")


# --------------------------------------------------------------------------- reading


def read_state(path: Path, endpoint: str) -> State:
    """Read the state without writing anything or taking the lock (for ``plan``)."""
    path = Path(path)
    loaded = _load(path, endpoint)
    models = dict(loaded.models)
    _fold(models, loaded.ops)
    return State(
        location=str(path),
        lineage=loaded.lineage,
        serial=loaded.serial,
        endpoint=loaded.endpoint,
        models=types.MappingProxyType(models),
        exists=loaded.raw is not None,
    )


@dataclass(frozen=True)
class _Journal:
    lineage: str | None  # None: the header itself was torn, so the journal holds nothing
    base_serial: int
    ops: tuple[tuple[str, ModelRecord | None], ...]


@dataclass(frozen=True)
class _Loaded:
    raw: bytes | None  # the snapshot's bytes; None when there is no snapshot yet
    lineage: str
    serial: int
    endpoint: str
    models: Mapping[str, ModelRecord]  # as in the snapshot, without the journal
    ops: tuple[tuple[str, ModelRecord | None], ...]  # journal operations still to fold
    journal_found: bool  # a journal file exists (to fold, or stale, or empty)


def _load(path: Path, endpoint: str) -> _Loaded:
    journal_path = _journal_path(path)
    # A writer may commit while a reader (plan) looks: if the snapshot changed while we read
    # the journal, read both again so the pair we judge belongs together.
    for _ in range(20):
        before = _identity(path)
        raw = _read_snapshot_bytes(path)
        journal = _read_journal(journal_path, path)
        if _identity(path) == before:
            break

    if raw is None:
        backup = _backup_path(path)
        if _exists(backup):
            raise StateError(
                f"state {path} is missing but its backup {backup} exists, so the state was"
                " deleted or moved (starting from nothing would submit every model again);"
                f" restore it with `cp {_q(backup)} {_q(path)}`, or pass --state PATH"
            )
        if journal is not None:
            raise StateError(
                f"state {path} is missing but its journal {journal_path} exists (results of a"
                " run that did not finish); restore the state file from a copy, or pass"
                f" --state PATH; remove {journal_path} only if you mean to start from nothing"
                " (every model will be submitted again)"
            )
        return _Loaded(None, str(uuid.uuid4()), 0, endpoint, {}, (), False)

    lineage, serial, stored_endpoint, models = _parse_snapshot(path, raw)
    _check_backup_lineage(path, lineage)
    if stored_endpoint != endpoint:
        raise StateError(
            f"state {path} was written for endpoint {stored_endpoint}, but this run targets"
            f" {endpoint}; pass --endpoint {stored_endpoint} to use this state, or"
            " --state PATH to keep a separate state per endpoint"
        )

    ops: tuple[tuple[str, ModelRecord | None], ...] = ()
    if journal is not None and journal.lineage is not None:
        if journal.lineage != lineage:
            raise StateError(
                f"journal {journal_path} belongs to another state (lineage {journal.lineage},"
                f" but {path} has lineage {lineage}); if {path} is the state you mean, move"
                f" {journal_path} away (the results it holds will be planned again), otherwise"
                " restore the state file it belongs to, or pass --state PATH"
            )
        if journal.base_serial > serial:
            raise StateError(
                f"journal {journal_path} continues serial {journal.base_serial}, but state"
                f" {path} is at serial {serial} (an older snapshot was put back?); restore the"
                f" newer state file, or move {journal_path} away (the results it holds will be"
                " planned again)"
            )
        # An older base serial means a commit already folded it in and died before removing it.
        if journal.base_serial == serial:
            ops = journal.ops
    return _Loaded(raw, lineage, serial, stored_endpoint, models, ops, journal is not None)


def _fold(models: dict[str, ModelRecord], ops: Iterable[tuple[str, ModelRecord | None]]) -> None:
    for model_id, record in ops:
        if record is None:
            models.pop(model_id, None)
        else:
            models[model_id] = record


def _read_snapshot_bytes(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(
            f"cannot read state {path}: {_reason(exc)}; check the path and its permissions,"
            " or pass --state PATH"
        ) from None


def _parse_snapshot(path: Path, raw: bytes) -> tuple[str, int, str, dict[str, ModelRecord]]:
    def untrusted(problem: str) -> StateError:
        return StateError(
            f"state {path} {problem}; modelsync will not read it as 'nothing submitted',"
            f" which would submit every model again; {_restore_hint(path)}"
        )

    if not raw.strip():
        raise untrusted("is empty")
    try:
        doc = _loads(raw)
    except ValueError as exc:
        raise untrusted(f"is not valid JSON ({exc}); it may be truncated or damaged") from None
    if not isinstance(doc, dict):
        raise untrusted(f"does not hold a JSON object (found {describe_kind(doc)})")
    if "format_version" not in doc:
        raise untrusted("has no format_version")
    version = doc["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > 1
        raise untrusted(
            f"has format_version {version!r}, but this modelsync reads format_version"
            f" {FORMAT_VERSION}" + ("; upgrade modelsync to read it" if newer else "")
        )
    unknown = sorted(str(key) for key in doc if key not in _TOP_FIELDS)
    if unknown:
        raise untrusted(f"has unknown field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(_TOP_FIELDS - set(doc))
    if missing:
        raise untrusted(f"is missing field(s) {', '.join(map(repr, missing))}")
    lineage, serial, endpoint, models = (
        doc["lineage"],
        doc["serial"],
        doc["endpoint"],
        doc["models"],
    )
    if not isinstance(lineage, str) or not lineage:
        raise untrusted("has no valid lineage (expected a non-empty string)")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise untrusted(f"has an invalid serial {serial!r} (expected a whole number >= 0)")
    if not isinstance(endpoint, str) or not endpoint:
        raise untrusted("has no valid endpoint (expected a non-empty string)")
    if not isinstance(models, dict):
        raise untrusted(f"has models that are not an object (found {describe_kind(models)})")
    records: dict[str, ModelRecord] = {}
    for model_id, data in models.items():
        if not model_id:
            raise untrusted("has a model with an empty model_id")
        try:
            records[model_id] = ModelRecord.from_json(data, where=f"models[{model_id!r}]")
        except StateError as exc:
            raise untrusted(f"has a bad record: {exc}") from None
    return lineage, serial, endpoint, records


def _check_backup_lineage(path: Path, lineage: str) -> None:
    backup = _backup_path(path)
    try:
        with open(backup, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return
    except OSError as exc:
        _log.warning("cannot read state backup %s (%s); not checking its lineage", backup, exc)
        return
    try:
        doc = _loads(raw)
    except ValueError:
        doc = None
    backup_lineage = doc.get("lineage") if isinstance(doc, dict) else None
    if not isinstance(backup_lineage, str):
        # The backup only serves to catch a swapped state file; a damaged one must not stop
        # a run whose state itself is sound.
        _log.warning("state backup %s is unreadable; not checking its lineage", backup)
        return
    if backup_lineage != lineage:
        raise StateError(
            f"state {path} has lineage {lineage}, but its backup {backup} has lineage"
            f" {backup_lineage}: the state file was replaced by one that belongs to another"
            f" state; if the backup is right, restore it with `cp {_q(backup)} {_q(path)}`;"
            f" if {path} is the state you mean, remove {backup}; or pass --state PATH"
        )


def _read_journal(journal_path: Path, state_path: Path) -> _Journal | None:
    try:
        with open(journal_path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(
            f"cannot read the journal {journal_path} of state {state_path}: {_reason(exc)};"
            " fix its permissions, or pass --state PATH"
        ) from None

    def damaged(lineno: int, problem: str) -> StateError:
        return StateError(
            f"journal {journal_path} line {lineno} is damaged ({problem}); it holds results of"
            f" a run of state {state_path} that did not finish; restore it from a copy, or move"
            " it away to go on from the snapshot (the results it holds will be planned again)"
        )

    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    entries: list[tuple[int, Any]] = []
    for index, line in enumerate(lines):
        try:
            entries.append((index + 1, _loads(line)))
        except ValueError as exc:
            if index == len(lines) - 1:
                # A torn last line: the process died inside the append, so record() never
                # returned for it and nobody was told it was recorded.
                break
            where = str(exc).removeprefix("line 1 ")  # each line is one JSON document
            raise damaged(index + 1, f"not JSON: {where}") from None
    if not entries:
        return _Journal(None, 0, ())

    lineno, header = entries[0]
    if (
        not isinstance(header, dict)
        or header.get("op") != "begin"
        or header.get("format_version") != FORMAT_VERSION
        or not isinstance(header.get("lineage"), str)
        or not isinstance(header.get("base_serial"), int)
        or isinstance(header.get("base_serial"), bool)
    ):
        raise damaged(lineno, "the first line is not a journal header of format_version 1")
    ops: list[tuple[str, ModelRecord | None]] = []
    for lineno, entry in entries[1:]:
        if not isinstance(entry, dict):
            raise damaged(lineno, f"expected an object, found {describe_kind(entry)}")
        model_id = entry.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            raise damaged(lineno, "no model_id")
        op = entry.get("op")
        if op == "put":
            try:
                record = ModelRecord.from_json(entry.get("record"), where="record")
            except StateError as exc:
                raise damaged(lineno, str(exc)) from None
            ops.append((model_id, record))
        elif op == "del":
            ops.append((model_id, None))
        else:
            raise damaged(lineno, f"unknown op {op!r}")
    return _Journal(header["lineage"], header["base_serial"], tuple(ops))


def _restore_hint(path: Path) -> str:
    backup = _backup_path(path)
    if _exists(backup):
        return (
            f"restore the previous snapshot with `cp {_q(backup)} {_q(path)}`,"
            " or pass --state PATH to use another state file"
        )
    return (
        f"restore {path} from version control or a copy, or pass --state PATH to use another"
        " state file; to rebuild it, move it away and run `modelsync state adopt ID...` for"
        " the models already on the account"
    )


# --------------------------------------------------------------------------- writing


class StateStore:
    """The writer, used by `apply` and `state rm/adopt` as a context manager."""

    def __init__(
        self,
        path: Path,
        endpoint: str,
        *,
        lock_timeout: float = 0.0,
        command: str = "modelsync",
    ) -> None:
        self._path = Path(path)
        self._endpoint = endpoint
        self._lock_timeout = max(0.0, float(lock_timeout))
        self._command = command
        self._mutex = threading.Lock()
        # Group commit (see _append): appends written to the journal file, appends known
        # to be durable, whether a thread is syncing, and appends still in progress.
        self._changed = threading.Condition(self._mutex)
        self._written = 0
        self._durable = 0
        self._syncing = False
        self._appending = 0
        self._lock: filelock.BaseFileLock | None = None
        self._open = False
        self._lineage = ""
        self._serial = 0
        self._raw: bytes | None = None
        self._stored: dict[str, ModelRecord] = {}
        self._models: dict[str, ModelRecord] = {}
        self._journal_fd: int | None = None
        self._journal_on_disk = False
        # After a failed append the journal may end in a torn line; appending more after it
        # would turn that line into damage in the middle, so the store takes no more records.
        self._broken: str | None = None

    # -- context manager

    def __enter__(self) -> StateStore:
        if self._lock is not None:
            raise RuntimeError("a StateStore can be entered only once")
        folder = self._path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state folder {folder} for {self._path}: {_reason(exc)};"
                " fix its permissions, or pass --state PATH"
            ) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StateError(
                f"state folder {folder} is not writable, so state {self._path} cannot be"
                " updated; fix its permissions, or pass --state PATH"
            )
        lock = _make_lock(_lock_path(self._path))
        try:
            lock.acquire(timeout=self._lock_timeout)
        except filelock.Timeout:
            raise StateLockedError(self._locked_message()) from None
        except OSError as exc:
            raise StateError(
                f"cannot lock state {self._path} with {_lock_path(self._path)}: {_reason(exc)};"
                " fix its permissions, or pass --state PATH"
            ) from None
        self._lock = lock
        try:
            with contextlib.suppress(OSError):
                os.chmod(_lock_path(self._path), _FILE_MODE)
            self._write_lock_info()
            self._remove_temp_files()
            loaded = _load(self._path, self._endpoint)
            self._lineage, self._serial, self._raw = loaded.lineage, loaded.serial, loaded.raw
            self._stored = dict(loaded.models)
            self._models = dict(loaded.models)
            _fold(self._models, loaded.ops)
            self._journal_on_disk = loaded.journal_found
            self._open = True
            if loaded.journal_found:
                # Fold what an interrupted run left before this run journals anything: its
                # file may end in a torn line that must not get new lines after it.
                self.commit()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._open:
                # Also when the run failed: what it recorded is kept.
                self.commit()
        finally:
            self._close()

    # -- API

    @property
    def state(self) -> State:
        """The current view: the snapshot plus everything recorded so far."""
        with self._mutex:
            self._check_open()
            return State(
                location=str(self._path),
                lineage=self._lineage,
                serial=self._serial,
                endpoint=self._endpoint,
                models=types.MappingProxyType(dict(self._models)),
                exists=self._raw is not None,
            )

    def record(self, model_id: str, record: ModelRecord) -> None:
        """Durably record one result (one fsynced journal line); safe to call from threads."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, not {model_id!r}")
        data = record.to_json()
        # A deep copy, validated: the caller may reuse its dicts, and a record that could not
        # be read back must not reach the journal.
        frozen = ModelRecord.from_json(data, where=f"record for {model_id!r}")
        line = _dumps_line({"op": "put", "model_id": model_id, "record": data})
        with self._mutex:
            self._check_open()
            self._append(line)
            self._models[model_id] = frozen

    def forget(self, model_ids: Iterable[str]) -> None:
        """Durably remove models from the state (unknown ids are ignored)."""
        if isinstance(model_ids, str):
            model_ids = [model_ids]
        with self._mutex:
            self._check_open()
            known = [mid for mid in dict.fromkeys(model_ids) if mid in self._models]
            if not known:
                return
            self._append(b"".join(_dumps_line({"op": "del", "model_id": mid}) for mid in known))
            for mid in known:
                del self._models[mid]

    def commit(self) -> None:
        """Fold the journal into a new snapshot, atomically; no write when nothing changed."""
        with self._mutex:
            self._check_open()
            self._wait_for_appends()
            # Records hold plain JSON values (see record()), so comparing them is comparing
            # their JSON; unchanged records are the same objects, compared by identity.
            if self._models != self._stored:
                self._write_snapshot(self._serial + 1, self._models)
            self._drop_journal()

    # -- internals

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"StateStore for {self._path} is not open (use it in a with block)")

    def _append(self, data: bytes) -> None:
        """Append to the journal; return once it is durable. Called with the mutex held."""
        journal = _journal_path(self._path)
        if self._broken is not None:
            raise StateError(
                f"cannot record in the journal {journal} of state {self._path}: an earlier"
                f" write failed ({self._broken}); fix the cause and run again"
            )
        if self._journal_fd is None:
            self._start_journal()
        fd = self._journal_fd
        assert fd is not None
        self._appending += 1
        try:
            try:
                _write_all(fd, data)
            except OSError as exc:
                self._broken = _reason(exc)
                raise self._append_failed(self._broken) from None
            self._written += 1
            ticket = self._written
            # Group commit: one fdatasync per batch, not per line. A thread that finds no
            # sync running syncs every line written so far, with the mutex released so that
            # other threads write theirs meanwhile; they wait for the next sync. Each caller
            # still returns only once its own line is durable.
            while self._durable < ticket:
                if self._broken is not None:
                    raise self._append_failed(self._broken)
                if self._syncing:
                    self._changed.wait()
                    continue
                self._syncing = True
                upto = self._written
                error: OSError | None = None
                self._mutex.release()
                try:
                    _datasync(fd)
                except OSError as exc:
                    error = exc
                finally:
                    self._mutex.acquire()
                    self._syncing = False
                    self._changed.notify_all()
                if error is not None:
                    self._broken = _reason(error)
                    raise self._append_failed(self._broken)
                self._durable = max(self._durable, upto)
        finally:
            self._appending -= 1
            if not self._appending:
                self._changed.notify_all()

    def _append_failed(self, reason: str) -> StateError:
        return StateError(
            f"cannot append to the journal {_journal_path(self._path)} of state {self._path}:"
            f" {reason}; this result was not recorded; free disk space or fix"
            " permissions and run again (results recorded before are kept)"
        )

    def _wait_for_appends(self) -> None:
        # The journal's descriptor must not be closed under a thread that is syncing it.
        while self._appending:
            self._changed.wait()

    def _start_journal(self) -> None:
        if self._raw is None:
            # A journal must never exist without its snapshot (a missing state beside a
            # journal is untrusted), so the first record of a new state pins the lineage
            # in an empty snapshot first; serial 0 = nothing recorded yet.
            self._write_snapshot(0, {})
        journal = _journal_path(self._path)
        header = {
            "op": "begin",
            "format_version": FORMAT_VERSION,
            "lineage": self._lineage,
            "base_serial": self._serial,
        }
        try:
            fd = os.open(
                journal,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                _FILE_MODE,
            )
        except OSError as exc:
            raise StateError(
                f"cannot create the journal {journal} of state {self._path}: {_reason(exc)};"
                " fix the folder's permissions, or pass --state PATH"
            ) from None
        self._journal_fd = fd
        self._journal_on_disk = True
        try:
            _write_all(fd, _dumps_line(header))
            os.fsync(fd)
        except OSError as exc:
            self._broken = _reason(exc)
            raise StateError(
                f"cannot write the journal {journal} of state {self._path}: {_reason(exc)};"
                " free disk space or fix permissions and run again"
            ) from None
        # The journal's name must survive a crash too, not only its contents.
        _fsync_dir(journal.parent)

    def _write_snapshot(self, serial: int, models: Mapping[str, ModelRecord]) -> None:
        data = _dump_snapshot(self._lineage, serial, self._endpoint, models)
        journal = _journal_path(self._path)
        kept = (
            f"; the results of this run are kept in {journal} and the next run folds them in"
            if self._journal_on_disk
            else ""
        )
        # The empty serial-0 snapshot of a first run (see _start_journal) holds nothing
        # worth a backup; any other previous snapshot is kept.
        if self._raw is not None and (self._serial > 0 or self._stored):
            _atomic_write(
                _backup_path(self._path),
                self._raw,
                f"free disk space or fix the folder's permissions and run again{kept}",
            )
        _atomic_write(
            self._path,
            data,
            f"free disk space or fix the folder's permissions and run again{kept}",
        )
        self._raw = data
        self._serial = serial
        self._stored = dict(models)

    def _drop_journal(self) -> None:
        if self._journal_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._journal_fd)
            self._journal_fd = None
        if not self._journal_on_disk:
            return
        journal = _journal_path(self._path)
        try:
            journal.unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot remove the journal {journal} after saving state {self._path}:"
                f" {_reason(exc)}; fix the folder's permissions (the next run will drop it)"
            ) from None
        _fsync_dir(journal.parent)
        self._journal_on_disk = False
        self._broken = None

    def _write_lock_info(self) -> None:
        info = {
            "pid": os.getpid(),
            "user": _user(),
            "host": socket.gethostname(),
            "command": redact(self._command),
            "started_at": utc_now(),
        }
        try:
            _atomic_write(_lock_info_path(self._path), _dumps_line(info), "", durable=False)
        except StateError as exc:
            # Only used to name the holder in someone else's error: not worth failing a run.
            _log.warning("%s", exc)

    def _locked_message(self) -> str:
        waited = f" (waited {self._lock_timeout:g} s)" if self._lock_timeout > 0 else ""
        return (
            f"state {self._path} is locked by {_describe_holder(_lock_info_path(self._path))}"
            f"{waited}; wait for it, or pass --lock-timeout SECONDS"
        )

    def _remove_temp_files(self) -> None:
        # Temp files of writers killed mid-write; holding the lock, none of them is live.
        ours = {
            self._path.name,
            _backup_path(self._path).name,
            _lock_info_path(self._path).name,
        }
        try:
            names = os.listdir(self._path.parent)
        except OSError:
            return
        for name in names:
            match = _TEMP_RE.match(name)
            if match and match.group("target") in ours:
                with contextlib.suppress(OSError):
                    os.unlink(self._path.parent / name)

    def _close(self) -> None:
        with self._mutex:
            self._wait_for_appends()
            self._open = False
            if self._journal_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._journal_fd)
                self._journal_fd = None
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            # Remove the info while still holding the lock: afterwards it may be the next holder's.
            with contextlib.suppress(OSError):
                _lock_info_path(self._path).unlink(missing_ok=True)
        finally:
            lock.release()


# --------------------------------------------------------------------------- helpers


def _make_lock(path: Path) -> filelock.BaseFileLock:
    try:
        # No silent fallback to a soft (marker file) lock where flock is missing: a soft lock
        # outlives a killed process, which is the stale lock DESIGN §2 rules out.
        return filelock.FileLock(
            str(path), mode=_FILE_MODE, thread_local=False, fallback_to_soft=False
        )
    except TypeError:  # filelock releases without ``fallback_to_soft``
        return filelock.FileLock(str(path), mode=_FILE_MODE, thread_local=False)


def _describe_holder(info_path: Path) -> str:
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict):
        return "another process"
    pid, user, host = info.get("pid"), info.get("user"), info.get("host")
    command, started = info.get("command"), info.get("started_at")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "another process"
    if host == socket.gethostname() and not _pid_alive(pid):
        # Left by a holder that was killed; the live holder has not written its own yet.
        return "another process"
    who = f"{_printable(str(user))}@{_printable(str(host))}"
    what = f', "{_printable(redact(command))}"' if isinstance(command, str) else ""
    since = f" since {_printable(started)}" if isinstance(started, str) else ""
    return f"pid {pid} ({who}{what}){since}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry and no LOGNAME/USER (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _atomic_write(target: Path, data: bytes, hint: str, *, durable: bool = True) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE
        )
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateError(
            f"cannot write {target}: {_reason(exc)}" + (f"; {hint}" if hint else "")
        ) from None
    if durable:
        _fsync_dir(target.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _datasync(fd: int) -> None:
    # fdatasync is enough for appended data: the size change is flushed with it.
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _dump_snapshot(
    lineage: str, serial: int, endpoint: str, models: Mapping[str, ModelRecord]
) -> bytes:
    doc = {
        "format_version": FORMAT_VERSION,
        "lineage": lineage,
        "serial": serial,
        "endpoint": endpoint,
        "models": {model_id: record.to_json() for model_id, record in models.items()},
    }
    # Sorted and indented so a team that commits its state gets readable diffs.
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _dumps_line(obj: Mapping[str, Any]) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode("utf-8")


def _loads(raw: bytes) -> Any:
    """Parse strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; ValueError otherwise."""
    text = raw.decode("utf-8-sig")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if isinstance(exc, NotADirectoryError):
            return False
        raise StateError(
            f"cannot check {path}: {_reason(exc)}; fix the folder's permissions,"
            " or pass --state PATH"
        ) from None
    return True


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _q(path: Path) -> str:
    return shlex.quote(str(path))
