"""The file backend: a JSON snapshot, a journal, an OS lock (DESIGN §2).

Files, all mode 0600, beside the snapshot ``X.state.json``:

- ``X.state.json.backup``: the previous snapshot, kept whenever a commit changes the state;
- ``X.state.json.journal``: during a run, one JSON line per recorded result (synced in batches)
  (a header line first), folded into the snapshot at the end of the run or on the next start
  (:mod:`modelsync.store.journal`);
- ``X.state.json.lock``: the OS lock (flock) that lets one run at a time write the state;
- ``X.state.json.lock.info``: who holds the lock, only to name them in the "locked" error.

A state path given through a symlink (to the file or to a folder above it) is resolved first,
so every name of one state shares one lock and one journal, and a write replaces the target,
never the link. How a snapshot and its journal are read and trusted (regular files of at most
1 GiB, JSON at most 64 deep) is in :mod:`modelsync.store.snapshot`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import types
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from modelsync.errors import StateError
from modelsync.records import ModelRecord, State
from modelsync.store import StateWriter, known_ids, trust
from modelsync.store.fileio import (
    FILE_MODE,
    MAX_DEPTH,
    NotAFile,
    atomic_write,
    backup_path,
    check_file,
    describe_holder,
    fsync_dir,
    journal_path,
    json_depth,
    lock_info,
    lock_info_path,
    lock_path,
    make_lock,
    reason,
    remove_temp_files,
    resolve,
)
from modelsync.store.journal import JournalFile, del_line, fold, header_line, put_line
from modelsync.store.snapshot import dump_snapshot, load, not_a_file
from modelsync.store.trust import USE_ANOTHER_STATE

if TYPE_CHECKING:
    import filelock

_log = logging.getLogger(__name__)


def read_state(path: Path, endpoint: str) -> State:
    """Read the state without writing anything or taking the lock (for ``plan``)."""
    given, path = Path(path), resolve(Path(path))
    _check_file(path, given)
    loaded = load(path, endpoint)
    models = dict(loaded.models)
    fold(models, loaded.ops)
    return State(
        location=str(path),
        lineage=loaded.lineage,
        serial=loaded.serial,
        endpoint=loaded.endpoint,
        models=types.MappingProxyType(models),
        exists=loaded.raw is not None,
    )


def _check_file(path: Path, given: Path) -> None:
    # Only stat, and before anything is created beside it (a link to /dev/zero must not
    # leave a lock file in /dev); what is opened is checked again when it is read.
    try:
        check_file(path)
    except NotAFile as exc:
        raise not_a_file(path, str(exc), given) from None
    except OSError:
        pass  # reported with its cause by the steps that follow


def _sandbox_path(path: Path) -> Path:
    name = path.name
    base = name[: -len(".state.json")] if name.endswith(".state.json") else path.stem
    return path.with_name(f"{base}.sandbox.state.json")


class FileBackend:
    """A state kept in a file (see the module docstring)."""

    def __init__(self, location: str | Path, endpoint: str) -> None:
        self._given = Path(location)
        self.path = resolve(self._given)
        self.endpoint = endpoint

    @property
    def location(self) -> str:
        """The state file's path."""
        return str(self.path)

    def read(self) -> State:
        """The state, without the lock and without writing anything."""
        return read_state(self._given, self.endpoint)

    def open_writer(
        self, *, lock_timeout: float, command: str
    ) -> AbstractContextManager[StateWriter]:
        """Take the lock and open the state to write."""
        return StateStore(self._given, self.endpoint, lock_timeout=lock_timeout, command=command)

    def describe_holder(self) -> str:
        """Who holds the lock, from the lock-info file."""
        return describe_holder(lock_info_path(self.path))

    def for_sandbox(self, endpoint: str) -> FileBackend:
        """``prod.state.json`` -> ``prod.sandbox.state.json``, beside it."""
        return FileBackend(_sandbox_path(self.path), endpoint)


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
        # Resolved before any path beside it is derived: one state, one lock, whatever its name.
        self._given = Path(path)
        self._path = resolve(self._given)
        self._endpoint = endpoint
        self._lock_timeout = max(0.0, float(lock_timeout))
        self._command = command
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)  # see JournalFile
        self._lock: filelock.BaseFileLock | None = None
        self._open = False
        self._lineage = ""
        self._serial = 0
        self._raw: bytes | None = None
        self._stored: dict[str, ModelRecord] = {}
        self._models: dict[str, ModelRecord] = {}
        self._journal: JournalFile | None = None
        self._journal_on_disk = False

    # -- context manager

    def __enter__(self) -> StateStore:
        if self._lock is not None:
            raise RuntimeError("a StateStore can be entered only once")
        _check_file(self._path, self._given)
        self._check_folder()
        self._lock = self._acquire()
        try:
            with contextlib.suppress(OSError):
                os.chmod(lock_path(self._path), FILE_MODE)
            self._write_lock_info()
            # Temp files of writers killed mid-write; holding the lock, none of them is live.
            names = (self._path, backup_path(self._path), lock_info_path(self._path))
            remove_temp_files(self._path.parent, (p.name for p in names))
            loaded = load(self._path, self._endpoint)
            self._lineage, self._serial, self._raw = loaded.lineage, loaded.serial, loaded.raw
            self._stored = dict(loaded.models)
            self._models = dict(loaded.models)
            fold(self._models, loaded.ops)
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

    def _check_folder(self) -> None:
        folder = self._path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state folder {folder} for {self._path}: {reason(exc)};"
                f" fix its permissions, or {USE_ANOTHER_STATE}"
            ) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StateError(
                f"state folder {folder} is not writable, so state {self._path} cannot be"
                f" updated; fix its permissions, or {USE_ANOTHER_STATE}"
            )

    def _acquire(self) -> filelock.BaseFileLock:
        import filelock  # only a writer locks (see fileio.make_lock)

        lock = make_lock(lock_path(self._path))
        try:
            lock.acquire(timeout=self._lock_timeout)
        except filelock.Timeout:
            holder = describe_holder(lock_info_path(self._path))
            raise trust.locked(str(self._path), holder, self._lock_timeout) from None
        except OSError as exc:
            raise StateError(
                f"cannot lock state {self._path} with {lock_path(self._path)}: {reason(exc)};"
                f" fix its permissions, or {USE_ANOTHER_STATE}"
            ) from None
        return lock

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
        """Record one result (one journal line, written before this returns, so a killed process
        keeps it; synced in the background); safe to call from threads."""
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty string, not {model_id!r}")
        data = record.to_json()
        # A deep copy, validated: the caller may reuse its dicts, and a record that could not
        # be read back must not reach the journal.
        frozen = ModelRecord.from_json(data, where=f"record for {model_id!r}")
        line = put_line(model_id, data)
        if json_depth(line) >= MAX_DEPTH:
            # The snapshot nests a record one level deeper than its journal line does.
            raise ValueError(f"record for {model_id!r} is nested too deep to be read back")
        with self._mutex:
            self._check_open()
            self._append(line)
            self._models[model_id] = frozen

    def forget(self, model_ids: Iterable[str]) -> None:
        """Remove models from the state, journaled like record() (unknown ids are ignored)."""
        with self._mutex:
            self._check_open()
            known = known_ids(model_ids, self._models)
            if not known:
                return
            self._append(b"".join(del_line(mid) for mid in known))
            for mid in known:
                del self._models[mid]

    def commit(self) -> None:
        """Fold the journal into a new snapshot, atomically; no write when nothing changed."""
        with self._mutex:
            self._check_open()
            if self._journal is not None:
                self._journal.wait_idle()
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
        """Append to the journal; return once it is written. Called with the mutex held."""
        journal = self._journal
        # A closed journal that is not broken was committed but could not be removed: start
        # anew (which then says why); a broken one refuses every further line.
        if journal is None or (journal.fd is None and journal.broken is None):
            journal = self._start_journal()
        journal.append(data)

    def _start_journal(self) -> JournalFile:
        if self._raw is None:
            # A journal must never exist without its snapshot (a missing state beside a
            # journal is untrusted), so the first record of a new state pins the lineage
            # in an empty snapshot first; serial 0 = nothing recorded yet.
            self._write_snapshot(0, {})
        journal = JournalFile.create(journal_path(self._path), self._path, self._changed)
        self._journal = journal
        self._journal_on_disk = True
        journal.begin(header_line(self._lineage, self._serial))
        return journal

    def _write_snapshot(self, serial: int, models: Mapping[str, ModelRecord]) -> None:
        data = dump_snapshot(self._lineage, serial, self._endpoint, models)
        kept = (
            f"; the results of this run are kept in {journal_path(self._path)} and the next"
            " run folds them in"
            if self._journal_on_disk
            else ""
        )
        hint = f"free disk space or fix the folder's permissions and run again{kept}"
        # The empty serial-0 snapshot of a first run (see _start_journal) holds nothing
        # worth a backup; any other previous snapshot is kept.
        if self._raw is not None and (self._serial > 0 or self._stored):
            atomic_write(backup_path(self._path), self._raw, hint)
        atomic_write(self._path, data, hint)
        self._raw = data
        self._serial = serial
        self._stored = dict(models)

    def _drop_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
        if not self._journal_on_disk:
            self._journal = None
            return
        journal = journal_path(self._path)
        try:
            journal.unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot remove the journal {journal} after saving state {self._path}:"
                f" {reason(exc)}; fix the folder's permissions (the next run will drop it)"
            ) from None
        fsync_dir(journal.parent)
        self._journal_on_disk = False
        self._journal = None

    def _write_lock_info(self) -> None:
        try:
            atomic_write(lock_info_path(self._path), lock_info(self._command), "", durable=False)
        except StateError as exc:
            # Only used to name the holder in someone else's error: not worth failing a run.
            _log.warning("%s", exc)

    def _close(self) -> None:
        with self._mutex:
            self._open = False
            if self._journal is not None:
                self._journal.close()
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            # Remove the info while still holding the lock: afterwards it may be the next holder's.
            with contextlib.suppress(OSError):
                lock_info_path(self._path).unlink(missing_ok=True)
        finally:
            lock.release()
