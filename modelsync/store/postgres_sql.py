"""The PostgreSQL state's text: its ``--state`` URL, its tables (DDL) and its statements.

Nothing here imports psycopg, so ``modelsync state ddl`` works without the driver and a
URL is checked before any connection.

A ``--state`` URL is a libpq URL (``postgresql://`` or ``postgres://``) with a few
parameters of modelsync's own, taken out before the rest goes to libpq:

- ``schema=``: the schema of the tables (default ``modelsync``; never ``public``);
- ``name=``: the state's name (default: the manifest's stem);
- ``lease_ttl=``: seconds a run's lease lasts without a heartbeat (default 60);
- ``skip_schema_creation=true``: never create the tables (the DBA does: ``state ddl``).

Everything else (host, port, user, password, ``sslmode``, ``service``...) is libpq's, and
so are ``PGHOST``, ``PGUSER``, ``PGPASSWORD``, ``PGPASSFILE``, ``PGSERVICE``...
"""

from __future__ import annotations

import re
import urllib.parse
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from modelsync import redact
from modelsync.errors import StateError
from modelsync.store import mask_url, url_password

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "modelsync"
SCHEMA_VERSION = 1
LEASE_TTL_S = 60.0
MIN_LEASE_TTL_S = 1.0
# Advisory-lock class ids (the first half of the two-part key): "msyn", "msyd". The second
# half is a hash of the schema and the state's name, so two projects never share a lock
# the way one-number keys do (terraform #22833, #33217).
LOCK_CLASS = int.from_bytes(b"msyn", "big")
DDL_LOCK_CLASS = int.from_bytes(b"msyd", "big")
_OWN_PARAMS = ("schema", "name", "lease_ttl", "skip_schema_creation")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_RESERVED_SCHEMAS = {"public", "information_schema"}
_MAX_NAME = 200
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Target:
    """Where a PostgreSQL state lives: the libpq URL, the schema and the state's name."""

    conninfo: str  # the URL for libpq, modelsync's parameters taken out (may hold a password)
    schema: str
    name: str
    location: str  # the --state value as shown: password masked, name= added
    password: str | None
    lease_ttl: float = LEASE_TTL_S
    skip_schema_creation: bool = False

    @property
    def qschema(self) -> str:
        """The schema, quoted for SQL (it is a checked identifier)."""
        return f'"{self.schema}"'

    @property
    def lock_key(self) -> tuple[int, int]:
        """The two-part key of this state's session advisory lock."""
        return LOCK_CLASS, _int4(f"{self.schema}\x00{self.name}")

    @property
    def ddl_lock_key(self) -> tuple[int, int]:
        """The key of the transaction advisory lock the DDL runs under."""
        return DDL_LOCK_CLASS, _int4(self.schema)

    def renamed(self, name: str) -> Target:
        """The same database and schema, another state (``for_sandbox``)."""
        location = _with_param(_strip_param(self.location, "name"), "name", name)
        return replace(self, name=_check_name(name, self.location), location=location)


