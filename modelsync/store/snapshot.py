"""The snapshot of the file backend, read with its journal and trust-checked (DESIGN §2).

A journal always refers to the snapshot it was started from (same ``lineage``, its
``base_serial`` equal to the snapshot's ``serial``). A commit first replaces the snapshot,
then removes the journal, so a journal whose base serial is older than the snapshot was
already folded in by a commit that was killed before it could remove it.

The snapshot is one JSON document written a line per model (docs/state.md, "The layout"):
the header and ``"models":{`` on the first line, then each model sorted by id, compact with
sorted keys, by the C encoder. It is read by the C parser when the text's own count of
commas and brackets proves the strict parser would read the same, else by the strict parser.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import is_not, itemgetter
from pathlib import Path
from typing import Any

from modelsync.errors import StateError
from modelsync.gcpause import gc_paused
from modelsync.records import ModelRecord, describe_kind
from modelsync.store import trust
from modelsync.store.fileio import (
    MAX_DEPTH,
    NotAFile,
    Shape,
    TooDeep,
    backup_path,
    exists,
    identity,
    journal_path,
    json_depth,
    json_shape,
    loads,
    q,
    quick_loads,
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


@gc_paused()
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

_Snapshot = tuple[str, int, str, dict[str, ModelRecord]]


def parse_snapshot(path: Path, raw: bytes) -> _Snapshot:
    """Lineage, serial, endpoint and records of a snapshot; a StateError if untrusted."""
    try:
        return _quick_snapshot(raw) or _snapshot(_document(raw))
    except Untrusted as exc:
        raise trust.untrusted(str(path), str(exc), restore_hint(path)) from None


def _quick_snapshot(raw: bytes) -> _Snapshot | None:
    """The snapshot as the C parser reads it, when that is provably what the strict parser
    reads (:func:`loads`, a Python hook per object: 2-3x slower); None when anything is off,
    for the strict parser to find the problem and word it."""
    try:
        doc = _checked(quick_loads(raw))
        trust.check_header(doc["lineage"], doc["serial"], doc["endpoint"])
        models = doc["models"]
        if models.__class__ is not dict or "" in models:
            return None
        # The parsed objects become the records, as the strict path's would after a copy.
        records = dict(zip(models, map(ModelRecord.adopt_json, models.values()), strict=True))
    except (ValueError, RecursionError, Untrusted):
        return None
    if not _as_strict(raw, doc):
        return None
    return doc["lineage"], doc["serial"], doc["endpoint"], records


_REQUEST = itemgetter("request")
_RESPONSE = itemgetter("response")
_is_set = partial(is_not, None)


def _as_strict(raw: bytes, doc: dict[str, Any]) -> bool:
    """Whether the strict parser reads the text ``raw`` as quick_loads read ``doc``, a checked
    snapshot whose records are valid: without a duplicate key, nested at most MAX_DEPTH.

    Every object and array of N members written in the text has N - 1 commas between them,
    so a duplicate key (of which the parser keeps the last) leaves the text more commas than
    the objects as read; the text's own count of commas and brackets outside its strings
    (:func:`json_shape`) shows it, at a fraction of a parse.
    """
    models = doc["models"]
    requests = list(map(_REQUEST, models.values()))
    responses = list(filter(_is_set, map(_RESPONSE, models.values())))
    # Records always have keys; the others may not.
    commas = sum(map(len, models.values())) - len(models)
    for objects in ([doc, models], requests, responses):
        commas += sum(map(len, objects)) - sum(map(bool, objects))
    # A record's other fields hold no container, nor does the header. The same count as
    # read: no duplicate, and no container but these (4 deep). Otherwise the requests or
    # responses hold containers: count them too, and the depth.
    written = json_shape(raw)
    read = Shape(commas, 2 + len(models) + len(requests) + len(responses), 0)
    if written == read:
        return True
    inner = Shape(0, 0, 0)
    for container in chain(requests, responses):
        inner = _add(inner, _below(container))
    return json_depth(raw) <= MAX_DEPTH and written == _add(read, inner)


def _below(container: Any) -> Shape:
    """The shape of what ``container`` holds (its own members' commas not counted)."""
    commas = objects = arrays = 0
    for item in container.values() if isinstance(container, dict) else container:
        if isinstance(item, dict):
            objects += 1
        elif isinstance(item, list):
            arrays += 1
        else:
            continue
        inside = _below(item)
        commas += max(len(item) - 1, 0) + inside.commas
        objects += inside.objects
        arrays += inside.arrays
    return Shape(commas, objects, arrays)


def _add(one: Shape, other: Shape) -> Shape:
    return Shape(one.commas + other.commas, one.objects + other.objects, one.arrays + other.arrays)


def _snapshot(doc: dict[str, Any]) -> _Snapshot:
    trust.check_header(doc["lineage"], doc["serial"], doc["endpoint"])
    return doc["lineage"], doc["serial"], doc["endpoint"], _records(doc["models"])


def _document(raw: bytes) -> dict[str, Any]:
    """The snapshot's JSON object, read by the strict parser, of this format_version, with
    exactly the known fields."""
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
    return _checked(doc)


def _checked(doc: Any) -> dict[str, Any]:
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
    backup_lineage = _lineage(raw)
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


def _lineage(raw: bytes) -> object:
    """The lineage of the snapshot ``raw``, from its first line when that holds the header
    (as dump_snapshot writes it), else from the whole; None if it cannot be read."""
    first = raw.partition(b"\n")[0]
    header = first[: -len(_MODELS_OPENING)] + b"}" if first.endswith(_MODELS_OPENING) else raw
    try:
        doc = loads(header)
    except ValueError:  # also TooDeep
        return None
    return doc.get("lineage") if isinstance(doc, dict) else None


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

# Compact and sorted: the C encoder (json.dumps with indent runs the Python one, 6x slower).
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
_MODELS_OPENING = b',"models":{'


@gc_paused()
def dump_snapshot(
    lineage: str, serial: int, endpoint: str, models: Mapping[str, ModelRecord]
) -> bytes:
    """The snapshot's bytes: one JSON document, its header fields on the first line, then one
    line per model, sorted by id, each compact with sorted keys; a final newline."""
    encode = _ENCODER.encode
    header = encode(
        {
            "endpoint": endpoint,
            "format_version": FORMAT_VERSION,
            "lineage": lineage,
            "serial": serial,
        }
    )
    # A line per model, so that a team that commits its state gets a diff line per change.
    lines = [
        f"{encode(model_id)}:{encode(models[model_id].to_json(copy=False))}"
        for model_id in sorted(models)
    ]
    body = ",\n".join(lines) + "\n" if lines else ""
    return f"{header[:-1]}{_MODELS_OPENING.decode()}\n{body}}}}}\n".encode()
