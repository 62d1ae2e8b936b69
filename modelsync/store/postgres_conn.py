"""Connections to a PostgreSQL state: how they are opened, and what their errors say.

Every connection names itself (``application_name`` starting with ``modelsync``), sets a
connect timeout, TCP keepalives and a TCP user timeout (a cut network ends a call instead of
hanging it), and a statement and lock timeout through ``options``. Prepared statements are
off, so a transaction pooler (PgBouncer) can stand between. No message ever holds the
password: psycopg's words go through :func:`say` first.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from modelsync import redact
from modelsync.errors import StateError
from modelsync.records import ModelRecord
from modelsync.store import postgres_fallback as fb
from modelsync.store import trust
from modelsync.store.postgres_fallback import Fallback
from modelsync.store.postgres_sql import (
    SCHEMA_VERSION,
    SQL_BUMP,
    SQL_FOLD_DELETE,
    SQL_FOLD_PUT,
    SQL_HEADER,
    SQL_HOLDER,
    SQL_MODELS,
    Target,
    ddl_statements,
)
from modelsync.store.trust import FORMAT_VERSION

_log = logging.getLogger("modelsync.store.postgres")

Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
TCP_USER_TIMEOUT_MS = 30_000
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
KEEPALIVES_COUNT = 3
_MAX_REASON = 300


def say(exc: BaseException, target: Target | None = None) -> str:
    """psycopg's message on one line, every password masked (never the raw text)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    secrets = [target.password] if target is not None and target.password else []
    env_password = os.environ.get("PGPASSWORD")
    if env_password:
        secrets.append(env_password)
    for secret in secrets:
        text = text.replace(secret, "***")
    text = redact.redact(text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def register_password(target: Target) -> None:
    """Have every output of this process mask the URL's password."""
    if target.password:
        redact.register_secret(target.password, always=True)


def conninfo(target: Target, purpose: str) -> dict[str, Any]:
    """The libpq parameters: the URL's, then modelsync's (the URL's own timeouts win)."""
    try:
        params: dict[str, Any] = dict(conninfo_to_dict(target.conninfo))
    except psycopg.Error as exc:
        raise StateError(
            f"--state {target.location}: not a valid PostgreSQL URL ({say(exc, target)}); "
            "see https://www.postgresql.org/docs/current/libpq-connect.html"
        ) from None
    name = f"modelsync {purpose} {target.name} pid {os.getpid()}"
    params["application_name"] = name.encode("utf-8")[:63].decode("utf-8", "ignore")
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    params.setdefault("keepalives_count", KEEPALIVES_COUNT)
    params.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT_MS)
    ours = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
        f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
    given = params.get("options")
    params["options"] = f"{ours} {given}" if given else ours
    return params


def connect(target: Target, purpose: str) -> Connection:
    """A new autocommit connection, or StateError naming the (masked) state and the fix."""
    params = conninfo(target, purpose)
    try:
        conn: Connection = psycopg.connect(autocommit=True, prepare_threshold=None, **params)
    except psycopg.Error as exc:
        raise StateError(
            f"cannot connect to state {target.location}: {say(exc, target)}; check the URL"
            " (or PGHOST, PGUSER, PGPASSWORD, PGSERVICE...) and that the server is up, or"
            f" {trust.USE_ANOTHER_STATE}"
        ) from None
    return conn