def _int4(text: str) -> int:
    value = zlib.crc32(text.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


def is_postgres(location: str) -> bool:
    """Whether a ``--state`` value is a PostgreSQL URL."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.lower() in SCHEMES


def _strip_param(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and urllib.parse.unquote(p.partition("=")[0]) != name]
    return f"{base}?{'&'.join(kept)}" if kept else base


def _with_param(url: str, name: str, value: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}{name}={urllib.parse.quote(value, safe='')}"


def _split(url: str) -> tuple[str, dict[str, str], str | None]:
    """(the URL for libpq, modelsync's parameters, the password if the URL holds one)."""
    base, _, query = url.partition("?")
    own: dict[str, str] = {}
    kept: list[str] = []
    password = None
    netloc = base.partition("://")[2].partition("/")[0]
    user, at, _hosts = netloc.rpartition("@")
    if at and ":" in user:
        password = urllib.parse.unquote(user.split(":", 1)[1])
    for piece in query.split("&") if query else ():
        key, _, value = piece.partition("=")
        key = urllib.parse.unquote(key)
        if key in _OWN_PARAMS:
            own[key] = urllib.parse.unquote(value)
        else:
            kept.append(piece)
            if key == "password":
                password = urllib.parse.unquote(value)
    conninfo = f"{base}?{'&'.join(kept)}" if kept else base
    return conninfo, own, password


def parse_target(url: str, manifest_path: str | Path) -> Target:
    """Check a ``--state`` URL and split it (StateError naming the masked URL otherwise)."""
    shown = mask_url(url)
    raw = url_password(url)
    if raw:
        # Its text as written too: libpq quotes a password it cannot decode in its errors.
        redact.register_secret(raw, always=True)
        if any(ch in raw for ch in "/?#@"):
            # libpq would split it elsewhere (host:port, path...) and quote pieces of it.
            raise StateError(
                f"--state {shown}: the password in the URL holds '/', '?', '#' or '@' as they"
                " are: percent-encode them (%2F, %3F, %23, %40), or leave the password out of"
                " the URL and use PGPASSWORD or PGPASSFILE"
            )
    conninfo, own, password = _split(url)
    schema = own.get("schema", DEFAULT_SCHEMA)
    _check_schema(schema, shown)
    name = own.get("name") or Path(manifest_path).stem
    location = shown if "name" in own else _with_param(shown, "name", name)
    return Target(
        conninfo=conninfo,
        schema=schema,
        name=_check_name(name, shown),
        location=location,
        password=password or None,
        lease_ttl=_ttl(own.get("lease_ttl"), shown),
        skip_schema_creation=_flag(own.get("skip_schema_creation"), shown),
    )


def _check_schema(schema: str, shown: str) -> None:
    if not _IDENTIFIER.fullmatch(schema):
        raise StateError(
            f"--state {shown}: schema={schema!r} is not a plain identifier (letters, digits"
            " and _, not starting with a digit, at most 63 characters); choose another schema="
        )
    lowered = schema.lower()
    if lowered in _RESERVED_SCHEMAS or lowered.startswith("pg_"):
        raise StateError(
            f"--state {shown}: schema={schema!r} is not allowed: modelsync keeps its tables in"
            f" a schema of their own (default {DEFAULT_SCHEMA}), never in public or a system"
            " schema; leave schema= out or choose another name"
        )


def _check_name(name: str, shown: str) -> str:
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        raise StateError(
            f"--state {shown}: the state's name {name!r} must be 1-{_MAX_NAME} printable"
            " characters; pass name= in the URL"
        )
    return name


def _ttl(text: str | None, shown: str) -> float:
    if text is None:
        return LEASE_TTL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_LEASE_TTL_S <= value <= 86400:
        raise StateError(
            f"--state {shown}: lease_ttl={text!r} must be a number of seconds from"
            f" {MIN_LEASE_TTL_S:g} to 86400 (default {LEASE_TTL_S:g})"
        )
    return value


def _flag(text: str | None, shown: str) -> bool:
    if text is None or text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE:
        return True
    raise StateError(f"--state {shown}: skip_schema_creation={text!r} must be true or false")


# --------------------------------------------------------------------------- the tables


def ddl_statements(schema: str) -> list[str]:
    """The statements that create the tables, each safe to run again (IF NOT EXISTS)."""
    s = f'"{schema}"'
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version     integer     PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.states (
    name                text        PRIMARY KEY,
    format_version      integer     NOT NULL,
    lineage             text        NOT NULL,
    endpoint            text        NOT NULL,
    serial              bigint      NOT NULL DEFAULT 0 CHECK (serial >= 0),
    lock_epoch          bigint      NOT NULL DEFAULT 0,
    lease_expires_at    timestamptz,
    holder_pid          integer,
    holder_user         text,
    holder_host         text,
    holder_command      text,
    holder_started_at   timestamptz,
    holder_backend_pid  integer,
    holder_session_lock boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.models (
    state          text        NOT NULL REFERENCES {s}.states (name)
                               ON DELETE CASCADE ON UPDATE CASCADE,
    model_id       text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('submitted', 'failed', 'pending')),
    fingerprint    text        NOT NULL,
    record         jsonb       NOT NULL,
    written_epoch  bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (state, model_id)
)""",
        f"INSERT INTO {s}.schema_version (version) VALUES ({SCHEMA_VERSION})"
        " ON CONFLICT (version) DO NOTHING",
    ]


def ddl_text(schema: str) -> str:
    """The DDL as a psql script, for a DBA (``modelsync state ddl``)."""
    key = _int4(schema)
    lines = [
        f"-- modelsync state tables, schema version {SCHEMA_VERSION}, in schema {schema}.",
        "-- Run it as a role that may create the schema, e.g.: modelsync state ddl MANIFEST"
        " --state URL | psql URL",
        "-- then run modelsync with --skip-schema-creation. The role modelsync connects as needs:",
        f'--   GRANT USAGE ON SCHEMA "{schema}" TO modelsync_role;',
        f'--   GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}"'
        " TO modelsync_role;",
        "BEGIN;",
        f"SELECT pg_advisory_xact_lock({DDL_LOCK_CLASS}, {key});",
    ]
    lines += [f"{statement};" for statement in ddl_statements(schema)]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- statements
# {s} is the quoted schema; parameters are psycopg's %(name)s.

HOLDER_FIELDS = """holder_pid, holder_user, holder_host, holder_command,
    to_char(holder_started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    lock_epoch,
    to_char(lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    lease_expires_at > clock_timestamp()"""

SQL_HOLDER = "SELECT " + HOLDER_FIELDS + " FROM {s}.states WHERE name = %(name)s"

SQL_HEADER = (
    "SELECT format_version, lineage, endpoint, serial, lock_epoch"
    " FROM {s}.states WHERE name = %(name)s"
)

SQL_MODELS = (
    "SELECT model_id, record, written_epoch FROM {s}.models"
    " WHERE state = %(name)s ORDER BY model_id"
)

SQL_ENSURE_ROW = (
    "INSERT INTO {s}.states (name, format_version, lineage, endpoint)"
    " VALUES (%(name)s, %(format_version)s, %(lineage)s, %(endpoint)s)"
    " ON CONFLICT (name) DO NOTHING"
)

# Taken only when the lease is free, expired, or its holder's session is gone: this
# session got the advisory lock that the holder's session held (and is not that session,
# which a transaction pooler could hand out again).
SQL_ACQUIRE = """UPDATE {s}.states SET
    lock_epoch = lock_epoch + 1,
    lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
    holder_pid = %(pid)s, holder_user = %(user)s, holder_host = %(host)s,
    holder_command = %(command)s, holder_started_at = clock_timestamp(),
    holder_backend_pid = pg_backend_pid(), holder_session_lock = %(session_lock)s,
    updated_at = clock_timestamp()
WHERE name = %(name)s AND (
    lease_expires_at IS NULL
    OR lease_expires_at < clock_timestamp()
    OR (%(session_lock)s AND holder_session_lock
        AND holder_backend_pid IS DISTINCT FROM pg_backend_pid()))
RETURNING lock_epoch"""

SQL_RENEW = """UPDATE {s}.states SET
    lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
    holder_backend_pid = pg_backend_pid(), holder_session_lock = %(session_lock)s
WHERE name = %(name)s AND lock_epoch = %(epoch)s"""

SQL_RELEASE = """UPDATE {s}.states SET
    lease_expires_at = NULL, holder_pid = NULL, holder_user = NULL, holder_host = NULL,
    holder_command = NULL, holder_started_at = NULL, holder_backend_pid = NULL,
    holder_session_lock = false, updated_at = clock_timestamp()
WHERE name = %(name)s AND lock_epoch = %(epoch)s"""

# `state unlock`: the lease is broken and the epoch moves on, so the old holder, if it is
# still alive after all, can write nothing more.
SQL_BREAK = """UPDATE {s}.states SET
    lock_epoch = lock_epoch + 1,
    lease_expires_at = NULL, holder_pid = NULL, holder_user = NULL, holder_host = NULL,
    holder_command = NULL, holder_started_at = NULL, holder_backend_pid = NULL,
    holder_session_lock = false, updated_at = clock_timestamp()
WHERE name = %(name)s AND lock_epoch = %(epoch)s AND lease_expires_at IS NOT NULL
RETURNING lock_epoch"""

SQL_SET_ENDPOINT = """UPDATE {s}.states SET endpoint = %(endpoint)s
WHERE name = %(name)s AND lock_epoch = %(epoch)s AND serial = 0
    AND NOT EXISTS (SELECT 1 FROM {s}.models WHERE state = %(name)s)"""

# The fence: every write is one statement that also updates the state's row where the
# epoch is still this run's. The row lock it takes orders it against a takeover; no row,
# nothing written.
_FENCE = """WITH lease AS (
    UPDATE {s}.states SET serial = serial + %(bump)s, updated_at = clock_timestamp()
    WHERE name = %(name)s AND lock_epoch = %(epoch)s
    RETURNING name
)"""

_UPSERT_SET = """ON CONFLICT (state, model_id) DO UPDATE SET
    status = EXCLUDED.status, fingerprint = EXCLUDED.fingerprint, record = EXCLUDED.record,
    written_epoch = EXCLUDED.written_epoch, updated_at = EXCLUDED.updated_at"""

SQL_PUT = (
    _FENCE
    + """
INSERT INTO {s}.models AS m (state, model_id, status, fingerprint, record, written_epoch,
    updated_at)
SELECT name, %(model_id)s, %(status)s, %(fingerprint)s, %(record)s, %(epoch)s, clock_timestamp()
FROM lease
"""
    + _UPSERT_SET
    + "\nRETURNING 1"
)

SQL_DELETE = (
    _FENCE
    + """, gone AS (
    DELETE FROM {s}.models m USING lease
    WHERE m.state = lease.name AND m.model_id = ANY(%(model_ids)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM gone)"""
)

# Folding a fallback journal: a result kept by epoch E replaces a row only if no later run
# wrote that row (its written_epoch is at most E).
SQL_FOLD_PUT = (
    """INSERT INTO {s}.models AS m (state, model_id, status, fingerprint, record, written_epoch,
    updated_at)
VALUES (%(name)s, %(model_id)s, %(status)s, %(fingerprint)s, %(record)s, %(epoch)s,
    clock_timestamp())
"""
    + _UPSERT_SET
    + "\nWHERE m.written_epoch <= %(kept_epoch)s"
)

SQL_FOLD_DELETE = """DELETE FROM {s}.models
WHERE state = %(name)s AND model_id = ANY(%(model_ids)s) AND written_epoch <= %(kept_epoch)s"""

SQL_BUMP = """UPDATE {s}.states SET serial = serial + 1, updated_at = clock_timestamp()
WHERE name = %(name)s AND lock_epoch = %(epoch)s"""

# `state migrate` into an empty state: the row is created or taken as it is, under a row
# lock for the whole copy.
SQL_LOCK_ROW = """SELECT serial, lease_expires_at > clock_timestamp(), lock_epoch,
    (SELECT count(*) FROM {s}.models WHERE state = %(name)s)
FROM {s}.states WHERE name = %(name)s FOR UPDATE"""

SQL_IMPORT_HEADER = """UPDATE {s}.states SET lineage = %(lineage)s, endpoint = %(endpoint)s,
    serial = %(serial)s, format_version = %(format_version)s, updated_at = clock_timestamp()
WHERE name = %(name)s"""

SQL_IMPORT_MODEL = """INSERT INTO {s}.models (state, model_id, status, fingerprint, record,
    written_epoch)
VALUES (%(name)s, %(model_id)s, %(status)s, %(fingerprint)s, %(record)s, %(epoch)s)"""
