"""The snapshot of the file backend, read with its journal and trust-checked (DESIGN §2).

A journal always refers to the snapshot it was started from (same ``lineage``, its
``base_serial`` equal to the snapshot's ``serial``). A commit first replaces the snapshot,
then removes the journal, so a journal whose base serial is older than the snapshot was
already folded in by a commit that was killed before it could remove it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsync.errors import StateError
from modelsync.records import ModelRecord, describe_kind
from modelsync.store import trust
from modelsync.store.fileio import (
    MAX_DEPTH,
    NotAFile,
    TooDeep,
    backup_path,
    exists,
    identity,
    journal_path,
    loads,
    q,
    read_file,
    reason,
)
from modelsync.store.journal import Journal, Op, read_journal
from modelsync.store.trust import FORMAT_VERSION, USE_ANOTHER_STATE, Untrusted

_TOP_FIELDS = frozenset({"format_version", "lineage", "serial", "endpoint", "models"})

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A snapshot and the journal operations still to fold into it."""

    raw: bytes | None  # the snapshot's bytes; None when there is no snapshot yet
    lineage: str
    serial: int
    endpoint: str
    models: Mapping[str, ModelRecord]  # as in the snapshot, without the journal
    ops: tuple[Op, ...]  # journal operations still to fold
    journal_found: bool  # a journal file exists (to fold, or stale, or empty)


def load(path: Path, endpoint: str) -> Loaded:
    """Read the snapshot at ``path`` and its journal; a StateError if they cannot be trusted."""
    raw, journal = _read_pair(path)
    if raw is None:
        _check_missing(path, journal)
        return Loaded(None, str(uuid.uuid4()), 0, endpoint, {}, (), False)

    lineage, serial, stored_endpoint, models = parse_snapshot(path, raw)
    _check_backup_lineage(path, lineage)
    trust.check_endpoint(str(path), stored_endpoint, endpoint)
    ops = _journal_ops(path, journal, lineage, serial)
    return Loaded(raw, lineage, serial, stored_endpoint, models, ops, journal is not None)


def _read_pair(path: Path) -> tuple[bytes | None, Journal | None]:
    # A writer may commit while a reader (plan) looks: if the snapshot changed while we read
    # the journal, read both again so the pair we judge belongs together.
    for _ in range(20):
        before = identity(path)
        raw = _read_snapshot_bytes(path)
        journal = read_journal(journal_path(path), path)
        if identity(path) == before:
            break
    return raw, journal


def _check_missing(path: Path, journal: Journal | None) -> None:
    backup = backup_path(path)
    if exists(backup):
        raise StateError(
            f"state {path} is missing but its backup {backup} exists, so the state was"
            " deleted or moved (starting from nothing would submit every model again);"
            f" restore it with `cp {q(backup)} {q(path)}`, or {USE_ANOTHER_STATE}"
        )
    if journal is not None:
        raise StateError(
            f"state {path} is missing but its journal {journal_path(path)} exists (results of"
            " a run that did not finish); restore the state file from a copy, or"
            f" {USE_ANOTHER_STATE}; remove {journal_path(path)} only if you mean to start"
            " from nothing (every model will be submitted again)"
        )


def _journal_ops(path: Path, journal: Journal | None, lineage: str, serial: int) -> tuple[Op, ...]:
    if journal is None or journal.lineage is None:
        return ()
    journal_file = journal_path(path)
    if journal.lineage != lineage:
        raise StateError(
            f"journal {journal_file} belongs to another state (lineage {journal.lineage},"
            f" but {path} has lineage {lineage}); if {path} is the state you mean, move"
            f" {journal_file} away (the results it holds will be planned again), otherwise"
            f" restore the state file it belongs to, or {USE_ANOTHER_STATE}"
        )
    if journal.base_serial > serial:
        raise StateError(
            f"journal {journal_file} continues serial {journal.base_serial}, but state"
            f" {path} is at serial {serial} (an older snapshot was put back?); restore the"
            f" newer state file, or move {journal_file} away (the results it holds will be"
            " planned again)"
        )
    # An older base serial means a commit already folded it in and died before removing it.
    return journal.ops if journal.base_serial == serial else ()


def _read_snapshot_bytes(path: Path) -> bytes | None:
    try:
        return read_file(path)
    except NotAFile as exc:
        raise not_a_file(path, str(exc)) from None
    except OSError as exc:
        raise StateError(
            f"cannot read state {path}: {reason(exc)}; check the path and its permissions,"
            f" or {USE_ANOTHER_STATE}"
        ) from None


