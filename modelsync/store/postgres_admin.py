"""``state migrate``, ``state unlock`` and ``state ddl``: moving and minding a state (§2b).

Nothing here imports psycopg at import time: ``state ddl`` and a file-to-file migrate
work without the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsync.errors import StateError, UsageError
from modelsync.records import State
from modelsync.store import StateBackend
from modelsync.store.postgres_sql import ddl_text, is_postgres, parse_target


@dataclass(frozen=True)
class Migrated:
    """A state copied to another backend: the same lineage, serial and records."""

    source: str
    target: str
    lineage: str
    serial: int
    models: int


@dataclass(frozen=True)
class Unlocked:
    """A broken lease: whose it was, and the state's epoch now."""

    location: str
    holder: str
    epoch: int
    new_epoch: int


def migrate(
    source: StateBackend, target: StateBackend, *, lock_timeout: float, command: str
) -> Migrated:
    """Copy ``source`` into ``target`` (which must be empty), holding the source's lock."""
    if source.location == target.location:
        raise UsageError(f"state migrate: --to names the state itself ({source.location})")
    with source.open_writer(lock_timeout=lock_timeout, command=command) as writer:
        state = writer.state
        if not state.exists:
            raise StateError(f"state {source.location} does not exist yet: nothing to migrate")
        _copy_into(target, state, lock_timeout=lock_timeout, command=command)
    copied = target.read()
    same = (copied.lineage, copied.serial, dict(copied.models)) == (
        state.lineage,
        state.serial,
        dict(state.models),
    )
    if not same:
        raise StateError(
            f"state migrate: state {target.location} does not read back as the copy of"
            f" {source.location}; do not use it: look at it, or migrate into another state"
        )
    return Migrated(
        source.location, target.location, state.lineage, state.serial, len(state.models)
    )


def _copy_into(target: StateBackend, state: State, *, lock_timeout: float, command: str) -> None:
    importer: Any = getattr(target, "import_state", None)
    if importer is not None:
        importer(state)
        return
    from modelsync.store.file import FileBackend

    if not isinstance(target, FileBackend):
        raise StateError(f"state migrate: cannot copy a state into {target.location}")
    _copy_into_file(target, state, lock_timeout=lock_timeout, command=command)


def _copy_into_file(target: Any, state: State, *, lock_timeout: float, command: str) -> None:
    from modelsync.store.fileio import atomic_write
    from modelsync.store.snapshot import dump_snapshot

    path = Path(target.path)
    # The file's own lock keeps another run out while the snapshot is put in place; the
    # writer records nothing, so it writes nothing when it closes.
    with target.open_writer(lock_timeout=lock_timeout, command=command) as writer:
        current = writer.state
        if current.exists or current.models:
            raise StateError(
                f"state {target.location} is not empty (serial {current.serial},"
                f" {len(current.models)} model(s)): migrate copies only into an empty state;"
                " choose another path, or move that state away first"
            )
        data = dump_snapshot(state.lineage, state.serial, state.endpoint, state.models)
        atomic_write(path, data, f"free disk space or fix the permissions of {path.parent}")


def unlock(backend: StateBackend, epoch: int) -> Unlocked:
    """Break the lease at ``epoch`` of a database state (its holder is known to be gone)."""
    breaker: Any = getattr(backend, "break_lease", None)
    if breaker is None:
        raise UsageError(
            f"state {backend.location} is a file: its lock is an OS lock that dies with its"
            " process, so there is no lease to break; if a run is stuck, stop that process"
        )
    unlocked: Unlocked = breaker(epoch)
    return unlocked


def ddl(location: str | None, manifest_path: str | Path) -> str:
    """The DDL of a PostgreSQL state's tables, for a DBA to run (no connection made)."""
    if location is None or not is_postgres(location):
        raise UsageError(
            "state ddl prints the tables of a PostgreSQL state: pass --state"
            " postgresql://... (or set MODELSYNC_STATE); a file state has no tables"
        )
    return ddl_text(parse_target(location, manifest_path).schema)