def close(conn: Connection | None) -> None:
    """Close a connection, whatever state it is in."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # closing a broken connection may fail: it is gone anyway
        _log.debug("closing a state connection failed", exc_info=True)


def database_error(target: Target, doing: str, exc: psycopg.Error) -> StateError:
    """A failed statement, in words."""
    return StateError(
        f"state {target.location}: {doing} failed: {say(exc, target)}; check the database"
        f" and the role's rights, or {trust.USE_ANOTHER_STATE}"
    )


# --------------------------------------------------------------------------- the tables


def tables_version(conn: Connection, target: Target) -> int | None:
    """The schema version of the tables, or None when they are not there."""
    # The catalog read as a table, with the statement's snapshot (to_regclass may answer
    # from a cache that has not yet seen the tables another session just created).
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname IN ('schema_version', 'states', 'models')",
        (target.schema,),
    ).fetchone()
    if not row or row[0] < 3:
        return None
    found = conn.execute(f"SELECT max(version) FROM {target.qschema}.schema_version").fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def check_version(target: Target, version: int) -> None:
    """Refuse tables newer than this modelsync (exit 4)."""
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state {target.location}: the tables in schema {target.schema} have schema"
            f" version {version}, but this modelsync knows version {SCHEMA_VERSION}; upgrade"
            " modelsync"
        )


def ensure_tables(conn: Connection, target: Target) -> bool:
    """Make sure the tables are there; True if this call created them.

    The DDL runs in one transaction after ``pg_advisory_xact_lock``: runs that start at
    once on a new database wait for each other, and only the first creates anything.
    """
    version = tables_version(conn, target)
    if version is not None and version >= SCHEMA_VERSION:
        check_version(target, version)
        return False
    if target.skip_schema_creation:
        raise StateError(
            f"state {target.location}: the tables are not in schema {target.schema} and"
            " schema creation is off (--skip-schema-creation); have them created with the"
            " output of 'modelsync state ddl MANIFEST --state URL' (e.g. piped to psql), or"
            " run once without --skip-schema-creation as a role that may create them"
        )
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", target.ddl_lock_key)
            version = tables_version(conn, target)
            if version is not None and version >= SCHEMA_VERSION:
                return False
            created = 0
            for statement in ddl_statements(target.schema):
                created = conn.execute(statement).rowcount  # the last: the version's row
    except psycopg.Error as exc:
        raise StateError(
            f"state {target.location}: cannot create the tables in schema {target.schema}:"
            f" {say(exc, target)}; have a role that may create them run the output of"
            " 'modelsync state ddl MANIFEST --state URL', then pass --skip-schema-creation"
        ) from None
    if created != 1:
        return False
    _log.info(
        "Created the modelsync tables in schema %s (schema version %d)",
        target.schema,
        SCHEMA_VERSION,
    )
    return True


# --------------------------------------------------------------------------- reading


@dataclass
class Loaded:
    """A state's row and its models, as read."""

    found: bool
    lineage: str
    serial: int
    endpoint: str
    format_version: object
    lock_epoch: int
    models: dict[str, ModelRecord] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """Whether anything was ever recorded (a row that only held a lease is a first run)."""
        return self.found and (self.serial > 0 or bool(self.models))


def empty(endpoint: str) -> Loaded:
    """A state that is not there: a first run."""
    return Loaded(False, str(uuid.uuid4()), 0, endpoint, FORMAT_VERSION, 0)


def load_state(conn: Connection, target: Target, endpoint: str) -> Loaded:
    """The state's row and models in one transaction (``empty`` when there is no row)."""
    params = {"name": target.name}
    with conn.transaction():
        row = conn.execute(SQL_HEADER.format(s=target.qschema), params).fetchone()
        if row is None:
            return empty(endpoint)
        rows = conn.execute(SQL_MODELS.format(s=target.qschema), params).fetchall()
    format_version, lineage, stored_endpoint, serial, lock_epoch = row
    loaded = Loaded(True, lineage, serial, stored_endpoint, format_version, lock_epoch)
    for model_id, data, written_epoch in rows:
        where = f"state {target.location}: models[{model_id!r}]"
        try:
            loaded.models[model_id] = ModelRecord.from_json(data, where=where)
        except StateError as exc:
            raise trust.untrusted(
                target.location, f"holds a record it cannot read ({exc})", inspect_hint(target)
            ) from None
        loaded.epochs[model_id] = written_epoch
    return loaded


def inspect_hint(target: Target) -> str:
    """How to look at a PostgreSQL state by hand."""
    return (
        f"look at it with SELECT * FROM {target.qschema}.states WHERE name = '{target.name}'"
        f" (and {target.qschema}.models), or {trust.USE_ANOTHER_STATE}"
    )