def not_a_file(path: Path, problem: str, given: Path | None = None) -> StateError:
    """The error for a state path that is a FIFO, a device, a folder or over 1 GiB;
    ``given``: the name it was given by, when that is a symlink to ``path``."""
    name = path if given is None or given == path else given
    via = f" (which resolves to {path})" if name != path else ""
    return StateError(
        f"cannot read state {name}{via}: {problem}; a state is a regular file of JSON that"
        f" modelsync wrote (a symlink to one is fine): pass --state with the path of the"
        f" state file, or move {name} away"
    )


# --------------------------------------------------------------------------- parsing


def parse_snapshot(path: Path, raw: bytes) -> tuple[str, int, str, dict[str, ModelRecord]]:
    """Lineage, serial, endpoint and records of a snapshot; a StateError if untrusted."""
    try:
        doc = _document(raw)
        trust.check_header(doc["lineage"], doc["serial"], doc["endpoint"])
        records = _records(doc["models"])
    except Untrusted as exc:
        raise trust.untrusted(str(path), str(exc), restore_hint(path)) from None
    return doc["lineage"], doc["serial"], doc["endpoint"], records


def _document(raw: bytes) -> dict[str, Any]:
    """The snapshot's JSON object, of this format_version, with exactly the known fields."""
    if not raw.strip():
        raise Untrusted("is empty")
    try:
        doc = loads(raw)
    except TooDeep:
        raise Untrusted(
            f"is nested more than {MAX_DEPTH} levels deep, which no state modelsync writes"
            " is; it is damaged or not a state file"
        ) from None
    except ValueError as exc:
        raise Untrusted(f"is not valid JSON ({exc}); it may be truncated or damaged") from None
    if not isinstance(doc, dict):
        raise Untrusted(f"does not hold a JSON object (found {describe_kind(doc)})")
    if "format_version" not in doc:
        raise Untrusted("has no format_version")
    trust.check_format_version(doc["format_version"])
    unknown = sorted(str(key) for key in doc if key not in _TOP_FIELDS)
    if unknown:
        raise Untrusted(f"has unknown field(s) {', '.join(map(repr, unknown))}")
    missing = sorted(_TOP_FIELDS - set(doc))
    if missing:
        raise Untrusted(f"is missing field(s) {', '.join(map(repr, missing))}")
    return doc


def _records(models: Any) -> dict[str, ModelRecord]:
    if not isinstance(models, dict):
        raise Untrusted(f"has models that are not an object (found {describe_kind(models)})")
    records: dict[str, ModelRecord] = {}
    for model_id, data in models.items():
        if not model_id:
            raise Untrusted("has a model with an empty model_id")
        try:
            records[model_id] = ModelRecord.from_json(data, where=f"models[{model_id!r}]")
        except StateError as exc:
            raise Untrusted(f"has a bad record: {exc}") from None
    return records


def _check_backup_lineage(path: Path, lineage: str) -> None:
    backup = backup_path(path)
    try:
        raw = read_file(backup)
    except NotAFile as exc:
        # Not a damaged copy of a state but something put in its place: look before any run.
        raise StateError(
            f"cannot read {backup}, the backup of state {path}: {exc}; move {backup} away"
            " (a backup is a regular file modelsync writes)"
        ) from None
    except OSError as exc:
        _log.warning("cannot read state backup %s (%s); not checking its lineage", backup, exc)
        return
    if raw is None:
        return
    try:
        doc = loads(raw)
    except ValueError:  # also TooDeep
        doc = None
    backup_lineage = doc.get("lineage") if isinstance(doc, dict) else None
    if not isinstance(backup_lineage, str):
        # The backup only serves to catch a swapped state file; a damaged one must not stop
        # a run whose state itself is sound.
        _log.warning("state backup %s is unreadable; not checking its lineage", backup)
        return
    trust.check_lineage(
        str(path),
        lineage,
        reference=f"its backup {backup}",
        reference_lineage=backup_lineage,
        fix=(
            f"if the backup is right, restore it with `cp {q(backup)} {q(path)}`;"
            f" if {path} is the state you mean, remove {backup}; or {USE_ANOTHER_STATE}"
        ),
    )


def restore_hint(path: Path) -> str:
    """How to recover from an untrusted snapshot: its backup, or a copy, or adopting."""
    backup = backup_path(path)
    if exists(backup):
        return (
            f"restore the previous snapshot with `cp {q(backup)} {q(path)}`, or {USE_ANOTHER_STATE}"
        )
    return (
        f"restore {path} from version control or a copy, or {USE_ANOTHER_STATE}; to rebuild"
        " it, move it away and run `modelsync state adopt ID...` for the models already on"
        " the account"
    )


# --------------------------------------------------------------------------- writing


def dump_snapshot(
    lineage: str, serial: int, endpoint: str, models: Mapping[str, ModelRecord]
) -> bytes:
    """The snapshot's bytes: sorted, indented JSON with a final newline."""
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