def check_trust(target: Target, endpoint: str, loaded: Loaded, fallback: Fallback | None) -> None:
    """The checks every backend makes (trust.py): format version, lineage, endpoint."""
    kept = fallback is not None and bool(fallback.lines)
    if not loaded.found:
        if kept:
            assert fallback is not None
            raise trust.untrusted(
                target.location,
                f"is not in the database, but its fallback journal {fallback.path} is still there",
                f"if the state was moved or dropped on purpose, move {fallback.path} aside;"
                f" or {trust.USE_ANOTHER_STATE}",
            )
        return
    if loaded.exists:
        try:
            trust.check_format_version(loaded.format_version)
            trust.check_header(loaded.lineage, loaded.serial, loaded.endpoint)
        except trust.Untrusted as exc:
            raise trust.untrusted(target.location, str(exc), inspect_hint(target)) from None
        trust.check_endpoint(target.location, loaded.endpoint, endpoint)
    if kept:
        assert fallback is not None
        trust.check_lineage(
            target.location,
            loaded.lineage,
            reference=f"its fallback journal {fallback.path}",
            reference_lineage=fallback.lineage,
            fix=f"if {fallback.path} belongs to another state, move it aside",
        )


def describe_holder(conn: Connection, target: Target, manifest: str) -> str:
    """The lease's holder, for the "locked" error; ``another process`` when it is free."""
    row = conn.execute(SQL_HOLDER.format(s=target.qschema), {"name": target.name}).fetchone()
    if row is None or not row[7] or not isinstance(row[0], int):
        return "another process"
    pid, user, host, command, started, epoch, until, _live = row
    return (
        f'pid {pid} ({_printable(user)}@{_printable(host)}, "{_printable(command)}") since'
        f" {started}, lease epoch {epoch} until {until} (if that process is gone for good:"
        f" modelsync state unlock {manifest} --epoch {epoch})"
    )


def _printable(value: object) -> str:
    text = redact.redact(str(value))
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


# --------------------------------------------------------------------------- writing


def clean(value: Any) -> Any:
    """A JSON value without NUL characters, which jsonb cannot hold (replaced by U+FFFD)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def model_row(model_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The parameters of one model's row."""
    return {
        "model_id": model_id,
        "status": data["status"],
        "fingerprint": data["fingerprint"],
        "record": Jsonb(data),
    }


def fold_fallback(
    conn: Connection, target: Target, endpoint: str, epoch: int, fallback: Fallback
) -> Loaded:
    """Fold a fallback journal into the database under the lease at ``epoch``, remove it,
    and read the state again."""
    params = {"name": target.name, "epoch": epoch}
    s = target.qschema
    try:
        with conn.transaction():
            row = conn.execute(SQL_HEADER.format(s=s) + " FOR UPDATE", params).fetchone()
            if row is None or row[4] != epoch:
                raise StateError(f"state {target.location}: this run lost its lease at once")
            changed = 0
            for kept in fallback.lines:
                line = {**params, "kept_epoch": kept.epoch, "epoch": kept.epoch}
                if kept.record is None:
                    line["model_ids"] = list(kept.model_ids)
                    changed += conn.execute(SQL_FOLD_DELETE.format(s=s), line).rowcount
                else:
                    line.update(model_row(kept.model_ids[0], clean(kept.record.to_json())))
                    changed += conn.execute(SQL_FOLD_PUT.format(s=s), line).rowcount
            if changed:
                conn.execute(SQL_BUMP.format(s=s), params)
        loaded = load_state(conn, target, endpoint)
    except psycopg.Error as exc:
        raise database_error(target, "folding the fallback journal", exc) from None
    fb.remove(fallback.path, target.location)
    _log.info(
        "Folded %d line(s) kept in %s into state %s",
        len(fallback.lines),
        fallback.path,
        target.location,
    )
    return loaded
